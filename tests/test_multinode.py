"""Multi-node training, proven on one machine: two "nodes" on localhost (one CPU process each, gloo) reach the same
weights as the same run on one node with two processes, whichever way they are launched, and only machine rank 0
writes the run folder.

The launches are the ones a cluster user runs: `accelerate launch --num_machines 2 --machine_rank 0|1
--main_process_ip 127.0.0.1` on each node; recipes/olmoe-1b-7b/launch/torchrun.sh on each node; and
recipes/olmoe-1b-7b/launch/slurm.sbatch as it is, under a stand-in `srun` that starts one task per node
(tests/scripts/fake_slurm). Each node has its own working folder and its own data cache, as nodes with local disks
do, so the run folder each writes and the mixture each builds can be told apart; the Slurm launch shares both, as a
cluster's shared filesystem does.

Three optimizer steps of SGD under DeepSpeed ZeRO-2, 2 processes x 2 accumulation steps, so that both ranks' rows
and the gradient all-reduce across the "nodes" enter every step.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapt.parallel import accelerate_config
from conftest import REPO
from gradient_reference import max_difference, recipe, write_fixture

pytestmark = pytest.mark.multiprocess
LAUNCH = REPO / "recipes/olmoe-1b-7b/launch"
SCRIPTS = REPO / "tests/scripts"
# Measured on the 2-core CPU machine: the two-node accelerate and torchrun launches give the one-node weights bit for
# bit (difference 0.0); with the experts split across the nodes, 7.5e-9 (the experts' gradients reach the optimizer
# through another reduction). The steps move the weights by 0.015.
TOLERANCE = 1e-7


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(cache: Path, **extra) -> dict:
    path = os.pathsep.join([str(SCRIPTS / "fake_slurm"), str(Path(sys.executable).parent), os.environ["PATH"]])
    python_path = os.pathsep.join([str(SCRIPTS / "log_data"), str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PATH": path, "PYTHONPATH": python_path, "ADAPT_CACHE": str(cache), "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def run_all(commands: list[tuple[list[str], Path, dict]]) -> list[str]:
    """Start every command at once (the nodes must meet at the rendezvous), wait for all; their outputs."""
    procs = [subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for cmd, cwd, env in commands]
    outputs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        outputs.append(out)
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-5000:]
    return outputs


def zero2_preset(folder: Path, experts_split: bool = False) -> Path:
    """The shipped ZeRO-2 preset with plain SGD allowed (DeepSpeed calls a Trainer-built SGD "untested"); with
    expert parallelism DeepSpeed must build the (same) optimizer itself."""
    from adapt.parallel import preset_path

    config = json.loads(preset_path("zero2").read_text())
    config["zero_allow_untested_optimizer"] = True
    if experts_split:
        config["optimizer"] = {"type": "SGD", "params": {"lr": "auto"}}
    path = folder / f"zero2-sgd{'-ep' if experts_split else ''}.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multinode")
    write_fixture(folder)
    path = recipe(folder, reduction="sum", lb=0.01, z=0.001, accumulation=2, out="run", max_steps=3)
    import yaml

    raw = yaml.safe_load(path.read_text())
    raw["training"]["output_dir"] = "run"  # relative: each node writes under its own working folder
    raw["data"]["cache"] = True
    raw["parallel"] = {"deepspeed": str(zero2_preset(folder))}
    path.write_text(yaml.safe_dump(raw))
    one_node = folder / "one-node"
    one_node.mkdir()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config("cpu-2proc")),
           "--main_process_port", str(free_port()), "-m", "adapt.stages.sft", "--config", str(path)]
    [out] = run_all([(cmd, one_node, environment(one_node / "cache"))])
    return {"folder": folder, "recipe": path, "reference": weights(one_node / "run"), "one_node_log": out,
            "one_node": one_node}


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model.safetensors")


def node_folders(base: Path) -> list[Path]:
    folders = [base / f"node{r}" for r in range(2)]
    for f in folders:
        f.mkdir(parents=True)
    return folders


def data_log(outputs: list[str]) -> list[str]:
    return sorted(line.split(": ", 1)[0] + ": " + ("built" if "written to the cache" in line else "loaded")
                  for out in outputs for line in out.splitlines() if "tokenized mixture" in line)


def test_one_node_builds_the_mixture_once_and_the_other_rank_loads_it(fixture):
    assert data_log([fixture["one_node_log"]]) == ["rank0 adapt.data.prepare: built",
                                                   "rank1 adapt.data.prepare: loaded"]
    entries = [p for p in (fixture["one_node"] / "cache/data").iterdir() if p.is_dir()]
    assert len(entries) == 1


def check_two_nodes(fixture, run: Path, others: list[Path]):
    moved = max_difference(weights(run), load_file(fixture["folder"] / "init/model.safetensors"))
    assert moved > 1e-3  # three steps moved the weights far beyond the tolerance
    assert max_difference(weights(run), fixture["reference"]) < TOLERANCE
    for other in others:  # machine rank 1 made at most the empty folder its checkpoints would go to
        assert not [p for p in other.rglob("*") if p.is_file()]


def test_accelerate_launch_on_two_nodes_equals_one_node(fixture, tmp_path):
    port = free_port()
    nodes = node_folders(tmp_path)
    commands = [([sys.executable, "-m", "accelerate.commands.launch",
                  "--config_file", str(accelerate_config("cpu-2proc")), "--num_machines", "2", "--num_processes", "2",
                  "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
                  "-m", "adapt.stages.sft", "--config", str(fixture["recipe"])], cwd, environment(cwd / "cache"))
                for rank, cwd in enumerate(nodes)]
    outputs = run_all(commands)
    check_two_nodes(fixture, nodes[0] / "run", [nodes[1] / "run"])
    # node-local caches (detected): each node built the mixture once for itself
    assert data_log(outputs) == ["rank0 adapt.data.prepare: built", "rank1 adapt.data.prepare: built"]


def test_torchrun_script_on_two_nodes_equals_one_node(fixture, tmp_path):
    port = free_port()
    nodes = node_folders(tmp_path)
    commands = [(["bash", str(LAUNCH / "torchrun.sh")], cwd,
                 environment(cwd / "cache", NNODES="2", NODE_RANK=str(rank), GPUS_PER_NODE="1",
                             MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RECIPE=str(fixture["recipe"])))
                for rank, cwd in enumerate(nodes)]
    run_all(commands)
    check_two_nodes(fixture, nodes[0] / "run", [nodes[1] / "run"])


def test_slurm_script_on_two_nodes_equals_one_node_with_experts_split_across_them(fixture, tmp_path):
    """The sbatch file as it is, on a "shared filesystem" (one working folder, one cache): built once in all. With
    expert parallelism of 2, each node holds half the experts; the gathered model is the same."""
    env = environment(tmp_path / "cache", SLURM_NNODES="2", SLURM_JOB_NODELIST="node[0-1]", GPUS_PER_NODE="1",
                      MAIN_PORT=str(free_port()), RECIPE=str(fixture["recipe"]),
                      ACCELERATE_CONFIG=str(accelerate_config("cpu-2proc")))
    overrides = ["parallel.expert_parallel_size=2", f"parallel.deepspeed={zero2_preset(tmp_path, experts_split=True)}"]
    [out] = run_all([(["bash", str(LAUNCH / "slurm.sbatch"), *overrides], tmp_path, env)])
    check_two_nodes(fixture, tmp_path / "run", [])
    assert data_log([out]) == ["rank0 adapt.data.prepare: built", "rank1 adapt.data.prepare: loaded"]
