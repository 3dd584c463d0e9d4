"""Keep an MoE's router losses active inside TRL's trainers, for every supported family.

Design note. The mixin records each forward's routing with hooks: one on every router module (the class the model
records `router_logits` from; its forward returns the logits and the experts it chose), and one around the backbone
(`model.base_model`, e.g. `OlmoeModel`) for the `attention_mask` that marks padding and for the end of the forward.
From that record it adds the weighted router losses and counts the routing statistics:

    compute_loss ─┬─ super().compute_loss(...)      # TRL: the main loss only (its own aux-loss path is off)
                  │     └─ backbone forward ──hooks──> captured (per MoE layer: its number, logits, chosen experts)
                  └─ + load_balancing_weight * lb_loss + z_loss_weight * z_loss   (families where both are defined)

The load-balancing term is the model's own formula (transformers' `load_balancing_loss_func`, which each softmax
family copies), computed here for every family rather than by TRL, whose helper reads `config.num_experts` and
fails on families that name it otherwise. Under `loss_reduction: mean` the terms are scaled as TRL scales its own aux
loss (divided by the accumulation steps when TRL leaves accumulation to the loss); under `sum` (SFT only) they are
added undivided to the micro-batch's summed loss, and the total is divided by the accumulation steps here
(`loss_is_scaled_for_ga`), so the gradient DDP/ZeRO average over ranks is sum over the global batch /
(accumulation x processes), the one open-instruct's `--reduce_loss sum` gives under DeepSpeed.
tests/test_loss_reduction.py checks both against a hand-written reference under 2 processes.

Only the first forward inside one `compute_loss` is kept: that is the policy forward in both SFT and DPO. A
separate DPO reference model has no hooks, and a PEFT reference (adapters disabled) runs after the policy. Under
expert parallelism DeepSpeed replaces the MoE blocks inside `deepspeed.initialize`, after this trainer is built, so
the first `compute_loss` after that hooks AutoEP's routers (once; each later step finds them hooked): AutoEP's router
gives the logits from its `gate` and the chosen experts from its own forward (`adapt.parallel.autoep.routing_sources`),
so losses and statistics come from the same record as without expert parallelism.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from functools import partial

import torch

from adapt.config.families import family
from adapt.losses.router import RouterCapture, RouterStats, load_balancing_loss, router_stats, router_z_loss
from adapt.parallel.autoep import match_router_precision, routing_sources


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


class RoutingRecorder:
    """The routing of the first backbone forward between `start()` and `stop()`: per MoE layer its number, the
    router logits [T, E] (with their graph, for the losses) and the experts the router chose [T, K], plus the padding
    mask of that forward. `attach()` hooks the routers the model holds when it is called: the family's router
    modules at construction, AutoEP's once DeepSpeed has replaced the blocks (module note)."""

    def __init__(self, backbone: torch.nn.Module):
        self.backbone = backbone
        self._on = False
        self._collecting: dict | None = None
        self._captured: RouterCapture | None = None
        self._pending_logits: dict[int, torch.Tensor] = {}
        backbone.register_forward_pre_hook(self._start_forward, with_kwargs=True)
        backbone.register_forward_hook(self._end_forward)
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
            if not getattr(module, "_adapt_recorded", False):
                module._adapt_recorded = True
                module.register_forward_hook(partial(self._record_router, layer_id))
        autoep = routing_sources(self.backbone)
        for layer_id, gate, router in autoep:
            if not getattr(router, "_adapt_recorded", False):
                router._adapt_recorded = True
                gate.register_forward_hook(partial(self._record_logits, layer_id))
                router.register_forward_hook(partial(self._record_choice, layer_id))
        return bool(autoep)

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


class RouterLossMixin:
    """Mix in before a TRL trainer: `class AdaptSFTTrainer(RouterLossMixin, SFTTrainer)`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.router = self.args.router
        text_config = self.model.config.get_text_config()
        self.family = family(getattr(text_config, "model_type", None))
        self._is_moe = self.family is not None
        self._stats: RouterStats | None = None
        self._router_metrics = defaultdict(list)
        if self._is_moe:
            self._top_k = getattr(text_config, self.family.top_k_attr)
            self._num_experts = getattr(text_config, self.family.experts_attr)
            self._recorder = RoutingRecorder(find_backbone(self.model))
            self._awaiting_autoep = self.args.parallel.expert_parallel_size > 1

    def _router_loss_divisor(self, num_items_in_batch) -> int:
        """How the trainer scales a per-micro-batch mean for gradient accumulation (TRL's SFT scales it itself)."""
        return 1

    # ------------------------------------------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        summed = getattr(self.args, "loss_reduction", "mean") == "sum"
        if summed:
            # TRL divides its token sum by `num_items_in_batch`; 1 keeps the sum (and under `sum` the recipe turns
            # `average_tokens_across_devices` off, so TRL does not multiply it by the process count either).
            num_items_in_batch = 1
        if self._is_moe:
            if self._awaiting_autoep:  # once: the first step after DeepSpeed has converted the model
                self._adopt_autoep()
            self._recorder.start()
        try:
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
        finally:
            captured = self._recorder.stop() if self._is_moe else None
        if self._is_moe and captured is None and model.training:
            raise RuntimeError("the policy forward ran no router the toolkit records, so the router losses would be "
                               "silently left out (adapt/trainers/router.py)")
        loss = result[0] if return_outputs else result
        if captured is not None:
            loss = loss + self._router_terms(captured, summed=summed, num_items_in_batch=num_items_in_batch)
        if summed and model.training:
            # open-instruct under DeepSpeed: each micro-batch's total divided by the accumulation steps (DDP and ZeRO
            # then average over ranks), so the step's gradient is sum over the global batch / (accum x processes).
            loss = loss / self.current_gradient_accumulation_steps
        return (loss, result[1]) if return_outputs else loss

    def _adopt_autoep(self) -> None:
        """AutoEP converts the policy inside `deepspeed.initialize`, after this trainer is built (and TRL's DPO
        reference, built from the same DeepSpeed config, before it): hook its routers and have both route in the
        dtype transformers uses (adapt/parallel/autoep.py)."""
        if not self._recorder.attach():
            return
        for net in (self.model, getattr(self, "ref_model", None)):
            if net is not None:
                match_router_precision(getattr(net, "module", net))
        self._awaiting_autoep = False

    def _router_terms(self, captured: RouterCapture, *, summed: bool, num_items_in_batch) -> torch.Tensor:
        """The weighted router losses of one micro-batch, to add to its main loss (module note for the scaling).
        Families without router losses (sigmoid routers: the recipe check refuses non-zero weights) add nothing and
        log only the routing statistics."""
        z_loss = lb_loss = None
        terms = torch.zeros((), device=captured.logits[0].device)
        if self.family.router_losses:
            z_loss = router_z_loss(captured.logits, captured.token_mask_T)
            lb_loss = load_balancing_loss(captured.logits, self._num_experts, self._top_k, captured.token_mask_T)
            terms = self.router.load_balancing_weight * lb_loss + self.router.z_loss_weight * z_loss
            if not summed:
                terms = terms / self._router_loss_divisor(num_items_in_batch)
        self._record_router_metrics(captured, z_loss, lb_loss)
        return terms

    @torch.no_grad()
    def _record_router_metrics(self, captured: RouterCapture, z_loss, lb_loss) -> None:
        # Kept as device tensors and reduced only when logged: an `.item()` or a gather here would stall the GPU on
        # every micro-step.
        mode = "train" if self.model.training else "eval"
        if z_loss is not None:
            self._router_metrics[mode + ":z_loss"].append(z_loss.detach().float())
            self._router_metrics[mode + ":aux_loss"].append(lb_loss.detach().float())
        if self.router.log_stats and mode == "train":
            stats = router_stats(captured, self._top_k, self.family.scoring)
            self._stats = stats if self._stats is None else self._stats + stats

    # ------------------------------------------------------------------------------------------------------- logs
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        prefix = "eval_" if mode == "eval" else ""
        for key in sorted(k for k in self._router_metrics if k.startswith(mode + ":")):  # same order on every rank
            local_mean = torch.stack(self._router_metrics.pop(key)).mean()
            logs[prefix + key.split(":", 1)[1]] = self.accelerator.gather_for_metrics(local_mean).mean().item()
        if mode == "train" and self._stats is not None:
            logs.update(self._flush_router_stats())
        super().log(logs, start_time)

    def _flush_router_stats(self) -> dict[str, float]:
        stats, self._stats = self._stats, None
        if self.accelerator.num_processes > 1:
            device = self.accelerator.device
            stats = RouterStats(stats.layer_ids,
                                self.accelerator.reduce(stats.tokens_per_expert_LE.to(device), "sum").cpu(),
                                self.accelerator.reduce(stats.entropy_sum_L.to(device), "sum").cpu(),
                                self.accelerator.reduce(torch.tensor(stats.num_tokens, device=device), "sum").item())
        summary = stats.summary()
        if self.accelerator.is_main_process:
            os.makedirs(self.args.output_dir, exist_ok=True)
            with open(os.path.join(self.args.output_dir, "router_stats.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": self.state.global_step, **summary}) + "\n")
        logs = {}
        for layer, ratio, entropy in zip(summary["layers"], summary["load_ratio"], summary["entropy"]):
            logs[f"router/layer_{layer}/load_ratio"] = ratio
            logs[f"router/layer_{layer}/entropy"] = entropy
        logs["router/load_ratio_max"] = max(summary["load_ratio"])
        logs["router/entropy_mean"] = sum(summary["entropy"]) / len(summary["entropy"])
        return logs
