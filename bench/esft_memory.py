"""What one training step costs in memory under full fine-tuning, LoRA and ESFT, at OLMoE-1B-7B's layer shape
(hidden 2048, 64 experts of intermediate 1024, top-8; a small vocabulary, `--layers` layers), float32 on the CPU.

    python bench/esft_memory.py                          # OLMoE-1B-7B layer shape, 1 layer, 256 tokens
    python bench/esft_memory.py --shape tiny --json out.json

Per method, in a fresh process each: trainable parameters, AdamW's state after one step (its two moments, fp32, per
trainable parameter: counted from the optimizer), the gradients' bytes after the backward, and the process's
resident memory before the step and at its peak during it (sampled every millisecond from /proc/self/statm).
LoRA is the toolkit's (`adapt.model.lora.apply_lora`, r=16, the default targets: attention and experts). ESFT keeps
the experts of each layer by token-selection ratio up to p (`adapt.model.expert_selection`); the routing it ranks is
the random-init model's on 4 random batches, not a task's. What the memory depends on is how many experts per layer
that selects (a column of the table), not which.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import finish, record  # noqa: E402 (bench/report.py, after the path line above)

SHAPES = {  # allenai/OLMoE-1B-7B-0924's layer, with a small vocabulary; and a toy of it to check the harness
    "olmoe-1b-7b": dict(vocab_size=1024, hidden_size=2048, intermediate_size=1024, num_attention_heads=16,
                        num_key_value_heads=16, num_experts=64, num_experts_per_tok=8),
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=32, num_attention_heads=4, num_key_value_heads=4,
                 num_experts=8, num_experts_per_tok=2),
}
METHODS = ("full", "lora-r16", "esft-p0.1", "esft-p0.2", "esft-p0.5")
MIB = 2**20


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """The highest resident set size seen while the block runs (a sampling thread)."""

    def __enter__(self):
        self.peak, self._on = rss(), True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while self._on:
            self.peak = max(self.peak, rss())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._on = False
        self._thread.join()
        self.peak = max(self.peak, rss())


def build(method: str, shape: str, layers: int, tokens: int):
    """The model as the method trains it, and what ESFT selected (experts per layer)."""
    from transformers import OlmoeConfig, OlmoeForCausalLM

    from adapt.config.families import FAMILIES

    config = OlmoeConfig(**SHAPES[shape], num_hidden_layers=layers, pad_token_id=0, bos_token_id=1, eos_token_id=1)
    torch.manual_seed(0)
    model = OlmoeForCausalLM(config)
    if method.startswith("lora"):
        from adapt.config.sections import PeftSection
        from adapt.model.lora import apply_lora

        return apply_lora(model, PeftSection(method="lora", r=16, alpha=32), FAMILIES["olmoe"]), None
    if method.startswith("esft"):
        from adapt.model.expert_selection import route, select
        from adapt.model.expert_slices import freeze

        g = torch.Generator().manual_seed(1)
        sequences = torch.randint(2, config.vocab_size, (4, tokens), generator=g).tolist()
        chosen = select(route(model, sequences, batch_size=1), "token_ratio", float(method.split("-p")[1]))
        freeze(model, FAMILIES["olmoe"], chosen, [])
        return model, sum(len(ids) for ids in chosen.values()) / len(chosen)
    return model, None


def measure(method: str, shape: str, layers: int, tokens: int) -> dict:
    model, experts_per_layer = build(method, shape, layers, tokens)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1)
    ids = torch.randint(2, SHAPES[shape]["vocab_size"], (1, tokens), generator=torch.Generator().manual_seed(2))
    before = rss()
    with PeakRSS() as peak:
        model(input_ids=ids, labels=ids).loss.backward()
        grad_bytes = sum(p.grad.nbytes for p in params if p.grad is not None)
        optimizer.step()
    state_bytes = sum(t.nbytes for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim())
    return {"method": method, "trainable": sum(p.numel() for p in params),
            "total": sum(p.numel() for n, p in model.named_parameters() if not n.endswith("_selected")),
            "experts_per_layer": experts_per_layer, "optimizer_bytes": state_bytes, "grad_bytes": grad_bytes,
            "rss_before_mib": round(before / MIB, 1), "peak_rss_mib": round(peak.peak / MIB, 1),
            "step_peak_mib": round((peak.peak - before) / MIB, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="olmoe-1b-7b")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--tokens", type=int, default=256, help="tokens in the step's one sequence")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--json")
    p.add_argument("--child", help=argparse.SUPPRESS)  # one method, measured in this process
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.shape, args.layers, args.tokens)))
        return
    rows = []
    for method in args.methods.split(","):
        run = subprocess.run([sys.executable, __file__, "--child", method, "--shape", args.shape, "--layers",
                              str(args.layers), "--tokens", str(args.tokens)], capture_output=True, text=True)
        if run.returncode:
            sys.exit(f"{method}: {run.stderr[-2000:]}")
        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
    full = next((r for r in rows if r["method"] == "full"), None)
    for r in rows:
        r["optimizer_vs_full"] = round(r["optimizer_bytes"] / full["optimizer_bytes"], 4) if full else None
    import transformers

    header = record(device=platform.processor() or platform.machine(), dtype="float32", shape=args.shape,
                    layers=args.layers, tokens=args.tokens, config=SHAPES[args.shape],
                    esft_selection="token_ratio on the random-init model's routing of 4 random batches",
                    versions={"torch": torch.__version__, "transformers": transformers.__version__})
    finish(header, rows, [("method", "method", ""), ("trainable", "trainable params", ",d"),
                          ("experts_per_layer", "experts/layer", ".1f"),
                          ("optimizer_bytes", "AdamW state bytes", ",d"), ("grad_bytes", "gradient bytes", ",d"),
                          ("optimizer_vs_full", "state vs full", ".4f"), ("rss_before_mib", "RSS before MiB", ".1f"),
                          ("peak_rss_mib", "peak RSS MiB", ".1f"), ("step_peak_mib", "step peak MiB", ".1f")],
           args.json)


if __name__ == "__main__":
    main()
