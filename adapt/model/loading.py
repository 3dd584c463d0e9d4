"""Load the model a recipe's `model:` section names, or build a randomly initialised one from its `config`."""

from __future__ import annotations

import torch
import transformers
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from adapt.config.families import FAMILIES
from adapt.model.lora import is_adapter_folder, load_merged_adapter, load_trainable_adapter

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _impl_kwargs(section) -> dict:
    kwargs = {}
    if section.experts_implementation:
        kwargs["experts_implementation"] = section.experts_implementation
    if section.attn_implementation:
        kwargs["attn_implementation"] = section.attn_implementation
    return kwargs


def build_model(section, tokenizer: PreTrainedTokenizerBase, seed: int) -> PreTrainedModel:
    """A fresh model from `section.config`, sized to the tokenizer. The same seed always gives the same weights, so
    the demo's `base` scores describe exactly the model SFT starts from."""
    f = FAMILIES[section.architecture]
    config_cls, model_cls = getattr(transformers, f.config_class), getattr(transformers, f.model_class)
    fields = dict(section.config)
    fields.setdefault("vocab_size", len(tokenizer))
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        fields.setdefault(name, getattr(tokenizer, name))
    config = config_cls(**fields)
    torch.manual_seed(seed)
    model = model_cls._from_config(config, **_impl_kwargs(section))
    if section.dtype in DTYPES:
        model = model.to(DTYPES[section.dtype])
    return model


def load_model(section, tokenizer: PreTrainedTokenizerBase, seed: int = 0, peft=None):
    """Weights from the Hub or a local folder (`name_or_path`), or a fresh model (`config`). A LoRA run's adapter
    folder gives its base with the adapter merged in, or, under `peft.from_adapter: continue`, the PEFT model whose
    adapter keeps training."""
    if section.config is not None:
        return build_model(section, tokenizer, seed)
    dtype = DTYPES.get(section.dtype, "auto")
    if is_adapter_folder(section.name_or_path):
        kwargs = dict(revision=section.revision, trust_remote_code=section.trust_remote_code, **_impl_kwargs(section))
        if peft is not None and peft.method == "lora" and peft.from_adapter == "continue":
            return load_trainable_adapter(section.name_or_path, peft, dtype, **kwargs)
        return load_merged_adapter(section.name_or_path, dtype, **kwargs)
    return AutoModelForCausalLM.from_pretrained(section.name_or_path, revision=section.revision, dtype=dtype,
                                                trust_remote_code=section.trust_remote_code, **_impl_kwargs(section))


def load_run_model(ref: str, dtype="auto", **kwargs):
    """What a run folder (or Hub id) computes, for evaluation, analysis and scoring: a model folder as saved, an
    adapter folder merged into its base chain (adapt.model.lora.load_merged_adapter: proven, and a LoRA DPO run's
    base is its LoRA SFT run, which transformers' own adapter loading cannot follow)."""
    if is_adapter_folder(str(ref)):
        return load_merged_adapter(str(ref), dtype, **kwargs)
    return AutoModelForCausalLM.from_pretrained(ref, dtype=dtype, **kwargs)
