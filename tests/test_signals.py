"""SIGTERM (preemption) and SIGINT (Ctrl-C) stop a run at a step boundary with a checkpoint that resumes on the same
trajectory (adapt/trainers/signals.py).

Each end-to-end test starts two runs of the same recipe at once: run A is stopped early by one signal, run B later by
the other. A then resumes up to B's stop step, and its weights must equal B's checkpoint there bit for bit: B is the
uninterrupted trajectory up to that step. The learning rate is constant so that stopping at any step leaves the
schedule the same (`max_steps` only bounds the runs; the signals end them).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapt.runfolder import incomplete_reason, last_complete_checkpoint
from adapt.trainers.signals import DUPLICATE_WINDOW_S, GracefulStop
from conftest import REPO, TINY_SFT, write_recipe

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
ENDLESS = 100_000  # max_steps of the signalled runs: a signal ends them


def _recipe(tmp_path: Path, name: str) -> Path:
    text = TINY_SFT.format(rows=64, lb=0.01, z=0.001, out=tmp_path / name, steps=ENDLESS)
    constant = text.replace("  learning_rate: 1.0e-2\n", "  learning_rate: 1.0e-2\n  lr_scheduler_type: constant\n")
    return write_recipe(tmp_path / f"{name}.yaml", constant)


def _start(recipe: Path, processes: int, *overrides: str) -> subprocess.Popen:
    stage = ["-m", "adapt.stages.sft", "--config", str(recipe), *overrides]
    launch = [sys.executable] + (["-m", "torch.distributed.run", "--nproc_per_node", "2"] if processes == 2 else [])
    # a session of its own: the signal goes to the whole process group, as Ctrl-C and `scancel` deliver it
    return subprocess.Popen(launch + stage, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _logged_step(folder: Path) -> int:
    metrics = folder / "metrics.jsonl"
    if not metrics.is_file():
        return 0
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return max((r["step"] for r in rows if "loss" in r), default=0)


def _signal_at(run: subprocess.Popen, folder: Path, step: int, signum: int) -> tuple[int, str]:
    deadline = time.monotonic() + 240
    while _logged_step(folder) < step:
        assert run.poll() is None, run.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run did not reach the step"
        time.sleep(0.05)
    os.killpg(run.pid, signum)
    _, stderr = run.communicate(timeout=120)
    return run.returncode, stderr


def _losses(folder: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _check_stopped(folder: Path, returncode: int, stderr: str, signum: int) -> int:
    """The run exited with 128 + signal, said why in its last line, and left a complete checkpoint at its stop step."""
    name = signal.Signals(signum).name
    assert returncode != 0, stderr[-3000:]
    stopped = json.loads((folder / "stopped.json").read_text())
    step = stopped["global_step"]
    assert stopped["reason"].startswith(f"stopped by {name} at step {step}; resume with `adapt sft --config ")
    assert stopped["reason"].endswith("training.resume_from_checkpoint=latest`")
    assert last_complete_checkpoint(folder).name == f"checkpoint-{step}"
    assert _logged_step(folder) == step  # the step in progress was finished, and no other begun
    assert f"stopped by {name} at step {step}" in incomplete_reason(folder)  # every reader refuses it
    assert not (folder / "run.json").exists()
    return step


def _assert_same_weights(a: Path, b: Path) -> None:
    left, right = load_file(a), load_file(b)
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), name


@pytest.mark.slow
def test_sigint_and_sigterm_checkpoints_resume_the_same_trajectory_one_process(tmp_path):
    from adapt.config import load_recipe
    from adapt.stages import sft

    early, late = _start(_recipe(tmp_path, "a"), 1), _start(_recipe(tmp_path, "b"), 1)
    code, stderr = _signal_at(early, tmp_path / "a", 2, signal.SIGINT)
    assert code == 130, stderr[-3000:]
    a_step = _check_stopped(tmp_path / "a", code, stderr, signal.SIGINT)
    assert stderr.strip().splitlines()[-1] == json.loads((tmp_path / "a" / "stopped.json").read_text())["reason"]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    code, stderr = _signal_at(late, tmp_path / "b", a_step + 2, signal.SIGTERM)
    assert code == 143, stderr[-3000:]
    b_step = _check_stopped(tmp_path / "b", code, stderr, signal.SIGTERM)
    assert stderr.strip().splitlines()[-1] == json.loads((tmp_path / "b" / "stopped.json").read_text())["reason"]
    assert "Traceback" not in stderr

    resume = ["training.resume_from_checkpoint=latest", f"training.max_steps={b_step}"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the runs had (OMP_NUM_THREADS=1): another split of a sum rounds differently
    try:
        config = load_recipe(tmp_path / "a.yaml", resume)
        config.allow_changed = ("training.max_steps",)  # `--allow-changed training.max_steps`: B's stop step
        sft.run(config)
    finally:
        torch.set_num_threads(threads)
    assert json.loads((tmp_path / "a" / "run.json").read_text())["global_step"] == b_step
    assert not (tmp_path / "a" / "stopped.json").exists() and incomplete_reason(tmp_path / "a") is None
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert [a[s] for s in range(a_step + 1, b_step + 1)] == [b[s] for s in range(a_step + 1, b_step + 1)]
    _assert_same_weights(tmp_path / "a" / "model.safetensors", tmp_path / "b" / f"checkpoint-{b_step}" /
                         "model.safetensors")


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sigterm_and_sigint_to_two_processes_stop_both_at_one_step_and_resume(tmp_path):
    # torchrun forwards what it receives to its workers, which also received it (the whole group is signalled):
    # each worker sees the signal twice within milliseconds, and must take it as one request
    early, late = _start(_recipe(tmp_path, "a"), 2), _start(_recipe(tmp_path, "b"), 2)
    code, stderr = _signal_at(early, tmp_path / "a", 2, signal.SIGTERM)
    a_step = _check_stopped(tmp_path / "a", code, stderr, signal.SIGTERM)
    assert stderr.count(f"stopped by SIGTERM at step {a_step}; resume with") == 2  # both ranks, the same step
    code, stderr = _signal_at(late, tmp_path / "b", a_step + 2, signal.SIGINT)
    b_step = _check_stopped(tmp_path / "b", code, stderr, signal.SIGINT)

    resume = _start(tmp_path / "a.yaml", 2, "training.resume_from_checkpoint=latest", f"training.max_steps={b_step}",
                    "--allow-changed", "training.max_steps")
    _, stderr = resume.communicate(timeout=300)
    assert resume.returncode == 0, stderr[-3000:]
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert [a[s] for s in range(a_step + 1, b_step + 1)] == [b[s] for s in range(a_step + 1, b_step + 1)]
    _assert_same_weights(tmp_path / "a" / "model.safetensors", tmp_path / "b" / f"checkpoint-{b_step}" /
                         "model.safetensors")


# ------------------------------------------------------------------------------------- the handler, in-process

class _OneProcess:
    device = torch.device("cpu")

    def gather(self, tensor):
        return tensor


class _Exited(Exception):
    pass


@pytest.fixture
def exits(monkeypatch):
    codes = []

    def fake_exit(code):
        codes.append(code)
        raise _Exited

    monkeypatch.setattr(os, "_exit", fake_exit)
    return codes


def test_a_second_signal_stops_at_once_but_a_forwarded_copy_does_not(exits, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    stop = GracefulStop(_OneProcess(), grace_seconds=60)
    try:
        stop._on_signal(signal.SIGTERM, None)
        clock[0] += DUPLICATE_WINDOW_S / 2  # a launcher forwarding the same request
        stop._on_signal(signal.SIGTERM, None)
        assert exits == []
        clock[0] += DUPLICATE_WINDOW_S
        with pytest.raises(_Exited):
            stop._on_signal(signal.SIGINT, None)
        assert exits == [130]
    finally:
        stop.uninstall()


def test_the_grace_period_exits_unsaved_and_says_so(monkeypatch):
    exits, said = [], []
    monkeypatch.setattr(os, "_exit", exits.append)  # in the timer's thread: it records, and returns
    stop = GracefulStop(_OneProcess(), grace_seconds=0.05, on_timeout=lambda signum, step: said.append((signum, step)))
    stop._on_signal(signal.SIGTERM, None)
    stop._timer.join(5)
    assert said == [(signal.SIGTERM, None)] and exits == [143]


def test_any_rank_signalled_stops_every_rank_at_the_step_end():
    from transformers import TrainerControl, TrainerState

    class OtherRankSignalled(_OneProcess):
        def gather(self, tensor):
            return torch.cat([tensor, torch.tensor([int(signal.SIGINT)])])

    state, control = TrainerState(global_step=5), TrainerControl()
    stop = GracefulStop(OtherRankSignalled(), grace_seconds=60)
    stop.on_step_end(None, state, control)
    assert control.should_save and control.should_training_stop and (stop.signum, stop.step) == (signal.SIGINT, 5)
    assert "stopped by SIGINT (received by another process of the run) at step 5; resume with X" == stop.reason("X")
    quiet = GracefulStop(_OneProcess(), grace_seconds=60)
    control = TrainerControl()
    quiet.on_step_end(None, state, control)
    assert not control.should_save and not control.should_training_stop and quiet.signum is None


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_outside_training_cleans_up_and_is_one_line(tmp_path, monkeypatch, capsys, signum):
    # a real signal to this process while `adapt data` builds the mixture: the build's folder is removed, one line
    import adapt.data.prepare as prepare
    from adapt.cli import main as adapt

    build = prepare._build

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signum)  # delivered to the handler before the next bytecode
        return build(*args, **kwargs)

    monkeypatch.setattr(prepare, "_build", signalled)
    recipe = write_recipe(tmp_path / "r.yaml", TINY_SFT.format(rows=8, lb=0.01, z=0.001, out=tmp_path / "o", steps=1))
    cache = tmp_path / "cache"
    before = signal.getsignal(signum)
    with pytest.raises(SystemExit) as stop:
        adapt(["data", "--config", str(recipe), f"data.cache_dir={cache}"])
    assert stop.value.code == 128 + signum
    assert capsys.readouterr().err.strip() == f"stopped: {signal.Signals(signum).name} during `adapt data`"
    assert cache.is_dir() and not [p.name for p in cache.iterdir() if p.name.startswith(".build")]  # removed
    assert signal.getsignal(signum) is before  # the command's handlers are gone after it
