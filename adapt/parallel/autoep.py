"""Expert parallelism through DeepSpeed AutoEP for every family it can run exactly, and the way back to the plain
transformers layout.

Design note (DeepSpeed 0.19.8, transformers 5.23, measured on the CPU with 2 gloo processes; the parity tests are
tests/test_expert_parallel.py):
- AutoEP replaces each MoE block (router + fused experts [+ shared expert]) with an `AutoEPMoELayer` whose experts
  are split over `autoep_size` ranks and exchanged with all-to-all. Its router (`TokenChoiceTopKRouter`) computes
  softmax or sigmoid scores, the score-correction bias and group-limited choice (DeepSeek-V3), the top-k, optional
  renormalisation and a route scale; the experts are SwiGLU; a shared expert is kept as it is, with its sigmoid
  gate. That covers olmoe, qwen3_moe, qwen2_moe, mixtral, deepseek_v3, glm4_moe and granitemoe: in float32 the
  converted model is transformers' to 2e-7; in bfloat16 within one bfloat16 step, because olmoe, the Qwen families
  and granitemoe round the top-k weights to bfloat16 before weighting the experts and AutoEP keeps them in float32
  (mixtral, deepseek_v3 and glm4_moe are bit-exact). One config setting AutoEP does not apply, Mixtral's
  `router_jitter_noise`, is refused (adapt/config/families.py).
- DeepSpeed's own presets do not serve transformers 5.23: its qwen3_moe preset (which also claims qwen2_moe) and its
  mixtral preset crash while retargeting transformers' router-logit recorder (`TypeError: _CanRecordRegistry.get()
  takes 2 positional arguments but 3 were given`); there is none for olmoe, glm4_moe or granitemoe (its deepseek_v3
  preset runs). `register_presets` registers one preset per family, built from the family table
  (adapt/config/families.py) with DeepSpeed's default adapter (no recorder retargeting), ahead of DeepSpeed's, so
  AutoEP's own detection by `model.config.model_type` picks ours. No DeepSpeed code is patched: the preset registry
  is the extension point DeepSpeed's presets themselves use.
- What each preset leaves to the model config: `norm_topk_prob` (AutoEP reads it; families without it use the
  preset's `route_norm`, true for Mixtral, which renormalises its top-k, and Granite, whose softmax over the top-k
  logits is the same function),
  `n_group`/`topk_group` and `routed_scaling_factor` (AutoEP back-fills them from the config).
- AutoEP removes the family's router module, the class transformers records `router_logits` from. The toolkit does
  not use transformers' recording for the router losses: `routing_sources` names, per MoE layer, the module whose
  output is the logits and the one whose output is the chosen experts, for the transformers block and for AutoEP's
  (`router.gate` and `router`), and the trainer hooks those (adapt/trainers/router.py). Statistics therefore count
  the experts AutoEP really chose, bias and groups included.
- AutoEP's gate runs in the model dtype. Where transformers computes a family's router logits in float32 (deepseek_v3,
  glm4_moe: `router_float32` in the table), `match_router_precision` makes the gate do the same once AutoEP has
  converted the model; in bfloat16 the expert-parallel model then equals transformers' (tested with ep_size 1), where
  otherwise near-tied experts could be chosen differently.
- In AutoEP's module tree the experts are `experts.w1/w3` (the gate and up halves of `gate_up_proj`) and
  `experts.w2` (`down_proj`), each holding only this rank's experts; the router is `router.gate` (plus the
  `router.e_score_correction_bias` buffer), the shared expert `shared_experts` and its gate `shared_experts_gate`.
  `hf_state_dict` gathers each layer's experts within its expert-parallel group on their device, copies the model to
  host memory on rank 0 only, renames everything back to the family's names and checks the result holds exactly the
  tensors of the transformers model, so a saved run loads with `from_pretrained`.
- Not exact, so refused by the recipe check (the family's `expert_parallel` reason): gpt_oss, whose biased,
  interleaved experts AutoEP's GroupedExperts cannot hold.
"""

from __future__ import annotations

import re
import types

import torch
import torch.nn.functional as F

from adapt.config.families import FAMILIES, Family, family

PRESET_PREFIX = "adapt_"


def verified_families() -> list[Family]:
    return [f for f in FAMILIES.values() if f.expert_parallel is None]


def preset(f: Family):
    """The AutoEP preset that reproduces `f`'s MoE block (module note)."""
    from deepspeed.module_inject.auto_ep_presets.base import MoEModelPreset

    return MoEModelPreset(
        moe_layer_pattern=rf"model\.layers\.\d+\.{f.moe_block}", router_pattern=f.router_module,
        experts_pattern="experts", expert_storage="fused_3d", expert_w1="gate_up_proj", expert_w2="down_proj",
        expert_w3=None, num_experts_attr=f.experts_attr, top_k_attr=f.top_k_attr, score_func=f.scoring,
        score_apply="post", route_norm=f.top_k_renormalized, gate_bias=False,
        has_shared_experts=bool(f.shared_expert), shared_experts_pattern=f.shared_expert,
        shared_experts_gate_pattern=f.shared_expert_gate, preset_adapter="default", hf_model_types=(f.model_type,))


def register_presets() -> None:
    """Register the toolkit's presets ahead of DeepSpeed's (idempotent; needed in every process before
    `deepspeed.initialize`). The dict is reordered in place: AutoEP's detection takes the first preset that names
    the model's `model_type`."""
    from deepspeed.module_inject.auto_ep_presets import registry

    ours = {PRESET_PREFIX + f.model_type: preset(f) for f in verified_families()}
    if list(registry.PRESET_MODELS)[:len(ours)] == list(ours):
        return
    theirs = {name: p for name, p in registry.PRESET_MODELS.items() if name not in ours}
    registry.PRESET_MODELS.clear()
    registry.PRESET_MODELS.update({**ours, **theirs})


def is_autoep(model) -> bool:
    return any(type(m).__name__ == "AutoEPMoELayer" for m in model.modules())


def describe(model) -> dict | None:
    """What AutoEP really did to the model, for the run record: the preset, the expert-parallel size, the experts each
    rank holds and the MoE layers replaced. None when no block was replaced."""
    layers = [(name, m) for name, m in model.named_modules() if type(m).__name__ == "AutoEPMoELayer"]
    if not layers:
        return None
    first = layers[0][1]
    return {"preset": first.model_family, "expert_parallel_size": first.ep_size,
            "experts_per_rank": first.num_local_experts, "layers": [name for name, _ in layers]}


def match_router_precision(model) -> int:
    """Where the family's transformers router computes its logits in float32 (module note), have each AutoEP gate
    do the same. Idempotent; returns the number of gates changed. Call it after AutoEP has converted the model."""
    f = family(model.config.get_text_config().model_type)
    if f is None or not f.router_float32:
        return 0
    changed = 0
    for module in model.modules():
        gate = getattr(getattr(module, "router", None), "gate", None)
        if type(module).__name__ == "AutoEPMoELayer" and not getattr(gate, "_adapt_float32", False):
            gate.forward = types.MethodType(_float32_linear, gate)
            gate._adapt_float32 = True
            changed += 1
    return changed


def _float32_linear(gate: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x.float(), gate.weight.float(), None if gate.bias is None else gate.bias.float())


LAYER = re.compile(r"layers\.(\d+)\.")


def routing_sources(backbone: torch.nn.Module) -> list[tuple[int, torch.nn.Module, torch.nn.Module]]:
    """For each AutoEP layer: (layer number, the module whose output is the router logits [T, E], the router whose
    forward returns (weights [T, K], chosen experts [T, K], counts [E])). Empty before AutoEP converted the model."""
    found = []
    for name, module in backbone.named_modules():
        if type(module).__name__ == "AutoEPMoELayer":
            layer = LAYER.search(name + ".")
            found.append((int(layer.group(1)) if layer else len(found), module.router.gate, module.router))
    return found


# ------------------------------------------------------------------------------------------ back to transformers

EXPERT = re.compile(r"^(.*)\.experts\.(w1|w2|w3)$")


def hf_state_dict(model) -> dict[str, torch.Tensor] | None:
    """The full model in its family's transformers layout, on rank 0 (None on the other ranks). A collective: call
    it on every rank.

    Each AutoEP layer's experts are gathered within its expert-parallel group (consecutive ranks: rank r of the group
    holds the r-th slice), on the device they live on (NCCL gathers CUDA tensors only), and only rank 0 copies the
    result to host memory: the whole model once, as a ZeRO-3 16-bit save would. Raises ValueError on rank 0 when the
    result is not exactly the transformers model's tensors (a saved folder must hold every tensor, and nothing else).
    """
    import torch.distributed as dist

    keep = not dist.is_initialized() or dist.get_rank() == 0
    out: dict[str, torch.Tensor] = {}
    with _full_parameters(model):
        for key, tensor in model.state_dict().items():
            expert = EXPERT.match(key)
            layer = model.get_submodule(expert.group(1)) if expert else None
            if layer is not None and getattr(layer, "ep_size", 1) > 1:
                parts = [torch.empty_like(tensor) for _ in range(layer.ep_size)]
                dist.all_gather(parts, tensor.contiguous(), group=layer.ep_group)
                tensor = torch.cat(parts, dim=0)  # [E_local, ...] slices in expert order
            if keep:
                out[key] = tensor.detach().to("cpu", copy=True)
    if not keep:
        return None
    f = family(model.config.get_text_config().model_type)
    state = to_transformers_names(out, f)
    _check_complete(model.config, state)
    return state


def _full_parameters(model):
    """ZeRO-3 partitions parameters: gather them for the copy (a no-op context otherwise)."""
    import contextlib

    params = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def to_transformers_names(state: dict[str, torch.Tensor], f: Family) -> dict[str, torch.Tensor]:
    """AutoEP's names and expert halves -> the family's transformers names and fused expert tensors."""
    block = re.compile(rf"^(.*\.{re.escape(f.moe_block)})\.(router\.gate|router|shared_experts_gate|shared_experts)\.")
    renamed = {"router.gate": f.router_module, "router": f.router_module, "shared_experts": f.shared_expert,
               "shared_experts_gate": f.shared_expert_gate}
    hf: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        expert = EXPERT.match(key)
        if expert:
            prefix, which = expert.groups()
            if which == "w2":
                hf[f"{prefix}.experts.down_proj"] = tensor  # [E, H, I]
            elif which == "w1":  # gate rows first, then up: transformers' fused gate_up_proj [E, 2I, H]
                hf[f"{prefix}.experts.gate_up_proj"] = torch.cat([tensor, state[f"{prefix}.experts.w3"]], dim=1)
            continue
        part = block.match(key)
        if part:
            prefix, name = part.groups()
            key = f"{prefix}.{renamed[name]}.{key[part.end():]}"
        hf[key] = tensor
    return hf


def _check_complete(config, state: dict[str, torch.Tensor]) -> None:
    """The gathered state has exactly the tensors, and shapes, of the transformers model built from `config`."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        expected = AutoModelForCausalLM.from_config(config).state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or extra or shapes:
        raise ValueError(f"the expert-parallel model does not convert back to {type(config).__name__}'s layout: "
                         f"missing {missing[:3]}, unexpected {extra[:3]}, shapes differ for {shapes[:3]}")
