"""Where a transformers MoE model's routers are: the backbone that runs them and, per MoE layer, the router module
whose forward returns `(router_logits [T, E], top-k weights [T, K], top-k indices [T, K])` (adapt/config/families.py).

Shared by everything that reads the routing a model really chose: the trainers' router losses and statistics
(adapt/trainers/router.py), the ESFT expert selection (adapt/model/expert_selection.py) and `adapt analyze`
(adapt_eval.routing). It sits in the model layer so that all of them import it from below.
"""

from __future__ import annotations

import re

import torch


def find_backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose output carries `router_logits` (the `base_model` of an HF `...ForCausalLM`)."""
    for module in model.modules():
        base = getattr(module, "base_model", None)
        if isinstance(base, torch.nn.Module) and getattr(base, "base_model", None) is base:
            return base
    raise ValueError(f"{type(model).__name__} has no HF backbone (`base_model`) to record router logits from")


def router_modules(backbone: torch.nn.Module) -> list[tuple[int, torch.nn.Module]]:
    """(layer number, router module) for each MoE layer: the modules of the class the model records
    `router_logits` from (transformers' `_can_record_outputs`), numbered by the `layers.N.` in their name."""
    recorders = getattr(backbone, "_can_record_outputs", None) or {}
    recorders = recorders.get("router_logits") or []
    recorders = recorders if isinstance(recorders, (list, tuple)) else [recorders]
    classes = tuple(r.target_class for r in recorders if getattr(r, "target_class", None) is not None)
    found = []
    for name, module in backbone.named_modules():
        if classes and isinstance(module, classes):
            layer = re.search(r"layers\.(\d+)\.", name + ".")
            found.append((int(layer.group(1)) if layer else len(found), module))
    return found
