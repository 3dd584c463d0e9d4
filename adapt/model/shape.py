"""A model that cannot be built, or cannot run, is refused before any weight exists.

The family's config class accepts many values its model then fails on: a hidden size its heads do not divide fails
in the first forward with a shape error, a hidden size of 1e6 tries a 4 TB allocation, 3 key/value heads for 4 query
heads fail in attention. Each rule below reads the *built* config (the family's config class, so its defaults and
derived fields count, not a hand list of keys per family) and names the key and the fix:

- attention: heads divide the hidden size where the head size is derived from it; key/value heads divide the heads;
  the rotary part of a head is even (RoPE rotates pairs);
- sizes: every hidden/intermediate/vocabulary size, head size and low rank is at least 1, a sliding window in use
  too; the special token ids lie inside the vocabulary (the embedding's padding row);
- routing: top-k within the experts, and for grouped routing (DeepSeek-V3, GLM-4-MoE) groups that divide the experts,
  `topk_group <= n_group`, and enough experts in the chosen groups for top-k;
- grouped GEMM experts (transformers' default `grouped_mm` and the toolkit's `adapt_fused`) need each expert matrix row
  in multiples of 16 bytes: hidden and expert intermediate sizes a multiple of 8;
- structure, from the model class itself built on the `meta` device (shapes only, no memory): it constructs, has at
  least one MoE layer (a config whose layers are all dense has no router to train), and its parameter count;
- memory: parameters x bytes of the weights alone (the least any layout holds somewhere) against this machine's memory
  (RAM and GPUs) times the launch's nodes. Refused when running a stage; `adapt check` on another machine only says it.

tests/test_fuzz.py builds and runs every model config of its fuzz set that these rules accept.
"""

from __future__ import annotations

import os

import torch
import transformers

from adapt.config.families import FAMILIES, Family
from adapt.model.routing import find_backbone, router_modules

POSITIVE_SUFFIXES = ("hidden_size", "intermediate_size", "vocab_size", "head_dim", "lora_rank", "hidden_layers",
                     "attention_heads", "key_value_heads")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GROUPED_EXPERTS = (None, "grouped_mm", "adapt_fused")

Problem = tuple[str, str, str]  # (recipe key, what is wrong, the fix)


def recipe_config(section, tokenizer=None):
    """The transformers config a recipe's `model.config` builds (as adapt.model.loading.build_model does)."""
    f = FAMILIES[section.architecture]
    fields = dict(section.config)
    if tokenizer is not None:
        fields.setdefault("vocab_size", len(tokenizer))
        for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
            fields.setdefault(name, getattr(tokenizer, name))
    return getattr(transformers, f.config_class)(**fields)


def config_problems(config, f: Family, prefix: str, experts_implementation: str | None) -> list[Problem]:
    """The static rules of the module note, on a built config; `prefix` names where its values come from."""
    c = config.get_text_config()
    problems: list[Problem] = []

    def add(key, why, fix):
        problems.append((f"{prefix}{key}", why, fix))

    values = c.to_dict()
    for key, value in sorted(values.items()):
        if key.endswith(POSITIVE_SUFFIXES) and isinstance(value, int) and not isinstance(value, bool) and value < 1:
            add(key, f"must be at least 1, got {value}", "give a positive size")
    if problems:
        return problems
    hidden, heads, kv_heads = c.hidden_size, c.num_attention_heads, getattr(c, "num_key_value_heads", None) or 0
    head_dim = getattr(c, "head_dim", None)
    if head_dim is None and hidden % heads:
        add("hidden_size", f"{hidden} is not divisible by num_attention_heads {heads} (the head size is derived from "
            "it)", f"a multiple of {heads}, e.g. {heads * max(1, round(hidden / heads))}")
    if kv_heads and heads % kv_heads:
        add("num_key_value_heads", f"{kv_heads} key/value heads cannot be shared evenly by {heads} attention heads",
            f"a divisor of num_attention_heads ({heads})")
    rope_head_dim = getattr(c, "qk_rope_head_dim", None)
    if rope_head_dim is not None and head_dim not in (None, rope_head_dim):  # DeepSeek's MLA: head_dim is that
        add("head_dim", f"{head_dim} disagrees with qk_rope_head_dim {rope_head_dim}, the rotary head size this "
            "attention uses as head_dim", "drop head_dim (the config derives it)")
    rotary = int((head_dim or hidden // heads) * getattr(c, "partial_rotary_factor", 1.0))
    if rope_head_dim is None and rotary % 2:
        add("hidden_size" if head_dim is None else "head_dim", f"the rotary part of each head has {rotary} dimensions; "
            "RoPE rotates pairs", "an even head size (hidden_size / num_attention_heads)")
    window = getattr(c, "sliding_window", None)
    if isinstance(window, int) and window < 1 and getattr(c, "use_sliding_window", True):
        add("sliding_window", f"must be at least 1 or null, got {window}", "give a window, or null for none")
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        ids = getattr(c, name, None)
        for token in ids if isinstance(ids, (list, tuple)) else [ids]:
            if isinstance(token, int) and not 0 <= token < c.vocab_size:
                add(name, f"{token} is outside the vocabulary of {c.vocab_size}", "a token id below vocab_size")
    problems += _routing_problems(c, f, prefix)
    if experts_implementation in GROUPED_EXPERTS:
        expert_size = getattr(c, "moe_intermediate_size", None) or c.intermediate_size
        for key, size in (("hidden_size", hidden), ("moe_intermediate_size" if getattr(c, "moe_intermediate_size", None)
                                                    else "intermediate_size", expert_size)):
            if size % 8:
                add(key, f"{size} is not a multiple of 8: grouped-GEMM experts (transformers' grouped_mm, the "
                    "toolkit's adapt_fused) need rows in multiples of 16 bytes", "a multiple of 8, or "
                    "model.experts_implementation: eager")
    return problems


def _routing_problems(c, f: Family, prefix: str) -> list[Problem]:
    experts, top_k = getattr(c, f.experts_attr), getattr(c, f.top_k_attr)
    if top_k > experts:
        return [(f"{prefix}{f.top_k_attr}", f"routes each token to {top_k} experts of {experts}",
                 f"choose {f.top_k_attr} <= {f.experts_attr}")]
    groups, chosen = getattr(c, "n_group", None), getattr(c, "topk_group", None)
    if not groups:
        return []
    if experts % groups:
        return [(f"{prefix}n_group", f"{experts} experts cannot form {groups} equal groups",
                 f"a divisor of {f.experts_attr} ({experts})")]
    if chosen is not None and not 1 <= chosen <= groups:
        return [(f"{prefix}topk_group", f"chooses {chosen} of {groups} expert groups", "between 1 and n_group")]
    if chosen is not None and top_k > chosen * experts // groups:
        return [(f"{prefix}{f.top_k_attr}", f"{top_k} experts cannot come from {chosen} group(s) of "
                 f"{experts // groups}", "raise topk_group or lower the top-k")]
    return []


def meta_build(config, f: Family) -> tuple[int, int]:
    """(parameters, MoE layers) of the family's model built on the meta device: shapes only, no memory, no init.
    Raises what the model class raises."""
    with torch.device("meta"):
        model = getattr(transformers, f.model_class)(config)
    parameters = sum(p.numel() for p in model.parameters())  # tied weights are one parameter
    return parameters, len(router_modules(find_backbone(model)))


def machine_memory() -> tuple[int, str]:
    """Bytes of memory the launch has for weights (this machine's RAM and GPUs, times its nodes), and in words."""
    import psutil

    ram = psutil.virtual_memory().total
    gpus = [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())]
    world, local = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_WORLD_SIZE", 0) or 0)
    nodes = max(1, world // local) if local else 1
    words = f"{ram / 2**30:.0f} GiB RAM" + (f" + {len(gpus)} GPU(s) {sum(gpus) / 2**30:.0f} GiB" if gpus else "")
    return (ram + sum(gpus)) * nodes, words + (f", x {nodes} nodes" if nodes > 1 else "")


def weight_bytes(parameters: int, dtype: str, config) -> int:
    if dtype not in DTYPE_BYTES:  # "auto": the dtype the config was saved in, else transformers' float32
        dtype = str(getattr(config, "dtype", None) or "float32").removeprefix("torch.")
    return parameters * DTYPE_BYTES.get(dtype, 4)


def model_problems(section, config, prefix: str, *, enforce_memory: bool) -> tuple[list[Problem], str | None]:
    """The problems of the module note for a `model:` section and its built config, and a note on memory when it is
    not enforced (`adapt check` may validate a cluster recipe on a laptop)."""
    f = FAMILIES.get(config.get_text_config().model_type)
    if f is None:
        return [], None  # an unsupported family is refused by adapt.config.families.check_combination
    problems = config_problems(config, f, prefix, section.experts_implementation)
    if problems:
        return problems, None
    try:
        parameters, moe_layers = meta_build(config, f)
    except Exception as e:  # what the family's model class says of this config, in one line
        return [(prefix.rstrip("."), f"{f.model_class} cannot be built from it: {' '.join(str(e).split())[:200]}",
                 "fix the field it names")], None
    if moe_layers == 0:
        return [(prefix.rstrip("."), "every layer is dense: the model has no router to train or measure",
                 "leave at least one MoE layer (num_hidden_layers, mlp_only_layers, first_k_dense_replace)")], None
    needed, (available, words) = weight_bytes(parameters, section.dtype, config), machine_memory()
    if needed <= available:
        return [], None
    why = (f"{parameters / 1e9:,.1f}B parameters need {needed / 2**30:,.0f} GiB for the weights alone; this launch has "
           f"{words}")
    if enforce_memory:
        return [(prefix.rstrip("."), why, "a smaller model config, a lower-precision model.dtype, or more nodes")], None
    return [], f"{why}: it must run on a larger machine or several nodes"
