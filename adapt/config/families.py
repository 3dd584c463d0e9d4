"""The MoE families the toolkit supports, as data: everything that differs between them, in one table.

Every module that needs to know a family reads `FAMILIES[model_type]`: the recipe check (what a family may be
combined with, refused with the reason otherwise), model loading (`model.config` builds any family), the router
losses and statistics (how the router scores), the model card. Nothing else branches on `model_type`.

What all of them share in transformers 5.23 (checked per family in tests/test_families.py): the router is one module
per MoE layer whose forward returns `(router_logits [T, E], top-k weights [T, K], top-k indices [T, K])`, the class
the model records `router_logits` from (`_can_record_outputs`). The toolkit hooks that module, so statistics count
the experts the router really chose, with the model's own layer numbers (dense layers included in the numbering).

Scoring kinds:
- `softmax`: the router's scores are softmax(logits) and the top-k is taken on them (or on the logits, the same
  order), as Switch/Mixtral/OLMoE route. The load-balancing loss is transformers' `load_balancing_loss_func` (the
  model's own formula: each of these families' copy of Mixtral's) and the router z-loss (ST-MoE) is defined.
- `sigmoid`: DeepSeek-V3-style scores sigmoid(logits) with a score-correction bias added for the choice only, and
  group-limited selection. Such a model is balanced by updating that bias between steps (auxiliary-loss-free
  balancing), not by a loss; transformers defines no auxiliary loss for it, and a softmax z-loss has no meaning for
  sigmoid scores. The toolkit keeps the published bias fixed, as DeepSeek-V3's own schedule ends pretraining (bias
  update speed 0), and refuses non-zero router-loss weights for these families.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    model_type: str  # transformers' `model_type`, also `model.architecture` in a recipe
    config_class: str  # transformers class names
    model_class: str
    experts_attr: str  # the config attribute holding the number of routed experts
    top_k_attr: str  # ... and the experts chosen per token
    scoring: str  # "softmax" or "sigmoid" (module note)
    shared_experts: bool  # an always-on expert beside the routed ones (saved and reloaded like every tensor)
    # Expert parallelism (DeepSpeed AutoEP, adapt/parallel/autoep.py): None where the toolkit's preset for the family
    # is verified exact (tests/test_expert_parallel.py), else the DeepSpeed limitation that stops it (the recipe check
    # refuses it with this reason).
    expert_parallel: str | None = None
    # Whether the toolkit's `adapt_fused` experts equal transformers' grouped_mm for this family (loss and every
    # gradient, tests/test_families.py); gpt_oss's biased, interleaved experts are a layout it does not cover.
    fused: bool = False
    # LoRA: the attention projections' module names (those a model has are adapted), and the router module's name
    # (PEFT matches it as a suffix, so qwen2_moe's `shared_expert_gate`, its shared expert's gate, comes with it)
    attention: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    router_module: str = "gate"
    # Where the MoE block's parts are, for AutoEP's preset and for the save that puts them back: the block's name in
    # a decoder layer, its shared expert and that expert's sigmoid gate ("" where the family has none).
    moe_block: str = "mlp"
    shared_expert: str = ""
    shared_expert_gate: str = ""
    # Whether the chosen experts' weights sum to 1 when the config has no `norm_topk_prob`: Mixtral renormalises the
    # top-k of its softmax, Granite takes the softmax over the top-k logits, which is the same function.
    top_k_renormalized: bool = False
    # Whether transformers computes the router logits in float32 whatever the model dtype (DeepSeek-V3, GLM-4-MoE);
    # AutoEP's gate is made to do the same (adapt/parallel/autoep.py).
    router_float32: bool = False

    def lora_targets(self, targets: list[str]) -> dict[str, dict[str, list[str]]]:
        """Per recipe selector (`peft.targets`), what PEFT adapts: `target_modules` (LoRA on linear layers),
        `target_parameters` (LoRA on the fused 3-D expert weights), `modules_to_save` (trained fully)."""
        by_selector = {
            "attention": {"target_modules": list(self.attention)},
            "experts": {"target_parameters": ["experts.gate_up_proj", "experts.down_proj"]},
            "router": {"modules_to_save": [self.router_module]},
            "embeddings": {"modules_to_save": ["embed_tokens"]},
            "lm_head": {"modules_to_save": ["lm_head"]},
        }
        return {name: by_selector[name] for name in targets}

    def lora_kwargs(self, targets: list[str]) -> dict[str, list[str]]:
        """The selectors' names merged per PEFT `LoraConfig` argument (`target_modules`, `target_parameters`,
        `modules_to_save`), each sorted and without repeats."""
        selected = self.lora_targets(targets)
        return {key: sorted({name for spec in selected.values() for name in spec.get(key, [])})
                for key in ("target_modules", "target_parameters", "modules_to_save")}

    @property
    def router_losses(self) -> bool:
        """Load-balancing and z-loss are defined (module note)."""
        return self.scoring == "softmax"


FAMILIES = {f.model_type: f for f in (
    Family("olmoe", "OlmoeConfig", "OlmoeForCausalLM", "num_experts", "num_experts_per_tok", "softmax", False,
           fused=True),
    Family("qwen3_moe", "Qwen3MoeConfig", "Qwen3MoeForCausalLM", "num_experts", "num_experts_per_tok", "softmax",
           False, fused=True),
    Family("qwen2_moe", "Qwen2MoeConfig", "Qwen2MoeForCausalLM", "num_experts", "num_experts_per_tok", "softmax",
           True, fused=True, shared_expert="shared_expert", shared_expert_gate="shared_expert_gate"),
    Family("mixtral", "MixtralConfig", "MixtralForCausalLM", "num_local_experts", "num_experts_per_tok", "softmax",
           False, fused=True, top_k_renormalized=True),
    Family("deepseek_v3", "DeepseekV3Config", "DeepseekV3ForCausalLM", "n_routed_experts", "num_experts_per_tok",
           "sigmoid", True, fused=True, shared_expert="shared_experts", router_float32=True,
           attention=("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")),
    Family("glm4_moe", "Glm4MoeConfig", "Glm4MoeForCausalLM", "n_routed_experts", "num_experts_per_tok", "sigmoid",
           True, fused=True, shared_expert="shared_experts", router_float32=True),
    Family("gpt_oss", "GptOssConfig", "GptOssForCausalLM", "num_local_experts", "num_experts_per_tok", "softmax",
           False, router_module="router",
           expert_parallel="DeepSpeed 0.19.8's AutoEP experts (GroupedExperts) have no per-expert biases, so "
                           "gate_up_proj_bias and down_proj_bias would be dropped, and read gate/up as two halves "
                           "where gpt_oss interleaves them"),
    Family("granitemoe", "GraniteMoeConfig", "GraniteMoeForCausalLM", "num_local_experts", "num_experts_per_tok",
           "softmax", False, fused=True, router_module="router", moe_block="block_sparse_moe",
           top_k_renormalized=True),
)}


def family(model_type: str | None) -> Family | None:
    return FAMILIES.get(model_type or "")


def unsupported(model_type: str | None) -> str:
    """The one-line reason a model type is refused."""
    return (f"model_type {model_type!r} is not a supported MoE family; supported: {', '.join(FAMILIES)} "
            f"(adapt/config/families.py)")


def check_combination(model_type: str | None, model, router, parallel,
                      model_config=None) -> tuple[str, str, str] | None:
    """(recipe key, why, fix) for the first thing this recipe asks that the model's family cannot do exactly (the
    sections are the recipe's `model`, `router` and `parallel`; `model_config` the model's config when known, a
    transformers config or the recipe's `model.config` mapping); None when all is well."""
    f = family(model_type)
    if f is None:
        return ("model", unsupported(model_type), "choose a model of a supported family")
    problems = combination_problems(f, load_balancing_weight=router.load_balancing_weight,
                                    z_loss_weight=router.z_loss_weight,
                                    expert_parallel_size=parallel.expert_parallel_size,
                                    experts_implementation=model.experts_implementation)
    if parallel.expert_parallel_size > 1 and model_config is not None:
        problems += expert_parallel_config_problems(model_config)
    return problems[0] if problems else None


def expert_parallel_config_problems(model_config) -> list[tuple[str, str, str]]:
    """Model-config settings that AutoEP's layer would compute differently from transformers' block."""
    if not isinstance(model_config, dict) and hasattr(model_config, "get_text_config"):
        model_config = model_config.get_text_config()

    def value(name):
        return model_config.get(name) if isinstance(model_config, dict) else getattr(model_config, name, None)

    if value("router_jitter_noise"):  # transformers multiplies the router input by noise in training; AutoEP not
        return [("parallel.expert_parallel_size", f"the model config sets router_jitter_noise="
                 f"{value('router_jitter_noise')}, which DeepSpeed's AutoEP router does not apply",
                 "use parallel.expert_parallel_size: 1, or a model config with router_jitter_noise: 0")]
    return []


def combination_problems(f: Family, *, load_balancing_weight: float, z_loss_weight: float,
                         expert_parallel_size: int, experts_implementation: str | None) -> list[tuple[str, str, str]]:
    """(recipe key, why, fix) for each setting this family cannot run exactly; empty when all is well."""
    problems = []
    if not f.router_losses:
        for key, weight, name in (("load_balancing_weight", load_balancing_weight, "load-balancing loss"),
                                  ("z_loss_weight", z_loss_weight, "router z-loss")):
            if weight:
                problems.append((f"router.{key}", f"{f.model_type} routes by sigmoid scores balanced by a score bias; "
                                 f"no {name} is defined for it (adapt/config/families.py)", f"set router.{key}: 0"))
    if expert_parallel_size > 1 and f.expert_parallel:
        problems.append(("parallel.expert_parallel_size", f"expert parallelism cannot run {f.model_type} exactly: "
                         f"{f.expert_parallel}",
                         "use parallel.expert_parallel_size: 1 (ZeRO shards the experts instead)"))
    if experts_implementation == "adapt_fused" and not f.fused:
        problems.append(("model.experts_implementation", f"adapt_fused is not verified for {f.model_type}",
                         "use grouped_mm (transformers' default)"))
    return problems
