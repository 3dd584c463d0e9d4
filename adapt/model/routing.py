"""Where a transformers MoE model's routers are, and the record of what they chose: the backbone that runs them,
per MoE layer the router module whose forward returns `(router_logits [T, E], top-k weights [T, K], top-k indices
[T, K])` (adapt/config/families.py), and `RoutingRecorder`, the forward hooks that capture one forward's routing.

Shared by everything that reads the routing a model really chose: the trainers' router losses and statistics
(adapt/trainers/router.py), the ESFT expert selection (adapt/model/expert_selection.py) and `adapt analyze`
(adapt_eval.routing). It sits in the model layer so that all of them import it from below.

The load ratio, one definition for training's logs (router_stats.jsonl, TensorBoard) and the analysis
(analysis.json): per MoE layer, the busiest expert's tokens divided by the idlest expert's, the idlest counted as at
least one token (`load_ratio`). 1.0 is perfect balance. An expert that got no tokens gives the busiest expert's token
count, a large finite number rather than infinity or null (JSON and TensorBoard take it, and a mean over layers or
windows stays defined); which experts got nothing is reported beside it (the analysis's `dead_experts`, training's
collapse checks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial

import torch

from adapt.parallel.autoep import routing_sources


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


def load_ratio(tokens_per_expert_E: torch.Tensor) -> torch.Tensor:
    """Busiest / idlest expert's tokens along the last dimension, the idlest counted as at least 1 (module note)."""
    counts = tokens_per_expert_E.double()
    return counts.max(dim=-1).values / counts.min(dim=-1).values.clamp(min=1)


@dataclass
class RouterCapture:
    """One forward's routing, per MoE layer in order: the model's layer number, the router logits [T, E] and the
    experts it chose [T, K] (None where only the logits are known, e.g. hand-built logits in a test: the softmax
    top-k is counted then). `token_mask_T` marks real tokens (None: all are)."""

    layer_ids: list[int]
    logits: list[torch.Tensor]
    indices: list[torch.Tensor] | None
    token_mask_T: torch.Tensor | None

    def choices(self) -> dict[int, torch.Tensor]:
        """Layer number -> the chosen experts [T, K]."""
        return dict(zip(self.layer_ids, self.indices or []))


class RoutingRecorder:
    """The routing of the first backbone forward between `start()` and `stop()`: per MoE layer its number, the
    router logits [T, E] (with their graph, for the losses) and the experts the router chose [T, K], plus the padding
    mask of that forward. Only the first forward is kept: in training that is the policy forward (a DPO reference
    runs after it). `attach()` hooks the routers the model holds when it is called: the family's router modules at
    construction, DeepSpeed AutoEP's once it has replaced the MoE blocks (adapt.parallel.autoep.routing_sources:
    its `gate` gives the logits, its router the chosen experts). `remove()` takes every hook off again."""

    def __init__(self, backbone: torch.nn.Module):
        self.backbone = backbone
        self._on = False
        self._collecting: dict | None = None
        self._captured: RouterCapture | None = None
        self._pending_logits: dict[int, torch.Tensor] = {}
        self._hooked: list[torch.nn.Module] = []
        self._handles = [backbone.register_forward_pre_hook(self._start_forward, with_kwargs=True),
                         backbone.register_forward_hook(self._end_forward)]
        self.attach()

    def start(self) -> None:
        self._captured, self._collecting, self._on = None, None, True

    def stop(self) -> RouterCapture | None:
        captured, self._captured = self._captured, None
        self._on, self._collecting = False, None
        self._pending_logits.clear()
        return captured

    def attach(self) -> bool:
        """Hook the routers not hooked yet (marked on the module itself: a freed router's id can be reused). True
        when the model holds AutoEP's routers."""
        for layer_id, module in router_modules(self.backbone):
            if self._mark(module):
                self._handles.append(module.register_forward_hook(partial(self._record_router, layer_id)))
        autoep = routing_sources(self.backbone)
        for layer_id, gate, router in autoep:
            if self._mark(router):
                self._handles.append(gate.register_forward_hook(partial(self._record_logits, layer_id)))
                self._handles.append(router.register_forward_hook(partial(self._record_choice, layer_id)))
        return bool(autoep)

    def remove(self) -> None:
        """Take the hooks off the model (a model analysed and then dropped, or hooked by another recorder later)."""
        for handle in self._handles:
            handle.remove()
        for module in self._hooked:
            module._adapt_recorded = False
        self._handles, self._hooked = [], []

    def _mark(self, module: torch.nn.Module) -> bool:
        if getattr(module, "_adapt_recorded", False):
            return False
        module._adapt_recorded = True
        self._hooked.append(module)
        return True

    def _start_forward(self, module, args, kwargs):
        if self._on and self._captured is None and self._collecting is None:
            self._collecting = {"mask": kwargs.get("attention_mask"), "layers": [], "logits": [], "indices": []}

    def _add(self, layer_id, logits_TE, index_TK):
        self._collecting["layers"].append(layer_id)
        self._collecting["logits"].append(logits_TE)
        self._collecting["indices"].append(index_TK)

    def _record_router(self, layer_id, module, args, output):
        if self._collecting is not None:  # (router_logits [T, E], top-k weights, top-k indices [T, K])
            self._add(layer_id, output[0], output[2])

    def _record_logits(self, layer_id, module, args, output):  # AutoEP's router.gate: the logits [T, E]
        if self._collecting is not None:
            self._pending_logits[layer_id] = output

    def _record_choice(self, layer_id, module, args, output):  # AutoEP's router: (weights, chosen [T, K], counts)
        if self._collecting is not None:
            self._add(layer_id, self._pending_logits.pop(layer_id), output[1])

    def _end_forward(self, module, args, output):
        collected, self._collecting = self._collecting, None
        if collected is not None and collected["logits"]:
            mask = collected["mask"] if collected["mask"] is not None and collected["mask"].dim() == 2 else None
            self._captured = RouterCapture(collected["layers"], collected["logits"], collected["indices"], mask)
