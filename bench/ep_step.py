"""One process of the expert-parallel throughput run (`train_throughput.py --expert-parallel ...` launches it under
torchrun, once per expert-parallel size, with the same process count each time).

A few layers of a real MoE's shapes (random weights, random tokens) under DeepSpeed ZeRO-2 with the toolkit's AutoEP
presets, the router's load-balancing and z-losses on as the trainers add them. `expert_parallel_size` 1 is the stock
data-parallel baseline: every rank holds every expert, run by transformers' grouped_mm; above 1 AutoEP's
GroupedExperts run them, so a ratio includes both the parallelism and the experts implementation. Rank 0 writes one
JSON row: tokens/s over all ranks, step time, peak memory per rank (CUDA), the experts each rank holds.

    torchrun --nproc_per_node N bench/ep_step.py SHAPE LAYERS EP SEQ STEPS WARMUP OUT.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
import transformers

from adapt.config.families import FAMILIES
from adapt.losses.router import load_balancing_loss, router_z_loss
from adapt.model.routing import RoutingRecorder, find_backbone
from adapt.parallel import deepspeed_config
from adapt.parallel.autoep import describe, match_router_precision, register_presets

SHAPES = {  # Qwen/Qwen3-30B-A3B's config.json, and a toy of the same family to check the harness on a CPU
    "qwen3-30b-a3b": ("qwen3_moe", dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144,
                                        moe_intermediate_size=768, num_attention_heads=32, num_key_value_heads=4,
                                        head_dim=128, num_experts=128, num_experts_per_tok=8, norm_topk_prob=True,
                                        max_position_embeddings=40960, tie_word_embeddings=False)),
    "qwen3-tiny": ("qwen3_moe", dict(vocab_size=512, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                                     num_attention_heads=4, num_key_value_heads=2, num_experts=8,
                                     num_experts_per_tok=2, norm_topk_prob=True)),
}
LB, Z = 0.001, 0.001


def main() -> None:
    shape, layers, ep, seq, steps, warmup, out = sys.argv[1], *map(int, sys.argv[2:7]), Path(sys.argv[7])
    cuda = torch.cuda.is_available()
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    model_type, fields = SHAPES[shape]
    f = FAMILIES[model_type]
    config = getattr(transformers, f.config_class)(num_hidden_layers=layers, **fields)
    torch.manual_seed(0)
    model = getattr(transformers, f.model_class)._from_config(config, dtype=torch.bfloat16 if cuda else torch.float32)
    register_presets()
    ds = deepspeed_config("zero2", ep)
    ds.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1, gradient_clipping=1.0,
              bf16={"enabled": cuda})
    ds.setdefault("optimizer", {"type": "AdamW", "params": {}})["params"] = {"lr": 1e-5, "torch_adam": True}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
    match_router_precision(engine.module)
    recorder = RoutingRecorder(find_backbone(engine.module))
    ids = torch.randint(0, config.vocab_size, (1, seq), generator=torch.Generator().manual_seed(rank)).to(device)

    def step():
        recorder.start()
        out_ = engine(input_ids=ids, labels=ids)
        captured = recorder.stop()
        loss = out_.loss + LB * load_balancing_loss(captured.logits, config.num_experts, config.num_experts_per_tok)
        loss = loss + Z * router_z_loss(captured.logits)
        engine.backward(loss)
        engine.step()

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    dist.barrier()
    seconds = (time.perf_counter() - start) / steps
    peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0], device=device)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    if rank == 0:
        layout = describe(engine.module) or {"expert_parallel_size": 1, "experts_per_rank": config.num_experts}
        out.write_text(json.dumps({
            "path": f"zero2-ep{ep}", "processes": world, "expert_parallel_size": ep,
            "experts_per_rank": layout["experts_per_rank"], "step_s": round(seconds, 4),
            "tokens_per_s": round(world * seq / seconds, 1),
            "peak_mem_gib": round(peak.item(), 2) if cuda else None}))
    dist.barrier()


if __name__ == "__main__":
    main()
