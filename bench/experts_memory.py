"""Activation memory one OLMoE experts layer keeps for its backward pass: transformers' grouped_mm and eager experts
against the toolkit's adapt_fused, at OLMoE-1B-7B's layer shape, counted exactly (any device, the CPU included).

    python bench/experts_memory.py                     # OLMoE-1B-7B shape, 512 tokens, scaled to --seq
    python bench/experts_memory.py --tokens 64 --seq 4096 --json out.json

Every tensor autograd saves during the forward is recorded through `saved_tensors_hooks`; parameters are left out
(they are there anyway) and storages are counted once. The bytes grow linearly with the token count (routing is held
fixed: uniform random top-k), so they are reported per token and for one `--seq`-token sequence through all layers.
"""

from __future__ import annotations

import argparse
import platform

import torch


def saved_bytes(impl: str, tokens: int, dtype: torch.dtype, seed: int = 0) -> int:
    from train_throughput import SHAPES  # bench/train_throughput.py
    from transformers import OlmoeConfig
    from transformers.models.olmoe.modeling_olmoe import OlmoeExperts

    import adapt.model  # noqa: F401  (registers adapt_fused)

    config = OlmoeConfig(**SHAPES["olmoe-1b-7b"])
    config._experts_implementation = impl
    torch.manual_seed(seed)
    experts = OlmoeExperts(config).to(dtype)
    for p in experts.parameters():
        torch.nn.init.normal_(p, std=0.02)
    params = {p.untyped_storage().data_ptr() for p in experts.parameters()}
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, config.hidden_size, generator=g).to(dtype).requires_grad_()
    index = torch.rand(tokens, config.num_experts, generator=g).topk(config.num_experts_per_tok).indices
    weights = torch.rand(tokens, config.num_experts_per_tok, generator=g).to(dtype).requires_grad_()
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params and t is not x and t is not weights:  # inputs belong to the layer below
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        experts(x, index, weights)
    return sum(storages.values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=512, help="tokens pushed through the layer (cost grows linearly)")
    p.add_argument("--seq", type=int, default=4096, help="sequence length the totals are scaled to")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--json")
    args = p.parse_args()
    from train_throughput import SHAPES

    layers = SHAPES["olmoe-1b-7b"]["num_hidden_layers"]
    dtype = getattr(torch, args.dtype)
    rows = []
    for impl in ("grouped_mm", "eager", "adapt_fused"):
        per_token = saved_bytes(impl, args.tokens, dtype) / args.tokens
        rows.append({"experts": impl, "bytes_per_token_layer": round(per_token, 1),
                     "gib_per_seq_all_layers": round(per_token * args.seq * layers / 2**30, 3)})
    base = rows[0]["bytes_per_token_layer"]
    for r in rows:
        r["vs_grouped_mm"] = round(r["bytes_per_token_layer"] / base, 3)
    import transformers
    from report import finish, record  # bench/report.py

    header = record(device=platform.processor() or platform.machine(), dtype=args.dtype, tokens=args.tokens,
                    seq=args.seq, layers=layers, versions={"torch": torch.__version__,
                                                           "transformers": transformers.__version__})
    finish(header, rows, [("experts", "experts", ""), ("bytes_per_token_layer", "bytes/token/layer", ".1f"),
                          ("gib_per_seq_all_layers", f"GiB per {args.seq}-token sequence, {layers} layers", ".3f"),
                          ("vs_grouped_mm", "vs grouped_mm", ".3f")], args.json)


if __name__ == "__main__":
    main()
