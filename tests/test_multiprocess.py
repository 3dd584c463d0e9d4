"""The stage modules under a real multi-process launcher (2 CPU processes, gloo), as users launch them."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, TINY_SFT, write_recipe


@pytest.mark.multiprocess
def test_sft_module_runs_data_parallel_on_two_processes(tmp_path):
    recipe = write_recipe(tmp_path / "sft.yaml", TINY_SFT.format(rows=64, lb=0.01, z=0.001, out=tmp_path / "run",
                                                                 steps=3))
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "-m", "adapt.stages.sft", "--config", str(recipe)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["world_size"] == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3]  # logged once, by rank 0
    assert all(r["z_loss"] > 0 and r["aux_loss"] > 0 for r in train_rows)
