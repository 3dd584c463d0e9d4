"""`adapt export gguf` for every MoE family the toolkit trains (adapt/config/families.py), checked against llama.cpp
itself (llama-cpp-python loads the file): each family's tiny model (tests/tiny_families.py, weights N(0, 0.2) so
routing depends on the token) exported in f32 gives transformers' tokens, next-token logits and greedy continuation;
each configuration llama.cpp would run differently is refused in one line before anything is written. What is
written per family, and why, is adapt/export/gguf_families.py's note."""

import copy

import pytest
import torch
import transformers

from adapt.config.families import FAMILIES
from adapt.export import check as lc
from adapt.export.architectures import ARCHITECTURES, ExportError
from adapt.export.gguf_file import export_gguf
from tiny_families import TINY

# gpt_oss's YaRN as llama.cpp computes it (`truncate: true`), with a correction range that falls between integers
# for these heads (so `truncate: false` moves the logits by 0.8, refused below); DeepSeek-V3's own YaRN.
GPT_OSS_YARN = {"rope_type": "yarn", "factor": 32.0, "original_max_position_embeddings": 4096, "beta_fast": 32.0,
                "beta_slow": 1.0, "truncate": True, "rope_theta": 10000.0}
DEEPSEEK_YARN = {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096, "beta_fast": 32.0,
                 "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0, "rope_theta": 10000.0}

# What each exported case changes in the family's tiny config (the refusals below show why where it is a default
# of TINY), and the tensors set to random values because transformers initialises them to zero.
EXPORTED = {
    "olmoe": dict(num_key_value_heads=4),
    "qwen3_moe": dict(mlp_only_layers=[]),
    "qwen2_moe": dict(mlp_only_layers=[]),
    "mixtral": {},
    "deepseek_v3": {},
    "glm4_moe": dict(attention_bias=True, use_qk_norm=True),
    "gpt_oss": dict(max_position_embeddings=131072, rope_parameters=GPT_OSS_YARN),
    "granitemoe": dict(embedding_multiplier=3.0, attention_multiplier=0.25, residual_multiplier=0.5,
                       logits_scaling=1.5),
}
RANDOMISED = {"qwen2_moe": ("_proj.bias",), "deepseek_v3": ("e_score_correction_bias",),
              "glm4_moe": ("e_score_correction_bias", "_proj.bias"), "gpt_oss": ("sinks", "bias")}

# (family, changes on top of EXPORTED); measured max |transformers - llama.cpp| over every position of every text,
# and the largest |logit|, in the comment.
CASES = [
    ("olmoe", {}),  # 3.2e-6, logits up to 4.6
    ("qwen3_moe", {}),  # 3.9e-6, 5.0
    ("qwen2_moe", {}),  # 1.7e-6, 4.3
    ("mixtral", {}),  # 5.2e-6, 5.1
    ("deepseek_v3", {}),  # 7.6e-6, 4.5
    ("deepseek_v3", dict(max_position_embeddings=163840, rope_parameters=DEEPSEEK_YARN)),  # 1.0e-5, 4.7
    ("deepseek_v3", dict(q_lora_rank=None, n_group=2, topk_group=2)),  # no q LoRA, every group chosen: 7.3e-6, 4.7
    ("glm4_moe", {}),  # 3.0e-6, 4.8
    ("gpt_oss", {}),  # 3.9e-6, 6.3
    # full then sliding (the pattern is written per layer; llama.cpp's default alternation starts sliding), no
    # attention biases (zeros written for the output bias llama.cpp requires)
    ("gpt_oss", dict(layer_types=["full_attention", "sliding_attention"], attention_bias=False)),  # 6.9e-6, 5.6
    ("granitemoe", {}),  # 1.4e-6, 2.9
]


def needs_llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[gguf]')")


@pytest.fixture(scope="module")
def tulu_tokenizer():
    from adapt.config.sections import ModelSection
    from adapt.data.tokenizer import load_tokenizer

    return load_tokenizer(ModelSection(tokenizer="builtin:demo", chat_template="tulu"))


def family_config(family, tokenizer, **changes):
    """The family's tiny config with the demo tokenizer's vocabulary (320 > its 299 tokens: llama.cpp gets padding
    rows too) and special ids, weights N(0, 0.2), the exported case's changes and `changes`."""
    fields = dict(TINY[family], vocab_size=320, initializer_range=0.2, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return getattr(transformers, FAMILIES[family].config_class)(**{**fields, **EXPORTED[family], **changes})


def tiny_model(family, tokenizer, **changes):
    torch.manual_seed(0)
    model = getattr(transformers, FAMILIES[family].model_class)(family_config(family, tokenizer, **changes)).eval()
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith(RANDOMISED.get(family, ())):
                tensor.copy_(torch.randn_like(tensor) * 0.5)
    return model


def without(model, suffixes):
    """The model with the tensors ending in `suffixes` zeroed."""
    copy_ = copy.deepcopy(model)
    with torch.no_grad():
        for name, tensor in [*copy_.named_parameters(), *copy_.named_buffers()]:
            if name.endswith(suffixes):
                tensor.zero_()
    return copy_


def test_every_family_has_a_row_and_an_exported_case():
    assert set(ARCHITECTURES) == set(FAMILIES) == set(EXPORTED) == {family for family, _ in CASES}


@pytest.mark.parametrize("family, changes", CASES, ids=lambda v: v if isinstance(v, str) else "-".join(v) or "tiny")
def test_f32_export_is_what_transformers_computes(family, changes, tulu_tokenizer, tmp_path):
    needs_llama_cpp()
    model = tiny_model(family, tulu_tokenizer, **changes)
    model.save_pretrained(tmp_path / "run")
    tulu_tokenizer.save_pretrained(tmp_path / "run")
    done = export_gguf(tmp_path / "run", tmp_path / "m.gguf", "f32")
    llm = lc.open_gguf(done.path)
    try:
        assert lc.tokenization_differences(tulu_tokenizer, llm) == []
        worst, scale = lc.logits_difference(model, tulu_tokenizer, llm)
        assert worst < 1e-4 and scale > 2  # measured values in CASES
        prompt = tulu_tokenizer.apply_chat_template(lc.CONVERSATION, tokenize=False, add_generation_prompt=True)
        ours, theirs = lc.greedy(model, tulu_tokenizer, llm, prompt)
        assert ours == theirs and len(set(ours)) > 1
        if family in RANDOMISED:  # the randomised tensors are in the comparison: without them the logits move
            moved, _ = lc.logits_difference(without(model, RANDOMISED[family]), tulu_tokenizer, llm)
            assert moved > 0.1
    finally:
        llm.close()


@pytest.mark.parametrize("family, changes, reason", [
    ("olmoe", dict(num_key_value_heads=2), "num_key_value_heads 2 != num_attention_heads 4: llama.cpp's olmoe"),
    ("olmoe", dict(norm_topk_prob=True), "norm_topk_prob true: llama.cpp's olmoe does not renormalise"),
    ("qwen3_moe", dict(mlp_only_layers=[0]), "mlp_only_layers [0] / decoder_sparse_step 1: llama.cpp's qwen3moe"),
    ("qwen3_moe", dict(norm_topk_prob=False), "norm_topk_prob false: llama.cpp's qwen3moe always renormalises"),
    ("qwen3_moe", dict(attention_bias=True), "attention_bias true: llama.cpp's qwen3moe has no attention output"),
    ("qwen2_moe", dict(norm_topk_prob=True), "norm_topk_prob true: llama.cpp's qwen2moe does not renormalise"),
    ("qwen2_moe", dict(use_sliding_window=True, sliding_window=16, max_window_layers=2),
     "sliding window 16: llama.cpp's qwen2moe attends to the whole context"),
    ("mixtral", dict(sliding_window=16), "sliding window 16: llama.cpp's llama attends to the whole context"),
    ("deepseek_v3", dict(rope_interleave=False), "rope_interleave false: transformers rotates halves"),
    ("deepseek_v3", dict(attention_bias=True), "attention_bias true: llama.cpp's deepseek2 has no attention biases"),
    ("deepseek_v3", dict(rope_parameters={**DEEPSEEK_YARN, "mscale": None}),
     "rope yarn with mscale None / mscale_all_dim 1.0: llama.cpp's deepseek2"),
    ("glm4_moe", dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0,
                                       "partial_rotary_factor": 0.5}), "rope linear (scaled RoPE)"),
    ("gpt_oss", dict(rope_parameters={**GPT_OSS_YARN, "truncate": False}), "rope yarn with truncate false: llama"),
    ("gpt_oss", dict(swiglu_limit=5.0), "swiglu_alpha 1.702 / swiglu_limit 5.0: llama.cpp's gpt-oss experts"),
    ("granitemoe", dict(hidden_act="gelu"), "hidden_act gelu: llama.cpp's granitemoe experts are SiLU-gated"),
])
def test_what_llama_cpp_would_run_differently_is_refused_before_writing(family, changes, reason, tulu_tokenizer,
                                                                         tmp_path):
    folder = tmp_path / "run"
    family_config(family, tulu_tokenizer, **changes).save_pretrained(folder)  # refused before weights are read
    tulu_tokenizer.save_pretrained(folder)
    with pytest.raises(ExportError) as refused:
        export_gguf(folder, tmp_path / "m.gguf", "f32")
    message = str(refused.value)
    assert reason in message and "\n" not in message
    assert message.endswith("; llama.cpp would run this model differently from transformers")
    assert not (tmp_path / "m.gguf").exists() and not (tmp_path / "m.gguf.partial").exists()


# One family per kind of tensor transform the merged weights go through (plain, q/k permuted, MLA split, gpt_oss's
# interleaved and biased experts); the merge itself is checked for every family in tests/test_lora_merge.py.
@pytest.mark.parametrize("family", ["olmoe", "mixtral", "deepseek_v3", "gpt_oss"])
def test_a_lora_run_exports_merged_as_base_plus_adapter(family, tulu_tokenizer, tmp_path):
    """A LoRA on attention, the experts (`target_parameters` on the fused 3-D weights) and the router, all of it
    random so that every part moves the logits: the file computes base + adapter (PEFT's unmerged forward), not the
    base; the merge itself is proven by the export (adapt.model.lora.merge_proven)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    needs_llama_cpp()
    from transformers import AutoModelForCausalLM

    tiny_model(family, tulu_tokenizer).save_pretrained(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()  # knows its folder: the adapter's base
    lora = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                      **FAMILIES[family].lora_kwargs(["attention", "experts", "router"]))
    adapted = get_peft_model(copy.deepcopy(base), lora)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "modules_to_save" in name:  # the router's trained copy
                p.add_(torch.randn_like(p) * 0.2)
    adapted.save_pretrained(tmp_path / "lora")  # adapter_config.json names tmp_path / "base"
    tulu_tokenizer.save_pretrained(tmp_path / "lora")
    done = export_gguf(tmp_path / "lora", tmp_path / "m.gguf", "f32")
    unmerged = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "lora").eval()
    llm = lc.open_gguf(done.path)
    try:
        worst, scale = lc.logits_difference(unmerged, tulu_tokenizer, llm)
        assert worst < 1e-4 and scale > 2
        assert lc.logits_difference(base, tulu_tokenizer, llm)[0] > 0.1  # the adapter is in the file
    finally:
        llm.close()
