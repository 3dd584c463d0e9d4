"""The cost of the router analysis (`adapt analyze`): tokens/s of its forward passes (the decoder only, with the
routing recorded and folded into the counts) against plain forwards of the whole model (the stock path, measured in
the same run, on the same batches), and
the memory the analysis keeps, at two token counts to show what grows and what does not.

    python bench/router_analysis.py [--shape demo|olmoe-1b-7b] [--layers N] [--batches 8] [--seq 256] [--json OUT]

Random weights from a config (no download). `olmoe-1b-7b` is allenai/OLMoE-1B-7B-0924's layer shapes (H 2048,
I 1024, 64 experts, top-8, vocabulary 50,304) with `--layers` layers (default 2: the per-layer cost times 16 is the
full model's). Kept memory: the counts (load, co-activation, per-domain load, vocabulary rows) do not grow with the
tokens, except the vocabulary rows, one per distinct token id; the choices kept for the saturation do, by L x k
bytes per token per kept model (the first and the previous).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch
from transformers import OlmoeConfig, OlmoeForCausalLM

from adapt.model.routing import RoutingRecorder
from adapt_eval.routing.metrics import RoutingTotals

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import finish, record  # noqa: E402 (bench/report.py, after the path line above)

SHAPES = {
    "demo": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_experts=8, num_experts_per_tok=2),
    "olmoe-1b-7b": dict(vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_hidden_layers=16,
                        num_attention_heads=16, num_key_value_heads=16, num_experts=64, num_experts_per_tok=8),
}


def tensor_bytes(totals: RoutingTotals) -> int:
    tensors = [*totals.load.values(), *totals.coactivation.values(), *totals.vocab_load.values(),
               totals.token_counts_R, totals._row_of]
    tensors += [t for layers in totals.domain_load.values() for t in layers.values()]
    return sum(t.numel() * t.element_size() for t in tensors)


def measure(model, config, batches: int, batch: int, seq: int) -> dict:
    """Each batch forwarded twice, alternating: without the recorder (stock) and with it (the analysis: recorded,
    folded into the counts, choices kept). A warm-up batch first, not timed."""
    generator = torch.Generator().manual_seed(0)
    totals = RoutingTotals(num_experts=config.num_experts, vocab_size=config.vocab_size)
    kept, stock_s, analysis_s = [], 0.0, 0.0
    for i in range(batches + 1):
        # Zipf-like ids (as text has): most occurrences from a small part of the vocabulary.
        ids = (torch.rand(batch, seq, generator=generator) ** 4 * config.vocab_size).long()
        mask = torch.ones_like(ids)
        with torch.no_grad():
            started = time.perf_counter()
            model(input_ids=ids, attention_mask=mask)
            middle = time.perf_counter()
            recorder = RoutingRecorder(model.model)  # as adapt analyze runs: the decoder only, no LM head
            recorder.start()
            model.model(input_ids=ids, attention_mask=mask)
            choices = recorder.stop().choices()
            recorder.remove()
            totals.add(choices, mask, "d", ids)
            kept.append({layer: c.to(torch.uint8) for layer, c in choices.items()})
            ended = time.perf_counter()
        if i:  # batch 0 is the warm-up
            stock_s, analysis_s = stock_s + middle - started, analysis_s + ended - middle
    tokens = batches * batch * seq
    return {"tokens": tokens, "stock_tok_s": tokens / stock_s, "analysis_tok_s": tokens / analysis_s,
            "ratio": stock_s / analysis_s, "counts_mib": tensor_bytes(totals) / 2**20,
            "vocab_rows": len(totals.row_tokens),
            "kept_choices_mib": sum(c.numel() for k in kept[1:] for c in k.values()) / 2**20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=SHAPES, default="demo")
    p.add_argument("--layers", type=int, help="MoE layers (default: the shape's)")
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--json")
    args = p.parse_args()
    fields = dict(SHAPES[args.shape], **({"num_hidden_layers": args.layers} if args.layers else {}))
    torch.manual_seed(0)
    config = OlmoeConfig(**fields)
    model = OlmoeForCausalLM(config).eval()
    rows = []
    for batches in (args.batches, 2 * args.batches):
        rows.append(measure(model, config, batches, args.batch, args.seq))
    header = record(device=f"CPU, {torch.get_num_threads()} threads", torch=torch.__version__,
                    shape=args.shape, layers=config.num_hidden_layers, batch=args.batch, seq=args.seq,
                    peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    finish(header, rows, [("tokens", "tokens", ""), ("stock_tok_s", "forward tok/s", ">.0f"),
                          ("analysis_tok_s", "analysis tok/s", ">.0f"), ("ratio", "analysis / forward", ">.2f"),
                          ("counts_mib", "counts MiB", ">.2f"), ("vocab_rows", "vocab rows", ""),
                          ("kept_choices_mib", "kept choices MiB", ">.2f")], args.json)


if __name__ == "__main__":
    main()
