"""Per family, what llama.cpp's own converter writes and what its compute graph does, so that the GGUF file runs
in llama.cpp as the model runs in transformers 5.23. The rows of adapt/export/architectures.py use the functions
here: `*_hparams(writer, config)` writes the keys, `*_refuse(config)` names a configuration llama.cpp would run
differently (one line), `*_tensors(state, config)` turns the state dict into the names gguf's tensor-name map knows
(`gguf.get_tensor_name_map`), with the splits, permutations and transposes the converter makes.

Every fact below is read from the llama.cpp that llama-cpp-python 0.3.36 vendors: the converter is
convert_hf_to_gguf.py with its `conversion/` package (cited as conversion/FILE.py), the hyperparameter loading
src/llama-model.cpp and src/models/FILE.cpp (`load_arch_hparams`, `load_arch_tensors`), the graphs
src/models/FILE.cpp and src/llama-graph.cpp (`build_moe_ffn`, `build_qkv`). The file is written with the installed
gguf 0.19.0, which has every key and tensor name used here.

Shared by all (conversion/base.py `TextModel.set_gguf_parameters`): block count, context length, embedding and
feed-forward length, head counts, RoPE base, RMS epsilon, expert and used-expert counts, expert groups (only where
grouping selects: llama.cpp asserts fewer chosen groups than groups), `head_dim` as key/value length; YaRN keys
where the config has YaRN. Tensors: transformers' fused experts
`experts.gate_up_proj [E, 2I, H]` (gate rows first) are the converter's `gate_proj` and `up_proj`, `down_proj
[E, H, I]` its `down_proj` (conversion/qwen.py `Qwen2MoeModel.modify_tensors`); a tied head is written as
`output` too. Stored in float32 whatever the type, as the converter: 1-D tensors, norms, biases, the routers.
Scaled RoPE is refused except where written and checked (gpt_oss's and deepseek_v3's YaRN), and every family's
experts are SiLU-gated, so another `hidden_act` is refused. YaRN (src/llama-context.cpp, ggml/src/ggml-cpu/ops.cpp
`rope_yarn`): ggml floors/ceils the correction range (ggml/src/ggml.c `ggml_rope_yarn_corr_dims`), as
transformers' `truncate: true`; `truncate: false` and an explicit `attention_factor` are refused.

- olmoe (conversion/olmo.py `OlmoeModel`; src/models/olmoe.cpp): the base keys only. The graph takes softmax over
  all experts then the top-k without renormalising (`build_moe_ffn(..., norm_w=false)`), and the q/k norms span
  the whole projection with `attn_k_norm` of size n_embd: `norm_topk_prob`, grouped K/V heads (transformers' k_norm
  is then smaller), `clip_qkv` (`build_qkv(..., reshape=false)` never clamps) and attention biases are refused.
- qwen3_moe (conversion/qwen.py `Qwen3MoeModel`; src/models/qwen3moe.cpp): + expert feed-forward length. Every
  layer is MoE with renormalised top-k (`norm_w=true`) and per-head q/k norms; no output bias, no sliding window:
  `norm_topk_prob` false, `mlp_only_layers`/`decoder_sparse_step`, `attention_bias`, a sliding window are refused.
- qwen2_moe (conversion/qwen.py `Qwen2MoeModel`; src/models/qwen2moe.cpp): + expert and shared-expert feed-forward
  lengths. Top-k not renormalised (`norm_w=false`), the shared expert gated by sigmoid(`ffn_gate_inp_shexp` x)
  (computed as silu(g)/g), optional q/k/v biases; `norm_topk_prob` true, dense layers and sliding layers refused.
- mixtral (conversion/llama.py `LlamaModel`: arch `llama`; src/models/llama.cpp): + vocab size, RoPE dimension
  count. llama.cpp rotates adjacent pairs (`LLAMA_ROPE_TYPE_NORM`, src/llama-model.cpp `llama_model_rope_type`)
  where transformers rotates halves, so q/k rows are permuted (`LlamaModel.permute`). Top-k renormalised; a sliding
  window is refused.
- deepseek_v3 (conversion/deepseek.py `DeepseekV2Model`: arch `deepseek2`; src/models/deepseek2.cpp): MLA as MQA
  (head_count_kv 1), key/value length kv_lora_rank + rope dim / kv_lora_rank, the MLA head sizes, q/kv LoRA ranks
  (q 0 without `q_lora_rank`: llama.cpp then loads `attn_q`), leading dense block count, expert feed-forward length,
  shared-expert count, `routed_scaling_factor` as expert weights scale, `norm_topk_prob`, RoPE dimension count,
  vocab size, and sigmoid gating (the converter writes it only from a `scoring_func` key, which transformers'
  config has not; llama.cpp's default would be softmax). `kv_b_proj` is split per head into `attn_k_b` (transposed)
  and `attn_v_b` (the absorbed-MLA layout); `e_score_correction_bias` is `exp_probs_b`, added for the choice only
  (`build_moe_ffn`); groups: top-2 sum per group, the unchosen groups masked to -inf as transformers does. RoPE
  pairs: transformers' `rope_interleave` (the default) rotates adjacent pairs as llama.cpp does; without it,
  attention biases, or fewer K/V heads than query heads (transformers' MLA has one K/V per query head), refused.
  YaRN as DeepSeek-V3's (`mscale` = `mscale_all_dim`): + `rope.scaling.yarn_log_mul` 0.1 x mscale_all_dim (the
  converter's [TAG_DEEPSEEK2_YARN_LOG_MUL_FIX]); llama.cpp then leaves cos/sin unscaled and scales the softmax by
  (0.1 mscale_all_dim ln(factor) + 1)^2 (src/models/deepseek2.cpp), as transformers; other mscales refused.
- glm4_moe (conversion/glm.py `Glm4MoeModel`; src/models/glm4-moe.cpp): + RoPE dimension count (head_dim x
  `partial_rotary_factor`, NeoX halves as transformers), expert count and feed-forward length, shared-expert count,
  leading dense block count, sigmoid gating, expert weights scale and norm. `exp_probs_b` as deepseek; optional
  q/k/v biases and q/k norms. No MTP block is written: transformers has no weights for it.
- gpt_oss (conversion/gpt_oss.py `GptOssModel`: arch `gpt-oss`; src/models/openai-moe.cpp): + sliding window,
  expert feed-forward length (`intermediate_size`) and, where the converter relies on llama.cpp's default
  alternating pattern (`load_swa_pattern(ml, 2)`), the per-layer pattern from `layer_types` (a bool array that
  `load_swa_pattern` reads first). `gate_up_proj [E, H, 2I]` is transposed and de-interleaved (gate = even
  columns, up = odd), `down_proj [E, I, H]` transposed, the expert biases split the same way; `sinks` is
  `attn_sinks`. The router: top-k of the biased logits, softmax over those k (`SOFTMAX_WEIGHT`). The experts'
  `LLM_FFN_SWIGLU_OAI_MOE` has alpha 1.702 and limit 7.0 fixed in src/llama-graph.cpp: other `swiglu_alpha` or
  `swiglu_limit` are refused. llama.cpp always loads the attention-output bias: zeros are written when the model
  has none. YaRN with the scale derived from the factor: gpt-oss's published configs say `truncate: false`,
  so they are refused (measured: 0.8 on the logits of the tiny test model); `mscale` is refused.
- granitemoe (conversion/granite.py `GraniteMoeModel`, a `LlamaModel`: arch `granitemoe`; src/models/granite.cpp):
  as mixtral (q/k permuted, biases included) + the multipliers: `attention_multiplier` as attention scale (the
  softmax scale itself), `embedding_multiplier`, `residual_multiplier`, `logits_scaling` (the logits are divided by
  it). llama.cpp reads 0 as "unset" for the first three, so a zero multiplier is refused; the top-k softmax of the
  router equals llama.cpp's renormalised top-k of the full softmax.
"""

from __future__ import annotations

import math

SILU = "silu"


def setting(config: dict, *names: str, default=None):
    """The first of `names` the config sets (not None), as the converter's `find_hparam`."""
    return next((config[n] for n in names if config.get(n) is not None), default)


def rope_parameters(config: dict) -> dict:
    return config.get("rope_parameters") or config.get("rope_scaling") or {}


def rope_kind(config: dict) -> str:
    rope = rope_parameters(config)
    return rope.get("rope_type", rope.get("type", "default"))


def heads(config: dict) -> tuple[int, int]:
    """(query heads, K/V heads)."""
    n = config["num_attention_heads"]
    return n, config.get("num_key_value_heads") or n


def head_dim(config: dict) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


# ---------------------------------------------------------------- shared by every family


def write_base(writer, config: dict, kv_heads: int | None = None, key_length: bool = True) -> None:
    """conversion/base.py `TextModel.set_gguf_parameters`, for the keys these families have."""
    rope = rope_parameters(config)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(kv_heads or heads(config)[1])
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_expert_count(setting(config, "num_local_experts", "num_experts", "n_routed_experts"))
    writer.add_expert_used_count(config["num_experts_per_tok"])
    groups, chosen = config.get("n_group"), config.get("topk_group")
    # Choosing every group is no grouping, and llama.cpp asserts fewer chosen groups than groups
    # (src/llama-model.cpp, `n_group_used < n_expert_groups`): the keys are written only when grouping selects.
    if groups and chosen and chosen < groups:
        writer.add_expert_group_count(groups)
        writer.add_expert_group_used_count(chosen)
    if key_length and config.get("head_dim"):
        writer.add_key_length(config["head_dim"])
        writer.add_value_length(config["head_dim"])
    if rope_kind(config) == "yarn":
        write_yarn(writer, rope)


def write_yarn(writer, rope: dict) -> None:
    """conversion/base.py: the YaRN keys; llama.cpp derives the magnitude scale 0.1 ln(factor) + 1 itself
    (src/llama-context.cpp), as transformers does when the config gives no attention_factor."""
    import gguf

    writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    writer.add_rope_scaling_yarn_beta_fast(float(rope.get("beta_fast") or 32.0))
    writer.add_rope_scaling_yarn_beta_slow(float(rope.get("beta_slow") or 1.0))


def common_refusal(config: dict, yarn=None) -> str | None:
    """Scaled RoPE (YaRN only where the family writes it: `yarn` then names what it refuses of it) and a non-SiLU
    activation."""
    rope, kind = rope_parameters(config), rope_kind(config)
    if kind == "yarn" and yarn:
        reason = yarn_refusal(rope) or yarn(rope)
        if reason:
            return reason
    elif kind != "default" or rope.get("factor"):
        return f"rope {kind} (scaled RoPE): the export writes plain RoPE for {config['model_type']}"
    if config.get("hidden_act", SILU) != SILU:
        return f"hidden_act {config['hidden_act']}: llama.cpp's {config['model_type']} experts are SiLU-gated"
    return None


def yarn_refusal(rope: dict) -> str | None:
    """What llama.cpp's YaRN (ggml/src/ggml-cpu/ops.cpp `rope_yarn`) cannot reproduce of transformers'
    (modeling_rope_utils.py `_compute_yarn_parameters`)."""
    if rope.get("truncate", True) is False:
        return ("rope yarn with truncate false: llama.cpp floors/ceils YaRN's correction range "
                "(ggml_rope_yarn_corr_dims), as transformers' truncate true")
    if not rope.get("factor") or not rope.get("original_max_position_embeddings"):
        return "rope yarn without factor and original_max_position_embeddings: llama.cpp reads both from the file"
    if rope.get("attention_factor"):
        return f"rope yarn with attention_factor {rope['attention_factor']}: llama.cpp derives YaRN's scale itself"
    return None


def refuse_biases(config: dict, arch: str) -> str | None:
    if config.get("attention_bias"):
        return f"attention_bias true: llama.cpp's {arch} has no attention output bias"
    return None


def refuse_dense_layers(config: dict, arch: str) -> str | None:
    """Qwen's `mlp_only_layers`/`decoder_sparse_step` make dense layers; llama.cpp's qwen MoE graphs have none."""
    if config.get("mlp_only_layers") or (config.get("decoder_sparse_step") or 1) != 1:
        return (f"mlp_only_layers {config.get('mlp_only_layers')} / decoder_sparse_step "
                f"{config.get('decoder_sparse_step')}: llama.cpp's {arch} has a MoE block in every layer")
    return None


def refuse_sliding(config: dict, arch: str) -> str | None:
    sliding = "sliding_attention" in (config.get("layer_types") or [])
    if sliding or (config.get("use_sliding_window", True) and config.get("sliding_window")):
        return f"sliding window {config.get('sliding_window')}: llama.cpp's {arch} attends to the whole context"
    return None


def hf_tensors(state: dict, config: dict) -> dict:
    """The state dict under the converter's names: fused experts split (gate rows first), `down_proj` as a
    `.weight`, a tied head written as `lm_head` too (llama.cpp's olmoe, qwen2moe and gpt-oss require `output`)."""
    out = {}
    for key, tensor in state.items():
        if key.endswith(".experts.gate_up_proj"):
            half = tensor.shape[1] // 2
            prefix = key.removesuffix("gate_up_proj")
            out[prefix + "gate_proj.weight"] = tensor[:, :half]
            out[prefix + "up_proj.weight"] = tensor[:, half:]
        elif key.endswith((".weight", ".bias")):
            out[key] = tensor
        else:  # down_proj, sinks: parameters without a suffix
            out[key + ".weight"] = tensor
    out.setdefault("lm_head.weight", out["model.embed_tokens.weight"])
    return out


def permute_qk(state: dict, config: dict) -> dict:
    """conversion/llama.py `LlamaModel.permute` on q/k weights and biases: transformers rotates the two halves of a
    head, llama.cpp's NORM RoPE adjacent pairs; reordering each head's rows [0, d/2, 1, d/2+1, ...] makes one the
    other (the q.k products are unchanged)."""
    n_head, n_kv = heads(config)

    def permute(w, n):
        return w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    out = dict(state)
    for key, tensor in state.items():
        if key.endswith(("q_proj.weight", "q_proj.bias")):
            out[key] = permute(tensor, n_head)
        elif key.endswith(("k_proj.weight", "k_proj.bias")):
            out[key] = permute(tensor, n_kv)
    return out


def score_bias(state: dict) -> dict:
    """transformers' `gate.e_score_correction_bias` is the converter's `gate.e_score_correction.bias`
    (gguf's `exp_probs_b`)."""
    return {k.replace(".e_score_correction_bias", ".e_score_correction.bias"): v for k, v in state.items()}


# ---------------------------------------------------------------- olmoe


def olmoe_hparams(writer, config: dict) -> None:
    write_base(writer, config)


def olmoe_refuse(config: dict) -> str | None:
    n_head, n_kv = heads(config)
    if n_kv != n_head:
        return (f"num_key_value_heads {n_kv} != num_attention_heads {n_head}: llama.cpp's olmoe has no grouped K/V "
                "(its attn_k_norm spans n_embd, src/models/olmoe.cpp)")
    if config.get("norm_topk_prob"):
        return "norm_topk_prob true: llama.cpp's olmoe does not renormalise the top-k routing weights"
    if config.get("clip_qkv") is not None:
        return f"clip_qkv {config['clip_qkv']}: llama.cpp's olmoe does not clip q/k/v"
    if config.get("head_dim") and config["head_dim"] * n_head != config["hidden_size"]:
        return f"head_dim {config['head_dim']} x {n_head} heads != hidden_size {config['hidden_size']}"
    if config.get("attention_bias"):
        return "attention_bias true: llama.cpp's olmoe has no attention biases"
    return common_refusal(config)


# ---------------------------------------------------------------- qwen3_moe, qwen2_moe


def qwen3_moe_hparams(writer, config: dict) -> None:
    write_base(writer, config)
    writer.add_expert_feed_forward_length(config["moe_intermediate_size"])


def qwen3_moe_refuse(config: dict) -> str | None:
    if not config.get("norm_topk_prob"):
        return "norm_topk_prob false: llama.cpp's qwen3moe always renormalises the top-k routing weights"
    return (refuse_dense_layers(config, "qwen3moe") or refuse_biases(config, "qwen3moe")
            or refuse_sliding(config, "qwen3moe") or common_refusal(config))


def qwen2_moe_hparams(writer, config: dict) -> None:
    write_base(writer, config)
    writer.add_expert_feed_forward_length(config["moe_intermediate_size"])
    writer.add_expert_shared_feed_forward_length(config["shared_expert_intermediate_size"])


def qwen2_moe_refuse(config: dict) -> str | None:
    if config.get("norm_topk_prob"):
        return "norm_topk_prob true: llama.cpp's qwen2moe does not renormalise the top-k routing weights"
    if head_dim(config) * config["num_attention_heads"] != config["hidden_size"]:
        return f"head_dim {head_dim(config)}: llama.cpp's qwen2moe has heads of hidden_size / num_attention_heads"
    return refuse_dense_layers(config, "qwen2moe") or refuse_sliding(config, "qwen2moe") or common_refusal(config)


# ---------------------------------------------------------------- mixtral (llama), granitemoe


def mixtral_hparams(writer, config: dict) -> None:
    """conversion/llama.py `LlamaModel.set_gguf_parameters`: + vocab size and RoPE dimension count."""
    write_base(writer, config)
    writer.add_vocab_size(config["vocab_size"])
    writer.add_rope_dimension_count(head_dim(config))


def mixtral_refuse(config: dict) -> str | None:
    return refuse_sliding(config, "llama") or common_refusal(config)


def llama_tensors(state: dict, config: dict) -> dict:
    return hf_tensors(permute_qk(state, config), config)


def granitemoe_hparams(writer, config: dict) -> None:
    """conversion/granite.py `GraniteModel.set_gguf_parameters` (head_dim ignored); the logit scale is required by
    src/models/granite-moe.cpp."""
    write_base(writer, config, key_length=False)
    writer.add_vocab_size(config["vocab_size"])
    writer.add_rope_dimension_count(config["hidden_size"] // config["num_attention_heads"])
    writer.add_attention_scale(float(config["attention_multiplier"]))
    writer.add_embedding_scale(float(config["embedding_multiplier"]))
    writer.add_residual_scale(float(config["residual_multiplier"]))
    writer.add_logit_scale(float(config["logits_scaling"]))


def granitemoe_refuse(config: dict) -> str | None:
    for key in ("attention_multiplier", "embedding_multiplier", "residual_multiplier", "logits_scaling"):
        if not config.get(key):
            return f"{key} {config.get(key)}: llama.cpp's granitemoe reads 0 as unset (src/models/granite.cpp)"
    if head_dim(config) * config["num_attention_heads"] != config["hidden_size"]:
        return f"head_dim {head_dim(config)}: llama.cpp's granite has heads of hidden_size / num_attention_heads"
    return common_refusal(config)


def granitemoe_tensors(state: dict, config: dict) -> dict:
    """The MoE block is `block_sparse_moe` in transformers; gguf's map knows the same tensors under `mlp`."""
    return llama_tensors({k.replace(".block_sparse_moe.", ".mlp."): v for k, v in state.items()}, config)


# ---------------------------------------------------------------- deepseek_v3 (deepseek2), glm4_moe


def deepseek_v3_hparams(writer, config: dict) -> None:
    """conversion/deepseek.py `DeepseekV2Model.set_gguf_parameters`; read by src/models/deepseek2.cpp."""
    import gguf

    kv_rank, rope_dim = config["kv_lora_rank"], config["qk_rope_head_dim"]
    write_base(writer, config, kv_heads=1, key_length=False)  # MLA runs as MQA over the compressed K/V
    writer.add_leading_dense_block_count(config.get("first_k_dense_replace") or 0)
    writer.add_vocab_size(config["vocab_size"])
    writer.add_q_lora_rank(config.get("q_lora_rank") or 0)  # 0: llama.cpp loads attn_q (no q LoRA)
    writer.add_kv_lora_rank(kv_rank)
    writer.add_key_length(kv_rank + rope_dim)
    writer.add_value_length(kv_rank)
    writer.add_key_length_mla(config["qk_nope_head_dim"] + rope_dim)
    writer.add_value_length_mla(config["v_head_dim"])
    writer.add_expert_feed_forward_length(config["moe_intermediate_size"])
    writer.add_expert_shared_count(config.get("n_shared_experts") or 0)
    writer.add_expert_weights_scale(float(config.get("routed_scaling_factor") or 1.0))
    if config.get("norm_topk_prob"):
        writer.add_expert_weights_norm(True)
    writer.add_rope_dimension_count(rope_dim)
    writer.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    if rope_kind(config) == "yarn":  # stored x0.1 and divided back by llama.cpp ([TAG_DEEPSEEK2_YARN_LOG_MUL_FIX])
        writer.add_rope_scaling_yarn_log_mul(0.1 * rope_parameters(config)["mscale_all_dim"])


def deepseek_v3_refuse(config: dict) -> str | None:
    n_head, n_kv = heads(config)
    if n_kv != n_head:
        return (f"num_key_value_heads {n_kv} != num_attention_heads {n_head}: transformers' MLA expands one K/V per "
                "query head, llama.cpp's deepseek2 decompresses kv_b_proj per query head")
    if not config.get("rope_interleave", True):
        return ("rope_interleave false: transformers rotates halves of the rope dims, llama.cpp's deepseek2 "
                "adjacent pairs")
    if config.get("attention_bias"):
        return "attention_bias true: llama.cpp's deepseek2 has no attention biases"
    return common_refusal(config, yarn=deepseek_yarn_refusal)


def deepseek_yarn_refusal(rope: dict) -> str | None:
    """llama.cpp's deepseek2 (src/llama-context.cpp, src/models/deepseek2.cpp) leaves cos/sin unscaled and scales
    the softmax by (0.1 mscale_all_dim ln(factor) + 1)^2; transformers does the same when `mscale` equals
    `mscale_all_dim` (DeepSeek-V3's 1.0 and 1.0), else it scales cos/sin too."""
    mscale, all_dim = rope.get("mscale"), rope.get("mscale_all_dim")
    if not all_dim or mscale != all_dim:
        return (f"rope yarn with mscale {mscale} / mscale_all_dim {all_dim}: llama.cpp's deepseek2 scales YaRN as "
                "transformers only when both are set and equal")
    return None


def deepseek_v3_tensors(state: dict, config: dict) -> dict:
    """conversion/deepseek.py: `kv_b_proj [H*(nope+v), kv_rank]` split per head into `k_b_proj [H, kv_rank, nope]`
    (transposed: llama.cpp absorbs it into q) and `v_b_proj [H, v, kv_rank]`."""
    n_head, nope, v = config["num_attention_heads"], config["qk_nope_head_dim"], config["v_head_dim"]
    out = {}
    for key, tensor in score_bias(state).items():
        if key.endswith("kv_b_proj.weight"):
            k_b, v_b = tensor.view(n_head, nope + v, tensor.shape[-1]).split([nope, v], dim=1)
            out[key.replace("kv_b_proj", "k_b_proj")] = k_b.transpose(1, 2)
            out[key.replace("kv_b_proj", "v_b_proj")] = v_b
        else:
            out[key] = tensor
    return hf_tensors(out, config)


def glm4_moe_hparams(writer, config: dict) -> None:
    """conversion/glm.py `Glm4MoeModel.set_gguf_parameters`, without the MTP block (transformers has no weights for
    it). The rotary fraction is transformers' (the converter's default, 0.5, is also GLM-4.5's)."""
    import gguf

    write_base(writer, config)
    fraction = rope_parameters(config).get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    writer.add_rope_dimension_count(int(head_dim(config) * fraction))
    writer.add_expert_feed_forward_length(config["moe_intermediate_size"])
    writer.add_expert_shared_count(config["n_shared_experts"])
    writer.add_leading_dense_block_count(config.get("first_k_dense_replace") or 0)
    writer.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    writer.add_expert_weights_scale(float(config.get("routed_scaling_factor") or 1.0))
    writer.add_expert_weights_norm(bool(config.get("norm_topk_prob")))


def glm4_moe_refuse(config: dict) -> str | None:
    if not config.get("n_shared_experts"):
        return "n_shared_experts 0: llama.cpp's glm4moe graph always adds the shared expert"
    return common_refusal(config)


def glm4_moe_tensors(state: dict, config: dict) -> dict:
    return hf_tensors(score_bias(state), config)


# ---------------------------------------------------------------- gpt_oss


def gpt_oss_hparams(writer, config: dict) -> None:
    """conversion/gpt_oss.py `GptOssModel.set_gguf_parameters` + the per-layer sliding pattern."""
    write_base(writer, config)
    writer.add_sliding_window(config.get("sliding_window") or 0)
    writer.add_expert_feed_forward_length(config["intermediate_size"])
    types = config.get("layer_types") or ["sliding_attention" if i % 2 == 0 else "full_attention"
                                          for i in range(config["num_hidden_layers"])]
    writer.add_sliding_window_pattern([t == "sliding_attention" for t in types])


def gpt_oss_refuse(config: dict) -> str | None:
    alpha, limit = config.get("swiglu_alpha", 1.702), config.get("swiglu_limit", 7.0)
    if not math.isclose(alpha, 1.702) or not math.isclose(limit, 7.0):
        return (f"swiglu_alpha {alpha} / swiglu_limit {limit}: llama.cpp's gpt-oss experts use alpha 1.702 and "
                "limit 7.0, fixed in src/llama-graph.cpp")
    if "sliding_attention" in (config.get("layer_types") or []) and not config.get("sliding_window"):
        return "layer_types has sliding layers but no sliding_window: llama.cpp's gpt-oss needs the window's size"
    return common_refusal(config, yarn=gpt_oss_yarn_refusal)


def gpt_oss_yarn_refusal(rope: dict) -> str | None:
    if rope.get("mscale") or rope.get("mscale_all_dim"):
        return "rope yarn with mscale: llama.cpp's gpt-oss derives YaRN's scale from the factor only"
    return None


def gpt_oss_tensors(state: dict, config: dict) -> dict:
    """conversion/gpt_oss.py `modify_tensors`: transformers keeps the experts as x @ W (`gate_up_proj [E, H, 2I]`,
    gate and up interleaved column by column; `down_proj [E, I, H]`); llama.cpp wants [E, out, in] halves."""
    import torch

    out = {}
    for key, tensor in state.items():
        if key.endswith(".experts.gate_up_proj"):
            rows = tensor.transpose(1, 2)
            out[key.replace("gate_up_proj", "gate_proj.weight")] = rows[:, ::2]
            out[key.replace("gate_up_proj", "up_proj.weight")] = rows[:, 1::2]
        elif key.endswith(".experts.gate_up_proj_bias"):
            out[key.replace("gate_up_proj_bias", "gate_proj.bias")] = tensor[:, ::2]
            out[key.replace("gate_up_proj_bias", "up_proj.bias")] = tensor[:, 1::2]
        elif key.endswith(".experts.down_proj"):
            out[key + ".weight"] = tensor.transpose(1, 2)
        elif key.endswith(".experts.down_proj_bias"):
            out[key.replace("down_proj_bias", "down_proj.bias")] = tensor
        else:
            out[key] = tensor
    for layer in range(config["num_hidden_layers"]):  # llama.cpp requires attn_output.bias (openai-moe.cpp)
        name = f"model.layers.{layer}.self_attn.o_proj.bias"
        out.setdefault(name, torch.zeros(config["hidden_size"]))
    return hf_tensors(out, config)
