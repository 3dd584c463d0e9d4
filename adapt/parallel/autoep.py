"""Expert parallelism for OLMoE through DeepSpeed AutoEP, and the way back to the plain transformers layout.

Design note (what DeepSpeed 0.19.8 does, measured on the CPU with 2 gloo processes):
- AutoEP replaces each `model.layers.i.mlp` (router + fused experts) with an `AutoEPMoELayer` whose experts are
  split over `autoep_size` ranks and exchanged with all-to-all. No OLMoE preset ships, so `register_olmoe_preset`
  adds one that keeps OLMoE's routing exactly: softmax scores, top-k, *no* renormalisation of the top-k weights,
  dropless, weights applied after the expert ("post"), no gate bias and no bias-based balancing.
- AutoEP removes `OlmoeTopKRouter`, the module transformers records `router_logits` from, so the load-balancing
  loss (and our z-loss) would have nothing to work on. `keep_router_logits` points the model's recorder at the
  AutoEP router's `gate` linear layer as well, whose output is the same raw logits. (DeepSpeed's own adapter for
  this crashes on transformers 5.23.)
- In the AutoEP module tree experts are `experts.w1/w3` (the gate and up halves of `gate_up_proj`) and `experts.w2`
  (`down_proj`), each holding only this rank's experts, and the router is `router.gate`. `hf_state_dict` gathers
  every rank's experts and renames everything back, so a saved run loads with `OlmoeForCausalLM.from_pretrained`.
"""

from __future__ import annotations

import re

import torch

PRESET = "olmoe"


def register_olmoe_preset() -> None:
    """Make `"preset_model": "olmoe"` available to AutoEP (idempotent; needed in every process before
    `deepspeed.initialize`)."""
    from deepspeed.module_inject.auto_ep_presets import registry
    from deepspeed.module_inject.auto_ep_presets.base import MoEModelPreset

    if PRESET in registry.PRESET_MODELS:
        return
    registry.PRESET_MODELS[PRESET] = MoEModelPreset(
        moe_layer_pattern=r"model\.layers\.\d+\.mlp", router_pattern="gate", experts_pattern="experts",
        expert_storage="fused_3d", expert_w1="gate_up_proj", expert_w2="down_proj", expert_w3=None,
        num_experts_attr="num_experts", top_k_attr="num_experts_per_tok",
        score_func="softmax", score_apply="post", route_norm=False, gate_bias=False,
        preset_adapter="default", hf_model_types=("olmoe",))


def expert_parallel_section(size: int) -> dict:
    return {"enabled": True, "autoep_size": size, "preset_model": PRESET, "route_norm": False}


def keep_router_logits(model) -> None:
    """Record router logits from the HF router or, once AutoEP has swapped the block, its `router.gate`."""
    from transformers.models.olmoe.modeling_olmoe import OlmoeTopKRouter
    from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY, OutputRecorder

    inner = model.model
    flags = dict(_CAN_RECORD_REGISTRY.get(inner) or {})
    flags["router_logits"] = [OutputRecorder(OlmoeTopKRouter, index=0),
                              OutputRecorder(torch.nn.Linear, index=0, layer_name="mlp.router.gate")]
    _CAN_RECORD_REGISTRY[inner] = flags
    # transformers installs its recording hooks once, on the first forward; reinstall on the next one so a model
    # that already ran (or whose blocks AutoEP has since replaced) records from the current modules.
    inner._output_capturing_hooks_installed = False


def is_autoep(model) -> bool:
    return any(type(m).__name__ == "AutoEPMoELayer" for m in model.modules())


EXPERT = re.compile(r"^(.*\.mlp)\.experts\.(w1|w2|w3)$")


def hf_state_dict(model, ep_size: int) -> dict[str, torch.Tensor]:
    """The full model in transformers' OLMoE layout, on every rank (a collective: call it on all ranks).

    Expert-parallel groups are consecutive ranks (DeepSpeed's layout), so ranks 0..ep_size-1 together hold every
    expert once, rank r the r-th slice.
    """
    import torch.distributed as dist

    local = _local_state(model)
    world = dist.get_world_size() if dist.is_initialized() else 1
    out: dict[str, torch.Tensor] = {}
    for key in sorted(local):
        tensor = local[key]
        match = EXPERT.match(key)
        if match and world > 1:
            parts = [torch.empty_like(tensor) for _ in range(world)]
            dist.all_gather(parts, tensor.contiguous())
            tensor = torch.cat(parts[:ep_size], dim=0)  # [E_local, ...] slices in expert order
        out[key] = tensor
    return _rename(out)


def _local_state(model) -> dict[str, torch.Tensor]:
    """This rank's full (not ZeRO-3-partitioned) parameters: gathered for the copy when ZeRO-3 shards them."""
    params = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not params:
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _rename(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    hf: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        match = EXPERT.match(key)
        if match is None:
            hf[key.replace(".mlp.router.gate.", ".mlp.gate.")] = tensor
            continue
        prefix, which = match.groups()
        if which == "w2":
            hf[f"{prefix}.experts.down_proj"] = tensor  # [E, H, I]
        elif which == "w1":  # gate rows first, then up: transformers' fused gate_up_proj [E, 2I, H]
            hf[f"{prefix}.experts.gate_up_proj"] = torch.cat([tensor, state[f"{prefix}.experts.w3"]], dim=1)
    return hf
