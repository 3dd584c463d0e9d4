"""What llama.cpp needs to know of each model family, in one table: its architecture name in `gguf`, the
hyperparameters it reads, the configurations it would run differently from transformers (refused), and the
pre-tokenizer it expects for the family's vocabulary. Tensor names come from `gguf`'s own name maps
(`gguf.get_tensor_name_map`), fed the stacked expert names llama.cpp's converter uses
(`model.layers.N.mlp.experts.{gate,up,down}_proj`). A family is added by a row here and a case in
tests/test_export.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GGUFArchitecture:
    gguf_arch: str  # the member of gguf.MODEL_ARCH
    hparams: Callable[[Any, dict], None]  # (GGUFWriter, config.json) -> writes the architecture's keys
    refuse: Callable[[dict], str | None]  # a config llama.cpp would run differently: why, or None
    pre_tokenizer: str  # llama.cpp's pre-tokenizer for the family's byte-level BPE (GPT-2 regex)


def _olmoe_hparams(writer, config: dict) -> None:
    """As llama.cpp's converter (convert_hf_to_gguf.py, OlmoeModel) writes them; the RMS epsilon from the config."""
    rope = (config.get("rope_parameters") or {}).get("rope_theta", config.get("rope_theta", 10000.0))
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config.get("num_key_value_heads") or config["num_attention_heads"])
    writer.add_rope_freq_base(float(rope))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_expert_count(config["num_experts"])
    writer.add_expert_used_count(config["num_experts_per_tok"])


def _olmoe_refuse(config: dict) -> str | None:
    """llama.cpp's olmoe graph (src/models/olmoe.cpp): softmax over all experts then top-k without renormalising,
    q/k norms over the whole projection (so as many K/V heads as query heads), no qkv clipping."""
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    if kv_heads != heads:
        return f"num_key_value_heads {kv_heads} != num_attention_heads {heads}: llama.cpp's olmoe has no grouped K/V"
    if config.get("norm_topk_prob"):
        return "norm_topk_prob true: llama.cpp's olmoe does not renormalise the top-k routing weights"
    if config.get("clip_qkv") is not None:
        return f"clip_qkv {config['clip_qkv']}: llama.cpp's olmoe does not clip q/k/v"
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default" or (config.get("rope_scaling") or {}).get("factor"):
        return f"rope {rope.get('rope_type')} (scaled RoPE): the export writes plain RoPE only"
    if config.get("hidden_act", "silu") != "silu":
        return f"hidden_act {config['hidden_act']}: llama.cpp's olmoe uses SiLU experts"
    head_dim = config.get("head_dim")
    if head_dim and head_dim * heads != config["hidden_size"]:
        return f"head_dim {head_dim} x {heads} heads != hidden_size {config['hidden_size']}"
    if config.get("attention_bias"):
        return "attention_bias true: llama.cpp's olmoe has no attention biases"
    return None


ARCHITECTURES: dict[str, GGUFArchitecture] = {
    "olmoe": GGUFArchitecture(gguf_arch="OLMOE", hparams=_olmoe_hparams, refuse=_olmoe_refuse, pre_tokenizer="olmo"),
}


def architecture(model_type: str | None) -> GGUFArchitecture:
    """The row for a model type, or a one-line error naming what is known."""
    if model_type not in ARCHITECTURES:
        raise ExportError(f"model_type {model_type!r}: no GGUF export for it yet (known: {', '.join(ARCHITECTURES)}); "
                          "a family is added by a row in adapt/export/architectures.py and a test")
    return ARCHITECTURES[model_type]


class ExportError(Exception):
    """A problem the user can fix; the command line prints it as one line, and nothing was written."""
