"""The local-file variant of the OLMoE recipes (recipes/olmoe-1b-7b/local/) on the real data and tokenizer (the
recipes find them through $ADAPT_DATA and $OLMOE_TOKENIZER): the data summary is complete and byte-for-byte
repeatable, and SFT then DPO train on it."""

import json
import math
import os
import subprocess
import sys

import pytest

from conftest import REPO

SFT = "recipes/olmoe-1b-7b/local/sft.yaml"
DPO = "recipes/olmoe-1b-7b/local/dpo.yaml"


@pytest.fixture
def local_data(shared, monkeypatch):
    """Where the local recipes' ${ADAPT_DATA} and ${OLMOE_TOKENIZER} point."""
    monkeypatch.setenv("ADAPT_DATA", str(shared / "data"))
    monkeypatch.setenv("OLMOE_TOKENIZER", str(shared / "tokenizers/olmoe-gpt-neox-20b-pii-special.json"))


def adapt_data(*args):
    run = subprocess.run([sys.executable, "-m", "adapt.cli", "data", *args], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env=dict(os.environ))
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_sft_summary_is_repeatable_and_accounts_for_every_row(local_data, tmp_path, monkeypatch, capsys):
    from adapt.cli import main

    def adapt_data_here(*args):  # `adapt data` in this process: another Python than the build's
        capsys.readouterr()
        main(["data", *args])
        return capsys.readouterr().out

    cache = f"data.cache_dir={tmp_path}"
    built = adapt_data("--config", SFT, cache)
    monkeypatch.chdir(REPO)
    cached, uncached = adapt_data_here("--config", SFT, cache), adapt_data_here("--config", SFT, "data.cache=false")
    # byte for byte, from a fresh build, from the cache and with no cache, in two processes (hash seeds, set order)
    assert built == cached == uncached
    summary = json.loads(built)
    raw = {s["source"]: len(json.loads((REPO / s["source"]).read_text())) for s in summary["sources"]}
    for s in summary["sources"]:
        assert s["rows_read"] == raw[s["source"]]
        assert s["rows_read"] == s["rows_kept"] + sum(s["dropped"].values()) + s["rows_not_taken"]
        assert s["tokens"] > s["trained_tokens"] > 0
        assert s["length_percentiles"]["max"] >= s["length_percentiles"]["p50"]
        assert len(s["decontaminated"]) == s["dropped"].get("benchmark overlap", 0)
    assert summary["train_rows"] == sum(s["rows_kept"] for s in summary["sources"])
    assert summary["packing"] and summary["packed_sequences"] < summary["train_rows"]


@pytest.mark.slow
def test_local_sft_then_dpo_train(local_data, tmp_path, monkeypatch):
    from adapt.config import load_recipe
    from adapt.stages import dpo, sft

    monkeypatch.chdir(REPO)
    common = [f"data.cache_dir={tmp_path / 'cache'}", "training.max_steps=2", "training.max_length=256",
              "training.logging_steps=1"]
    sft.run(load_recipe(SFT, common + [f"training.output_dir={tmp_path / 'sft'}"]))
    dpo.run(load_recipe(DPO, common + [f"training.output_dir={tmp_path / 'dpo'}",
                                       f"model.name_or_path={tmp_path / 'sft'}"]))
    for stage in ("sft", "dpo"):
        rows = [json.loads(line) for line in (tmp_path / stage / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if "loss" in r] == [1, 2]
        # 8-expert top-2 routers a few steps from initialisation, near uniform: load balancing about top_k and the
        # z-loss about (ln 8)^2 (a scale error would be off by 2x or more)
        assert all(r["aux_loss"] == pytest.approx(2, rel=0.1) for r in rows if "loss" in r)
        assert all(r["z_loss"] == pytest.approx(math.log(8) ** 2, rel=0.1) for r in rows if "loss" in r)
        summary = json.loads((tmp_path / stage / "data_summary.json").read_text())
        assert summary["max_length"] == 256 and summary["tokens"] > 0
    dpo_summary = json.loads((tmp_path / "dpo" / "data_summary.json").read_text())
    assert dpo_summary["sources"][0]["dropped"]["longer than max_length"] > 0  # over_length: drop, counted
