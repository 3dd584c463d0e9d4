"""The benchmark scripts keep running (at toy sizes here; their numbers are taken on the GPU, see bench/RESULTS.md)
and record what they ran on."""

import json
import subprocess
import sys

import pytest

from conftest import REPO


def run_bench(script, *args):
    run = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.mark.slow
def test_train_throughput_runs_every_path_and_checks_the_fused_experts(tmp_path):
    out = tmp_path / "train.json"
    run_bench("train_throughput.py", "--shape", "tiny", "--seq", "64", "--steps", "1", "--warmup", "0",
              "--json", str(out))
    result = json.loads(out.read_text())
    assert {"device", "versions", "command", "optimizer"} <= result.keys()
    paths = [r["path"] for r in result["results"]]
    assert paths == ["stock-grouped_mm", "stock-eager", "stock-adapt_fused", "trl-sft", "adapt-sft", "trl-dpo",
                     "adapt-dpo", "adapt-dpo-refcache"]
    for r in result["results"]:  # each rate is the step's tokens (DPO: chosen and rejected) over its measured time
        tokens = result["batch"] * result["grad_accum"] * 64 * (2 if "dpo" in r["path"] else 1)
        assert r["tokens_per_s"] == pytest.approx(tokens / r["step_s"], rel=1e-2)
    assert result["check"]["adapt_fused_rel_err"] < 1e-5  # float32 on the CPU: the same numbers


@pytest.mark.multiprocess
def test_train_throughput_compares_expert_parallel_sizes_at_the_same_process_count(tmp_path):
    out = tmp_path / "ep.json"
    run_bench("train_throughput.py", "--expert-parallel", "1,2", "--ep-shape", "qwen3-tiny", "--layers", "2",
              "--seq", "32", "--steps", "1", "--warmup", "0", "--json", str(out))
    result = json.loads(out.read_text())
    assert {"device", "versions", "command", "shape"} <= result.keys() and "deepspeed" in result["versions"]
    rows = result["results"]
    assert [(r["path"], r["processes"], r["experts_per_rank"]) for r in rows] == [("zero2-ep1", 2, 8),
                                                                                   ("zero2-ep2", 2, 4)]
    for r in rows:  # both ranks' tokens over the measured step
        assert r["tokens_per_s"] == pytest.approx(2 * 32 / r["step_s"], rel=1e-2)
    assert rows[0]["vs_ep1"] == 1.0


@pytest.mark.slow
def test_experts_memory_counts_less_saved_activation_for_the_fused_path(tmp_path):
    out = tmp_path / "memory.json"
    run_bench("experts_memory.py", "--tokens", "32", "--json", str(out))
    rows = {r["experts"]: r for r in json.loads(out.read_text())["results"]}
    # By hand: per token and layer the fused path keeps, for each of its K=8 rows, x (H=2048), [gate | up] (2I=2048)
    # and the weighted activation (I=1024) in bf16, plus a few integers of routing bookkeeping.
    by_hand = 8 * (2048 + 2048 + 1024) * 2
    assert by_hand <= rows["adapt_fused"]["bytes_per_token_layer"] < 1.01 * by_hand
    # stock also keeps the SwiGLU's temporaries and the down projection's output for the weighting
    assert rows["grouped_mm"]["bytes_per_token_layer"] > by_hand + 8 * 2048 * 2


def test_router_analysis_keeps_counts_that_do_not_grow_with_the_tokens(tmp_path):
    out = tmp_path / "analysis.json"
    run_bench("router_analysis.py", "--shape", "demo", "--batches", "2", "--batch", "2", "--seq", "32",
              "--json", str(out))
    result = json.loads(out.read_text())
    assert {"device", "torch", "command", "peak_rss_mib"} <= result.keys()
    small, large = result["results"]
    assert (small["tokens"], large["tokens"]) == (128, 256)
    # The saturation's kept choices: L x k bytes per token (2 layers x top-2 = 4 bytes), and nothing else grows
    # but one vocabulary row per new token id.
    assert small["kept_choices_mib"] * 2**20 == 4 * 128 and large["kept_choices_mib"] * 2**20 == 4 * 256
    row_bytes = 2 * 8 * 4 + 8  # per layer E int32 counts, plus the id's int64 occurrence count
    grown = (large["counts_mib"] - small["counts_mib"]) * 2**20
    assert grown == row_bytes * (large["vocab_rows"] - small["vocab_rows"])


def test_gguf_export_bench_checks_each_type_in_llama_cpp(tmp_path, demo_tokenizer):
    from transformers import OlmoeConfig, OlmoeForCausalLM

    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[gguf]')")
    run = tmp_path / "run"
    OlmoeForCausalLM(OlmoeConfig(vocab_size=320, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=4, num_experts=4, num_experts_per_tok=2)).save_pretrained(run)
    demo_tokenizer.save_pretrained(run)
    out = tmp_path / "gguf.json"
    run_bench("gguf_export.py", str(run), "--types", "f32", "q8_0", "--json", str(out))
    result = json.loads(out.read_text())
    assert {"gguf", "llama_cpp_python", "command"} <= result.keys()
    f32, q8 = result["results"]
    assert f32["type"] == "f32" and f32["max_logit_diff"] < 1e-4 and f32["greedy_equal"] and f32["tokens_equal"]
    assert q8["mib"] < f32["mib"] / 3  # 8.5 bits per weight against 32 (norms and router stay f32)


@pytest.mark.slow
def test_data_scale_builds_then_hits_the_cache_and_counts_what_it_built(tmp_path, shared):
    out = tmp_path / "scale.json"
    run_bench("data_scale.py", "--data", str(shared / "data"), "--sizes", "300", "--procs", "1",
              "--tokenizer", str(shared / "tokenizers/olmoe-gpt-neox-20b-pii-special.json"),
              "--work", str(tmp_path / "work"), "--json", str(out))
    result = json.loads(out.read_text())
    assert {"device", "versions", "command", "components"} <= result.keys()
    assert sum(result["components"].values()) == 300
    [row] = result["results"]
    assert row["rows_kept"] + row["decontaminated"] == 300  # no bad rows or duplicates in the synthetic mixture
    assert row["rows_per_s"] == pytest.approx(300 / row["seconds"], rel=1e-2)
    assert {"tokenize", "read, convert, decontaminate", "pack", "write the cache entry"} <= row["phases_s"].keys()
    assert set(row["hit_phases_s"]) == {"cache key (hashing the inputs)", "cache lookup"}  # nothing rebuilt
