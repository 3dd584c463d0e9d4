"""LoRA on OLMoE-1B-7B: trainable parameters per recipe selector, counted on the meta device from the model's config
(no weights, no GPU), and the memory estimate for one GPU that follows from them.

    python bench/lora_memory.py [--r 16] [--seq 4096] [--json OUT.json]

The counts are exact: PEFT wraps a meta-device model exactly as it wraps the real one. The memory is an estimate,
computed here term by term (printed with the table), not a measurement.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import OlmoeConfig, OlmoeForCausalLM

from adapt.config.families import FAMILIES
from adapt.config.sections import PeftSection
from adapt.model.lora import apply_lora

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import finish, record  # noqa: E402 (bench/report.py, after the path line above)

# allenai/OLMoE-1B-7B-0924's config.json
OLMOE_1B_7B = dict(vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_hidden_layers=16,
                   num_attention_heads=16, num_key_value_heads=16, num_experts=64, num_experts_per_tok=8)
SELECTIONS = (["attention"], ["experts"], ["attention", "experts"], ["attention", "experts", "router"])
GIB = 2**30


def counts(targets: list[str], r: int) -> tuple[int, int]:
    """(trainable, frozen base) parameters of OLMoE-1B-7B with LoRA on `targets`."""
    with torch.device("meta"):
        model = OlmoeForCausalLM(OlmoeConfig(**OLMOE_1B_7B))
    wrapped = apply_lora(model, PeftSection(method="lora", r=r, alpha=2 * r, targets=targets), FAMILIES["olmoe"])
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in wrapped.parameters() if not p.requires_grad)
    return trainable, frozen


def memory_gib(trainable: int, frozen: int, seq: int) -> dict[str, float]:
    """bf16 frozen weights; fp32 adapter weights, gradients and AdamW's two moments (16 bytes per trainable
    parameter); with activation checkpointing, each layer's bf16 input kept for the backward plus one layer's working
    set recomputed (attention and the routed experts' inputs, ~12 hidden-sized bf16 tensors per token, a bound);
    TRL's chunked LM head keeps no full-vocabulary logits."""
    c = OLMOE_1B_7B
    layer_inputs = c["num_hidden_layers"] * seq * c["hidden_size"] * 2
    working_set = 12 * seq * c["hidden_size"] * 2 + seq * c["num_experts_per_tok"] * 3 * c["intermediate_size"] * 2
    parts = {"weights_gib": frozen * 2 / GIB, "adapter_states_gib": trainable * 16 / GIB,
             "activations_gib": (layer_inputs + working_set) / GIB}
    parts["total_gib"] = sum(parts.values())
    return {k: round(v, 2) for k, v in parts.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--seq", type=int, default=4096, help="tokens per sequence (batch 1)")
    p.add_argument("--json")
    args = p.parse_args()
    rows = []
    for targets in SELECTIONS:
        trainable, frozen = counts(targets, args.r)
        rows.append({"targets": "+".join(targets), "trainable": trainable, "frozen": frozen,
                     **memory_gib(trainable, frozen, args.seq)})
    header = record(device="meta (no weights)", model="OLMoE-1B-7B", r=args.r, seq=args.seq,
                    versions={"torch": torch.__version__})
    columns = [("targets", "targets", ""), ("trainable", "trainable params", ",d"), ("frozen", "frozen params", ",d"),
               ("weights_gib", "weights GiB", ".2f"), ("adapter_states_gib", "adapter GiB", ".2f"),
               ("activations_gib", "activations GiB", ".2f"), ("total_gib", "total GiB", ".2f")]
    finish(header, rows, columns, args.json)


if __name__ == "__main__":
    main()
