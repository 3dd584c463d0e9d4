"""Keep an MoE's router losses active inside TRL's trainers, for every supported family.

Design note. The mixin records each forward's routing with the hooks of adapt.model.routing.RoutingRecorder (the
capture `adapt analyze` uses too): one on every router module (the class the model
records `router_logits` from; its forward returns the logits and the experts it chose), and one around the backbone
(`model.base_model`, e.g. `OlmoeModel`) for the `attention_mask` that marks padding and for the end of the forward.
From that record it adds the weighted router losses and counts the routing statistics:

    compute_loss ─┬─ super().compute_loss(...)      # TRL: the main loss only (its own aux-loss path is off)
                  │     └─ backbone forward ──hooks──> captured (per MoE layer: its number, logits, chosen experts)
                  └─ + load_balancing_weight * lb_loss + z_loss_weight * z_loss   (families where both are defined)

The load-balancing term is the model's own formula (transformers' `load_balancing_loss_func`, which each softmax
family copies), computed here for every family rather than by TRL, whose helper reads `config.num_experts` and
fails on families that name it otherwise. How the main loss and the terms are scaled (`loss_reduction`, gradient
accumulation, processes) is one rule decided with the recipe, `config.loss_scale` (adapt/config/loss_scale.py),
which `compute_loss` applies and the audit records. tests/test_loss_reduction.py checks it against a hand-written
reference under 2 processes.

Only the first forward inside one `compute_loss` is kept: that is the policy forward in both SFT and DPO. A
separate DPO reference model has no hooks, and a PEFT reference (adapters disabled) runs after the policy. Under
expert parallelism DeepSpeed replaces the MoE blocks inside `deepspeed.initialize`, after this trainer is built, so
the first `compute_loss` after that hooks AutoEP's routers (once; each later step finds them hooked): AutoEP's router
gives the logits from its `gate` and the chosen experts from its own forward (`adapt.parallel.autoep.routing_sources`),
so losses and statistics come from the same record as without expert parallelism.

The first training micro-batch's record, with TRL's main loss and the model's own `aux_loss` (a forward hook on the
model), goes through the router-loss audit (router_audit.py) before the terms are added; each logging window's
summed counts go through the collapse checks (router_health.py), which may end training at that step.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

import torch

from adapt.config.families import family
from adapt.losses.router import RouterStats, load_balancing_loss, router_stats, router_z_loss
from adapt.model.routing import RouterCapture, RoutingRecorder, find_backbone, router_modules
from adapt.parallel.autoep import match_router_precision, routing_sources
from adapt.trainers import router_audit, router_health


class RouterLossMixin:
    """Mix in before a TRL trainer: `class AdaptSFTTrainer(RouterLossMixin, SFTTrainer)`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.router = self.args.router
        self.loss_scale = self.args.loss_scale
        if self.loss_scale is None:
            raise ValueError("the trainer's config has no loss_scale: build it with adapt.config.load_recipe")
        if self.loss_scale.total_over_accumulation:  # compute_loss returns the loss already divided for accumulation
            self.loss_is_scaled_for_ga = True
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
            self._collapse = router_health.CollapseMonitor(self.router, self._top_k, self._num_experts)
        # The first training micro-batch is audited (adapt/trainers/router_audit.py); its record goes to run.json.
        self._audit_pending = self._is_moe and self.router.audit
        self.router_audit: dict | None = None
        self.router_stop_reason: str | None = None  # set when router.on_collapse: stop ends training

    def train(self, *args, **kwargs):
        result = super().train(*args, **kwargs)
        if self.router_stop_reason:  # ended early by `router.on_collapse: stop`: the stage marks the folder stopped
            raise router_health.RouterCollapseError(self.router_stop_reason)
        return result

    # ------------------------------------------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        scale = self.loss_scale  # adapt/config/loss_scale.py
        num_items_in_batch = scale.main_items(num_items_in_batch)  # `sum`: 1, so TRL keeps the micro-batch's sum
        if self._is_moe:
            if self._awaiting_autoep:  # once: the first step after DeepSpeed has converted the model
                self._adopt_autoep()
            self._recorder.start()
        probe = router_audit.ModelAuxProbe(self.model) if self._audit_pending and model.training else None
        try:
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
        finally:
            captured = self._recorder.stop() if self._is_moe else None
            if probe is not None:
                probe.remove()
        if self._is_moe and captured is None and model.training:
            raise RuntimeError("the policy forward ran no router the toolkit records, so the router losses would be "
                               "silently left out (adapt/trainers/router.py)")
        loss = result[0] if return_outputs else result
        if probe is not None and captured is not None:
            self._audit(captured, loss, probe.aux_loss, inputs, num_items_in_batch)
        # Set by the training loop for each accumulation window (the last may be shorter); an evaluation before any
        # training has none, and divides by nothing.
        accumulation = getattr(self, "current_gradient_accumulation_steps", 1)
        if captured is not None:
            loss = loss + self._router_terms(captured, scale.router_divisor(accumulation, num_items_in_batch))
        divisor = scale.total_divisor(accumulation, model.training)
        if divisor != 1:
            loss = loss / divisor
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

    def _router_terms(self, captured: RouterCapture, divisor: int) -> torch.Tensor:
        """The weighted router losses of one micro-batch divided by `divisor`, to add to its main loss.
        Families without router losses (sigmoid routers: the recipe check refuses non-zero weights) add nothing and
        log only the routing statistics."""
        z_loss = lb_loss = None
        terms = torch.zeros((), device=captured.logits[0].device)
        if self.family.router_losses:
            losses = self._router_losses(captured)
            lb_loss, z_loss = losses["load_balancing"], losses["z_loss"]
            terms = self.router.load_balancing_weight * lb_loss + self.router.z_loss_weight * z_loss
            if divisor != 1:
                terms = terms / divisor
        self._record_router_metrics(captured, z_loss, lb_loss)
        return terms

    def _router_losses(self, captured: RouterCapture) -> dict[str, torch.Tensor]:
        """The unweighted terms, as training adds them (the audit measures this very function)."""
        return {"load_balancing": load_balancing_loss(captured.logits, self._num_experts, self._top_k,
                                                      captured.token_mask_T),
                "z_loss": router_z_loss(captured.logits, captured.token_mask_T)}

    def _router_params(self) -> dict[int, list[torch.nn.Parameter]]:
        """Per MoE layer, the parameters of its router (both copies under LoRA's `modules_to_save`; AutoEP's gate)."""
        found = defaultdict(list)
        for layer, module in router_modules(self._recorder.backbone):
            found[layer] += list(module.parameters())
        for layer, gate, _ in routing_sources(self._recorder.backbone):
            found[layer] += list(gate.parameters())
        return found

    def _audit(self, captured: RouterCapture, main_loss: torch.Tensor, model_aux, inputs, num_items_in_batch) -> None:
        """The router-loss audit of the first training micro-batch (adapt/trainers/router_audit.py): printed once,
        kept for run.json, and a failure on any process stops every process."""
        self._audit_pending = False
        text_config = self.model.config.get_text_config()
        record = router_audit.audit(
            family=self.family, captured=captured, main_loss=main_loss, model_aux=model_aux,
            weights={"load_balancing": self.router.load_balancing_weight, "z_loss": self.router.z_loss_weight},
            losses=self._router_losses, routers=self._router_params(),
            real_tokens=router_audit.real_token_count(inputs),
            model_side={"output_router_logits": getattr(text_config, "output_router_logits", None),
                        "trl_router_aux_loss_coef": getattr(self, "router_aux_loss_coef", None)})
        record["step"] = self.state.global_step + 1
        accumulation = getattr(self, "current_gradient_accumulation_steps", 1)  # none outside the training loop
        record["loss_scale"] = {**self.loss_scale.record(), "accumulation_steps": accumulation,
                                "processes": self.accelerator.num_processes,
                                "router_terms_divided_by": self.loss_scale.router_divisor(accumulation,
                                                                                          num_items_in_batch),
                                "total_divided_by": self.loss_scale.total_divisor(accumulation, True)}
        self.router_audit = record
        if self.accelerator.is_main_process:
            router_audit.log.warning(router_audit.format_block(record))
        failed = torch.tensor([float(not record["passed"])], device=self.accelerator.device)
        if self.accelerator.gather(failed).sum() > 0:
            reason = "; ".join(record["failures"]) or "it failed on another process (see that process's log)"
            raise router_audit.RouterAuditError(
                f"training.output_dir {self.args.output_dir}: the router-loss audit of step 1's first micro-batch "
                f"failed: {reason}. The run stops before its first update (router.audit: false skips the audit)")

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
            self._collapse.observe(stats, self.state.global_step)

    # ------------------------------------------------------------------------------------------------------- logs
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        prefix = "eval_" if mode == "eval" else ""
        for key in sorted(k for k in self._router_metrics if k.startswith(mode + ":")):  # same order on every rank
            local_mean = torch.stack(self._router_metrics.pop(key)).mean()
            logs[prefix + key.split(":", 1)[1]] = self.accelerator.gather_for_metrics(local_mean).mean().item()
        collapse = []
        if mode == "train" and self._stats is not None:
            router_logs, collapse = self._flush_router_stats()
            logs.update(router_logs)
        super().log(logs, start_time)
        if collapse and self.accelerator.is_main_process:
            for line in collapse:
                router_health.log.warning(line)
        if collapse and self.router.on_collapse == "stop":
            # Every process saw the same summed counts, so all stop at this step; the stage then marks the folder.
            self.router_stop_reason = (f"training.output_dir {self.args.output_dir}: training ended early "
                                       f"(router.on_collapse: stop): {collapse[0]}")
            self.control.should_training_stop = True

    def _summed(self, stats: RouterStats) -> RouterStats:
        """Routing counts summed over every process (collective: every rank calls it at the same point)."""
        if self.accelerator.num_processes == 1:
            return stats
        device = self.accelerator.device
        return RouterStats(stats.layer_ids,
                           self.accelerator.reduce(stats.tokens_per_expert_LE.to(device), "sum").cpu(),
                           self.accelerator.reduce(stats.entropy_sum_L.to(device), "sum").cpu(),
                           self.accelerator.reduce(torch.tensor(stats.num_tokens, device=device), "sum").item())

    def _flush_router_stats(self) -> tuple[dict[str, float], list[str]]:
        """The window's routing metrics, and the collapse warnings it raises (adapt/trainers/router_health.py)."""
        stats, self._stats = self._stats, None
        stats = self._summed(stats)
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
        health, collapse = self._collapse.check(stats, self.state.global_step, self._summed)
        return {**logs, **health}, collapse
