"""Data parallelism is real under every launcher the README documents: after one optimizer step on 2 CPU processes
(gloo), both ranks hold identical weights, equal to the hand-written one-process reference on the concatenated
global batch (tests/gradient_reference.py), and the logged pre-clip gradient norm is the reference's.

Four rows, one per micro-batch, 2 processes x 2 accumulation steps: one step consumes the global batch whichever
rank gets which row. Router weights are large so that a router term scaled by the process count (transformers
issue 48690) or by the accumulation steps would show.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from adapt.parallel import accelerate_config
from conftest import REPO
from gradient_reference import logged, max_difference, recipe, reference_step, tokenized_rows, write_fixture

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
SCRIPT = str(REPO / "tests/scripts/dp_step.py")
LB, Z = 0.5, 0.05

LAUNCHES = {
    # name: (launcher, loss_reduction, DeepSpeed preset, expert-parallel size)
    "torchrun-ddp-sum": ("torchrun", "sum", None, 1),
    "accelerate-ddp-mean": ("accelerate", "mean", None, 1),
    "accelerate-zero2-sum": ("accelerate", "sum", "zero2", 1),
    "accelerate-zero3-mean": ("accelerate", "mean", "zero3", 1),
    "accelerate-zero3-sum": ("accelerate", "sum", "zero3", 1),
    "accelerate-zero2-ep2-sum": ("accelerate", "sum", "zero2", 2),
}


def sgd_preset(folder, preset: str, ep: int) -> str:
    """The shipped preset with plain SGD, whose one step reads back the gradient exactly. DeepSpeed calls the
    Trainer's SGD "untested" under ZeRO; expert parallelism needs DeepSpeed to build the optimizer itself."""
    from adapt.parallel import preset_path

    config = json.loads(preset_path(preset).read_text())
    config["zero_allow_untested_optimizer"] = True
    if ep > 1:
        config["optimizer"] = {"type": "SGD", "params": {"lr": "auto"}}
    path = folder / f"{preset}-sgd.json"
    path.write_text(json.dumps(config))
    return f"parallel.deepspeed={path}"


def launch(launcher: str, out, recipe_path, overrides, stage="sft"):
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", SCRIPT]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(accelerate_config("cpu-2proc")), SCRIPT]
    run = subprocess.run([*cmd, str(out), stage, "--config", str(recipe_path), *overrides], cwd=REPO,
                         capture_output=True, text=True, env=ENV, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]


@pytest.mark.multiprocess
@pytest.mark.parametrize("name", list(LAUNCHES))
def test_two_processes_take_the_one_process_step(tmp_path, name):
    from transformers import OlmoeForCausalLM

    launcher, reduction, preset, ep = LAUNCHES[name]
    overrides = [sgd_preset(tmp_path, preset, ep), f"parallel.expert_parallel_size={ep}"] if preset else []
    init, _ = write_fixture(tmp_path)
    path = recipe(tmp_path, reduction=reduction, lb=LB, z=Z, accumulation=2)
    launch(launcher, tmp_path, path, overrides)

    after, _, norm = reference_step(init, tokenized_rows(path), reduction=reduction, lb=LB, z=Z, accum_x_procs=4,
                                    max_norm=1.0, lr=0.05)
    infos = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["num_processes"] for i in infos] == [2, 2] and infos[0]["distributed_type"] != "DistributedType.NO"
    assert logged(tmp_path / "run", "grad_norm") == pytest.approx(norm, rel=1e-5)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics if "loss" in r] == [1]  # logged once, by rank 0
    if "ep2" not in name:
        rank0, rank1 = (load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1))
        assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
        assert max_difference(rank0, after) < 1e-6
    saved = OlmoeForCausalLM.from_pretrained(tmp_path / "run", dtype=torch.float32).state_dict()
    assert max_difference(saved, after) < 1e-6


@pytest.mark.multiprocess
def test_dpo_on_two_processes_takes_the_one_process_step(tmp_path, monkeypatch):
    import yaml

    from adapt.config import load_recipe
    from adapt.stages import dpo

    init, _ = write_fixture(tmp_path)
    with open(tmp_path / "pairs.jsonl", "w", encoding="utf-8") as f:
        for i in range(4):
            f.write(json.dumps({"prompt": [{"role": "user", "content": "reverse " + "abcdefgh"[: 2 + i]}],
                                "chosen": [{"role": "assistant", "content": "abcdefgh"[: 2 + i][::-1]}],
                                "rejected": [{"role": "assistant", "content": "no " * (i + 1)}]}) + "\n")

    def dpo_recipe(out, accumulation):
        raw = yaml.safe_load(recipe(tmp_path, reduction="mean", lb=LB, z=Z, accumulation=accumulation,
                                    out=out).read_text())
        raw["stage"] = "dpo"
        raw["data"]["sources"] = [{"path": str(tmp_path / "pairs.jsonl")}]
        raw["training"].update(beta=0.1, learning_rate=0.5)  # DPO's gradient is small: a step large enough to see
        path = tmp_path / f"{out}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    one = dpo.run(load_recipe(dpo_recipe("one", accumulation=4)))
    reference = {k: v.detach() for k, v in one.model.state_dict().items()}
    launch("torchrun", tmp_path, dpo_recipe("run", accumulation=2), [], stage="dpo")
    rank0, rank1 = (load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    from transformers import OlmoeForCausalLM

    start = OlmoeForCausalLM.from_pretrained(init).state_dict()
    moved = max(float((reference[k] - start[k]).abs().max()) for k in rank0)
    assert moved > 1e-4  # the step changed the weights, far beyond the tolerance below
    assert max_difference(rank0, reference) < 1e-6
    assert logged(tmp_path / "run", "grad_norm") == pytest.approx(logged(tmp_path / "one", "grad_norm"), rel=1e-5)
