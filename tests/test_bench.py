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


def test_esft_memory_keeps_optimizer_state_in_proportion_to_the_selected_experts(tmp_path):
    # One ESFT threshold: the bytes are held to the experts it selected exactly; that a larger threshold selects
    # more experts is the selection's own test (tests/test_esft.py), and each method here is a new process.
    out = tmp_path / "esft.json"
    run_bench("esft_memory.py", "--shape", "tiny", "--layers", "2", "--tokens", "32", "--methods",
              "full,esft-p0.5", "--json", str(out))
    result = json.loads(out.read_text())
    assert {"device", "versions", "command", "esft_selection"} <= result.keys()
    rows = {r["method"]: r for r in result["results"]}
    per_expert = 3 * 64 * 32  # gate_up [2I, H] + down [H, I] of the tiny shape
    esft, full = rows["esft-p0.5"], rows["full"]
    # only the selected experts' slices train: 2 layers x experts/layer x one expert's parameters, and AdamW keeps
    # two fp32 moments for each, the gradient one fp32 value
    assert 0 < esft["experts_per_layer"] < 8
    assert esft["trainable"] == 2 * esft["experts_per_layer"] * per_expert
    assert esft["optimizer_bytes"] == 2 * 4 * esft["trainable"] and esft["grad_bytes"] == 4 * esft["trainable"]
    assert full["optimizer_bytes"] == 2 * 4 * full["trainable"]
    assert esft["optimizer_bytes"] < full["optimizer_bytes"] / 2


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


@pytest.mark.slow
def test_adaptation_compare_trains_esft_in_proportion_to_its_selection(tmp_path):
    out = tmp_path / "compare.json"
    run_bench("adaptation_compare.py", "--variants", "full,esft-p0.2", "--rows", "64", "--dpo-rows", "32",
              "--epochs", "1", "--eval-items", "10", "--output", str(tmp_path / "runs"), "--json", str(out))
    result = json.loads(out.read_text())
    assert {"device", "versions", "command"} <= result.keys()
    rows = {r["variant"]: r for r in result["results"]}
    assert list(rows) == ["full", "esft-p0.2"]
    for r in rows.values():
        assert 0 <= r["task_accuracy"] <= 1 and 0 <= r["preference_accuracy"] <= 1
        assert r["sft_s"] > 0 and r["dpo_s"] > 0
        assert r["optimizer_bytes"] == 2 * 4 * r["trainable"]  # AdamW, fp32: two moments per trained parameter
    full, esft = rows["full"], rows["esft-p0.2"]
    # ESFT trains exactly its selected experts' slices (gate, up and down: 3 x hidden x intermediate each), so it is
    # below full fine-tuning by the selection's share of the expert parameters, not merely smaller.
    per_expert = 3 * 96 * 128  # recipes/demo/sft.yaml
    assert 0 < esft["experts_trained"] < esft["experts_total"] == full["experts_trained"]
    assert esft["trainable"] == esft["experts_trained"] * per_expert
    expert_share = full["experts_total"] * per_expert / full["trainable"]
    share = esft["experts_trained"] / esft["experts_total"] * expert_share
    assert esft["trainable_vs_full"] == pytest.approx(share)
    assert esft["optimizer_bytes"] / full["optimizer_bytes"] == pytest.approx(share)
    health = result["router_health"]
    assert [(h["variant"], h["layer"]) for h in health] == [
        (v, layer) for v in ("base (random init)", "full", "esft-p0.2") for layer in (0, 1)]
    assert all(0 <= h["dead_fraction"] <= 1 and 0 < h["load_entropy"] <= 1 and 0 < h["top_share"] <= 1
               for h in health)
