"""Training-step throughput of OLMoE: stock transformers (grouped_mm and eager experts), stock TRL, and the toolkit's
path (its trainers with `experts_implementation: adapt_fused`), measured in one run on one device with random weights
and random tokens.

    python bench/train_throughput.py --shape olmoe-1b-7b --seq 4096            # on a GPU (the issue's setting)
    python bench/train_throughput.py --shape tiny --seq 256 --steps 3          # anywhere, to check the harness

Expert parallelism (DeepSpeed ZeRO-2 with AutoEP, a few layers of Qwen3-30B-A3B's shapes; each size runs as its own
`torchrun` with the same process count, so `ep1`, where every rank holds every expert, is the stock baseline):

    python bench/train_throughput.py --expert-parallel 1,2,8 --ep-shape qwen3-30b-a3b --layers 4 --seq 4096
    python bench/train_throughput.py --expert-parallel 1,2 --ep-shape qwen3-tiny --layers 2 --seq 64   # CPU check

Each path runs `--warmup` steps, then `--steps` timed optimizer steps (forward, backward, optimizer; gradient
accumulation amortised; router load-balancing loss on everywhere, z-loss on in the toolkit's paths). Reported:
tokens/s, model FLOP utilisation against the device's bf16 dense peak (GPU only), peak memory. The table is printed
last; `--json` writes it with the device, versions and command. Speed claims are ratios to `stock-grouped_mm` (SFT)
and `trl-dpo` (DPO).

Paths: `stock-<experts>` is a plain transformers loop (forward with labels, so full logits, backward, AdamW) with
transformers' `grouped_mm` or `eager` experts or the toolkit's `adapt_fused` ones; `trl-*` is stock TRL on grouped_mm;
`adapt-*` is the toolkit's trainers on adapt_fused; `adapt-dpo-refcache` also takes the reference log-probs from
TRL's precomputed cache (their one-time computation happens before the first step and is not timed).
Optimizer everywhere: AdamW on the bf16 weights (torch's fused kernel on CUDA), no float32 master copy.

Before timing, the fused experts are checked against transformers' grouped_mm on one layer at the real shape: the
error of each in the run's dtype against a float32 computation (`check` in the JSON).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import tempfile
import time

import torch

SHAPES = {  # allenai/OLMoE-1B-7B-0924's config.json (OlmoeConfig's own defaults differ: intermediate_size 2048)
    "olmoe-1b-7b": dict(vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_hidden_layers=16,
                        num_attention_heads=16, num_key_value_heads=16, num_experts=64, num_experts_per_tok=8,
                        max_position_embeddings=4096, norm_topk_prob=False, tie_word_embeddings=False),
    "tiny": dict(vocab_size=1024, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, num_experts=8, num_experts_per_tok=2),
}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def make_model(shape: str, experts_implementation: str, device: torch.device, dtype: torch.dtype):
    from transformers import OlmoeConfig, OlmoeForCausalLM

    import adapt.model  # noqa: F401  (registers the adapt_fused experts implementation)

    torch.manual_seed(0)
    config = OlmoeConfig(**SHAPES[shape], output_router_logits=True, pad_token_id=1, eos_token_id=0)
    model = OlmoeForCausalLM._from_config(config, experts_implementation=experts_implementation, dtype=dtype)
    return model.to(device)


def flops_per_token(model, seq: int) -> float:
    """6 x active parameters (top-k of the experts, LM head included, embeddings excluded) + causal attention."""
    c = model.config
    expert = 3 * c.hidden_size * c.intermediate_size
    dense = sum(p.numel() for n, p in model.named_parameters() if "experts" not in n and "embed_tokens" not in n)
    active = dense + c.num_hidden_layers * c.num_experts_per_tok * expert
    return 6 * active + 6 * c.num_hidden_layers * c.hidden_size * seq  # 12·L·H·S halved for the causal mask


def stock_step_time(args, impl: str, device, dtype) -> float:
    """transformers alone: forward with labels (aux loss included), backward, AdamW; seconds per optimizer step."""
    model = make_model(args.shape, impl, device, dtype).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    vocab = model.config.vocab_size
    batch = torch.randint(2, vocab, (args.batch, args.seq), device=device)
    times = []
    for _ in range(args.warmup + args.steps):
        sync(device)
        start = time.perf_counter()
        for _ in range(args.grad_accum):
            loss = model(input_ids=batch, labels=batch).loss / args.grad_accum
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - start)
    del model, optimizer
    return sum(times[args.warmup:]) / args.steps


class StepTimer:
    """A TrainerCallback that records each optimizer step's wall time."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _Timer(TrainerCallback):
            def __init__(self):
                self.times, self._start = [], None

            def on_step_begin(self, args, state, control, **kwargs):
                sync(torch.device(args.device))
                self._start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                sync(torch.device(args.device))
                self.times.append(time.perf_counter() - self._start)

        return _Timer()


def trainer_step_time(args, kind: str, toolkit: bool, device, dtype, cached_ref: bool = False) -> float:
    from datasets import Dataset
    from trl import DPOTrainer, SFTTrainer

    from adapt.config.configs import AdaptDPOConfig, AdaptSFTConfig
    from adapt.data.tokenizer import build_demo_tokenizer
    from adapt.trainers import AdaptDPOTrainer, AdaptSFTTrainer

    tokenizer = build_demo_tokenizer()  # the rows are token ids already; the trainers want pad/eos ids only
    model = make_model(args.shape, "adapt_fused" if toolkit else "grouped_mm", device, dtype)
    vocab, n_rows = model.config.vocab_size, args.batch * args.grad_accum * (args.warmup + args.steps)
    g = torch.Generator().manual_seed(0)
    common = dict(per_device_train_batch_size=args.batch, gradient_accumulation_steps=args.grad_accum,
                  max_steps=args.warmup + args.steps, learning_rate=1e-5, logging_steps=10_000, save_strategy="no",
                  report_to=[], bf16=dtype == torch.bfloat16, use_cpu=device.type == "cpu", disable_tqdm=True,
                  dataloader_num_workers=0, max_length=args.seq)
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        if kind == "sft":
            rows = [{"input_ids": torch.randint(2, vocab, (args.seq,), generator=g).tolist()} for _ in range(n_rows)]
            rows = [{**r, "labels": r["input_ids"]} for r in rows]
            # the toolkit's config (router section: load balancing 0.01, z-loss 0.001) serves both; TRL ignores the
            # section and adds the model's aux loss itself (coefficient 0.01), which the toolkit's trainer must not
            # also get (its router-loss audit stops a run that counts the term twice)
            config = AdaptSFTConfig(output_dir=out, dataset_kwargs={"skip_prepare_dataset": True}, stage="sft",
                                    router_aux_loss_coef=0.0 if toolkit else 0.01, **common)
            cls = AdaptSFTTrainer if toolkit else SFTTrainer
            trainer = cls(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                          callbacks=[timer])
        else:
            half = args.seq // 2
            rows = [{k: torch.randint(2, vocab, (half,), generator=g).tolist()
                     for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for _ in range(n_rows)]
            config = AdaptDPOConfig(output_dir=out, stage="dpo", router_aux_loss_coef=0.0 if toolkit else 0.01,
                                    precompute_ref_log_probs=cached_ref, **common)
            reference = make_model(args.shape, "adapt_fused" if toolkit else "grouped_mm", device, dtype)
            reference = reference.eval().requires_grad_(False)
            cls = AdaptDPOTrainer if toolkit else type("StockDPOTrainer", (DPOTrainer,), {
                # stock TRL, fed the same token ids: only dataset preparation (untimed) is bypassed
                "_prepare_dataset": lambda self, dataset, *a, **k: dataset})
            trainer = cls(model=model, ref_model=reference, args=config, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer, callbacks=[timer])
        trainer.train()
    del trainer, model
    return sum(timer.times[args.warmup:]) / args.steps


def check_fused_experts(shape: str, tokens: int, device, dtype) -> dict:
    """One experts layer at the real shape, routing held fixed: output and gradient errors of grouped_mm and of
    adapt_fused in `dtype`, each relative to the same computation in float32 (the largest over output, input,
    routing-weight and weight gradients)."""
    from transformers import OlmoeConfig
    from transformers.models.olmoe.modeling_olmoe import OlmoeExperts

    import adapt.model  # noqa: F401 (registers the adapt_fused experts implementation)

    config = OlmoeConfig(**SHAPES[shape])
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(tokens, config.hidden_size, device=device, generator=g)
    index = torch.rand(tokens, config.num_experts, device=device, generator=g).topk(config.num_experts_per_tok).indices
    weights = torch.rand(tokens, config.num_experts_per_tok, device=device, generator=g)
    grad_out = torch.randn(tokens, config.hidden_size, device=device, generator=g)
    torch.manual_seed(0)
    experts = OlmoeExperts(config).to(device)
    for p in experts.parameters():
        torch.nn.init.normal_(p, std=0.02)

    def run(impl, run_dtype):
        config._experts_implementation = impl
        layer = OlmoeExperts(config).to(device, run_dtype)
        layer.load_state_dict(experts.state_dict())
        xi, wi = (t.to(run_dtype).detach().requires_grad_() for t in (x, weights))
        out = layer(xi, index, wi)
        out.backward(grad_out.to(run_dtype))
        return [t.detach().float() for t in (out, xi.grad, wi.grad, layer.gate_up_proj.grad, layer.down_proj.grad)]

    exact = run("grouped_mm", torch.float32)
    result = {}
    for impl in ("grouped_mm", "adapt_fused"):
        got = run(impl, dtype)
        result[f"{impl}_rel_err"] = max(float((a - b).norm() / b.norm()) for a, b in zip(got, exact))
    return result


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(args, name: str, device, dtype) -> dict:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if name.startswith("stock-"):
        seconds = stock_step_time(args, name.split("-", 1)[1], device, dtype)
    else:
        toolkit, kind = name.split("-")[0] == "adapt", name.split("-")[1]
        seconds = trainer_step_time(args, kind, toolkit, device, dtype, cached_ref=name.endswith("refcache"))
    tokens = args.batch * args.grad_accum * args.seq * (2 if "dpo" in name else 1)  # DPO: chosen + rejected
    row = {"path": name, "step_s": round(seconds, 4), "tokens_per_s": round(tokens / seconds, 1)}
    if device.type == "cuda":
        row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def expert_parallel_rows(args) -> list[dict]:
    """One `torchrun` of bench/ep_step.py per expert-parallel size, all with the same process count."""
    import subprocess
    import sys

    sizes = [int(x) for x in args.expert_parallel.split(",")]
    processes = args.processes or (torch.cuda.device_count() if torch.cuda.is_available() else max(sizes))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ep in sizes:
            if processes % ep:
                raise SystemExit(f"--expert-parallel {ep}: {processes} processes cannot form groups of {ep}")
            out = os.path.join(tmp, f"ep{ep}.json")
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   os.path.join(os.path.dirname(os.path.abspath(__file__)), "ep_step.py"), args.ep_shape,
                   str(args.layers), str(ep), str(args.seq), str(args.steps), str(args.warmup), out]
            subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS",
                                                                                                "1")})
            with open(out) as f:
                rows.append(json.load(f))
    base = next((r["tokens_per_s"] for r in rows if r["expert_parallel_size"] == 1), None)
    for r in rows:
        r["vs_ep1"] = round(r["tokens_per_s"] / base, 2) if base else None
    return rows


def report_expert_parallel(args) -> None:
    import deepspeed
    import transformers
    from report import finish, record  # bench/report.py

    rows = expert_parallel_rows(args)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.machine()
    header = record(device=device, shape=args.ep_shape, layers=args.layers, seq=args.seq, steps=args.steps,
                    zero="zero2", versions={"torch": torch.__version__, "transformers": transformers.__version__,
                                            "deepspeed": deepspeed.__version__})
    finish(header, rows, [("path", "path", ""), ("processes", "procs", "d"), ("experts_per_rank", "experts/rank", "d"),
                          ("step_s", "step s", ".4f"), ("tokens_per_s", "tokens/s", ".1f"),
                          ("peak_mem_gib", "peak GiB", ".2f"), ("vs_ep1", "vs ep1", ".2f")], args.json)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--paths", default="stock-grouped_mm,stock-eager,stock-adapt_fused,trl-sft,adapt-sft,trl-dpo,"
                                      "adapt-dpo,adapt-dpo-refcache")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], help="default: bfloat16 on a GPU, float32 on the CPU")
    p.add_argument("--check-only", action="store_true", help="only the fused-experts check (runs on the CPU too)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--expert-parallel", help="comma-separated expert-parallel sizes, e.g. 1,2,8: runs the "
                                             "expert-parallel comparison instead of the paths")
    p.add_argument("--ep-shape", default="qwen3-30b-a3b", help="bench/ep_step.py's SHAPES")
    p.add_argument("--layers", type=int, default=4, help="decoder layers of --ep-shape")
    p.add_argument("--processes", type=int, help="per run (default: the GPUs, or the largest size on the CPU)")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.expert_parallel:
        report_expert_parallel(args)
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    check = check_fused_experts(args.shape, args.batch * args.seq, device, dtype)
    if args.check_only:
        print(json.dumps({"device": str(device), "dtype": str(dtype), "tokens": args.batch * args.seq, **check}))
        return
    rows = [measure(args, name, device, dtype) for name in args.paths.split(",")]

    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    per_token = flops_per_token(make_model(args.shape, "grouped_mm", torch.device("meta"), dtype), args.seq)
    base = {r["path"]: r["tokens_per_s"] for r in rows if r["path"] in ("stock-grouped_mm", "trl-dpo")}
    for r in rows:
        r["mfu_pct"] = round(100 * r["tokens_per_s"] * per_token / (peak * 1e12), 1) if peak else None
        ref = base.get("trl-dpo" if "dpo" in r["path"] else "stock-grouped_mm")
        r["vs_stock"] = round(r["tokens_per_s"] / ref, 2) if ref else None
    import transformers
    import trl
    from report import finish, record  # bench/report.py

    header = record(device=name, device_type=device.type, dtype=str(dtype), shape=args.shape, seq=args.seq,
                    batch=args.batch, grad_accum=args.grad_accum, check=check,
                    optimizer="AdamW on bf16 weights (fused on CUDA), no fp32 master copy",
                    versions={"torch": torch.__version__, "transformers": transformers.__version__,
                              "trl": trl.__version__})
    finish(header, rows, [("path", "path", ""), ("step_s", "step s", ".4f"), ("tokens_per_s", "tokens/s", ".1f"),
                          ("mfu_pct", "MFU %", ".1f"), ("peak_mem_gib", "peak GiB", ".2f"),
                          ("vs_stock", "vs stock", ".2f")], args.json)

if __name__ == "__main__":
    main()
