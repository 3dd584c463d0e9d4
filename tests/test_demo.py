"""The whole offline pipeline, as `make demo` runs it: the numbers must show real learning."""

import json
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_demo_pipeline_shows_sft_and_dpo_gains(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "adapt.cli", "demo", "--output", str(out), "--eval-items", "100"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    base, sft, dpo = (report["stages"][k] for k in ("base", "sft", "dpo"))
    assert sft["task_accuracy"] > base["task_accuracy"] + 0.5
    assert dpo["preference_accuracy"] > sft["preference_accuracy"] + 0.1
    assert dpo["task_accuracy"] > 0.5  # DPO learned the preference without forgetting the task
    assert "| task_accuracy |" in (out / "report.md").read_text()
    # The router analysis: SFT moved the router (saturation below 1), and the report and the card show it.
    analysis = json.loads((out / "dpo" / "analysis" / "analysis.json").read_text())
    assert max(analysis["saturation"]["base->sft"].values()) < 1.0
    assert "## What adaptation did to the router" in (out / "report.md").read_text()
    pushed = subprocess.run([sys.executable, "-m", "adapt.cli", "push", str(out / "dpo"), "--repo-id", "org/demo",
                             "--dry-run", str(tmp_path / "repo")], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    assert "## What adaptation did to the router" in (tmp_path / "repo" / "README.md").read_text()
    assert (tmp_path / "repo" / "assets" / "router" / "saturation.png").is_file()
    for stage in ("base", "sft", "dpo"):
        assert (out / stage / "config.json").exists()
    # a second run refuses to replace the first
    again = subprocess.run([sys.executable, "-m", "adapt.cli", "demo", "--output", str(out)], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "--overwrite" in again.stderr
