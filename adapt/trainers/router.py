"""Keep an MoE's router losses active inside TRL's trainers.

Design note. TRL already weights and logs the load-balancing loss (`router_aux_loss_coef`, logged as `aux_loss`), so
the toolkit leaves that path alone. What TRL lacks is the router z-loss and routing statistics, and both need the
per-layer router logits of the *policy* forward. TRL's fused LM-head forward drops `router_logits` from its output,
so the mixin records them with a forward hook on the backbone (`model.base_model`, e.g. `OlmoeModel`), whose output
still carries them together with the `attention_mask` that marks padding:

    compute_loss ─┬─ super().compute_loss(...)      # TRL: main loss (+ load balancing under `mean`)
                  │     └─ backbone forward ──hook──> captured (router_logits per layer, attention_mask)
                  └─ + z_loss_weight * router_z_loss(captured)  (+ the load-balancing term under `sum`)

`training.loss_reduction: sum` (SFT only) turns TRL's token mean into open-instruct's reduction: TRL is asked for
the plain token sum (`num_items_in_batch=1`), both router terms are added to it per micro-batch, and the total is
divided by the accumulation steps here (`loss_is_scaled_for_ga`), so the gradient DDP/ZeRO average over ranks is
sum over the global batch / (accumulation x processes), the one `--reduce_loss sum` gives under DeepSpeed.
tests/test_loss_reduction.py checks it against a hand-written reference under 2 processes.

Only the first forward with router logits inside one `compute_loss` is kept: that is the policy forward in both
SFT and DPO. A separate DPO reference model has no hook, and a PEFT reference (adapters disabled) runs after the
policy under `no_grad`.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

import torch

from adapt.losses.router import RouterStats, load_balancing_loss, router_stats, router_z_loss


def find_backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose output carries `router_logits` (the `base_model` of an HF `...ForCausalLM`)."""
    for module in model.modules():
        base = getattr(module, "base_model", None)
        if isinstance(base, torch.nn.Module) and getattr(base, "base_model", None) is base:
            return base
    raise ValueError(f"{type(model).__name__} has no HF backbone (`base_model`) to record router logits from")


class RouterLossMixin:
    """Mix in before a TRL trainer: `class AdaptSFTTrainer(RouterLossMixin, SFTTrainer)`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.router = self.args.router
        text_config = self.model.config.get_text_config()
        self._is_moe = hasattr(text_config, "output_router_logits") and hasattr(text_config, "num_experts_per_tok")
        self._top_k = getattr(text_config, "num_experts_per_tok", None)
        self._num_experts = getattr(text_config, "num_experts", None)
        self._captured = None
        self._stats: RouterStats | None = None
        self._router_metrics = defaultdict(list)
        if self._is_moe:
            find_backbone(self.model).register_forward_hook(self._capture_router_logits, with_kwargs=True)

    # ------------------------------------------------------------------------------------------------- recording
    def _capture_router_logits(self, module, args, kwargs, output):
        router_logits = getattr(output, "router_logits", None)
        if self._captured is None and router_logits:
            self._captured = (tuple(router_logits), kwargs.get("attention_mask"))

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
            inputs["output_router_logits"] = True  # also when the weights are 0: the losses are still logged
            self._captured = None
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        loss = result[0] if return_outputs else result
        captured, self._captured = self._captured, None
        if captured is not None:
            loss = loss + self._router_terms(*captured, summed=summed, num_items_in_batch=num_items_in_batch)
        if summed and model.training:
            # open-instruct under DeepSpeed: each micro-batch's total divided by the accumulation steps (DDP and ZeRO
            # then average over ranks), so the step's gradient is sum over the global batch / (accum x processes).
            loss = loss / self.current_gradient_accumulation_steps
        return (loss, result[1]) if return_outputs else loss

    def _router_terms(self, router_logits, attention_mask, *, summed: bool, num_items_in_batch) -> torch.Tensor:
        """The weighted router losses of one micro-batch, to add to its main loss.

        `mean`: TRL has already added the load-balancing term; the z-loss is added the same way (divided by the
        accumulation steps when TRL leaves accumulation to the loss). `sum`: both terms are added here, undivided,
        to the micro-batch's summed loss, as open-instruct's load-balancing ablation added its aux loss.
        """
        token_mask_T = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
        z_loss = router_z_loss(router_logits, token_mask_T)
        lb_loss = None
        if summed or not self.aux_loss_enabled:
            lb_loss = load_balancing_loss(router_logits, self._num_experts, self._top_k, token_mask_T)
        if summed:
            terms = self.router.load_balancing_weight * lb_loss + self.router.z_loss_weight * z_loss
        else:
            terms = self.router.z_loss_weight * z_loss / self._router_loss_divisor(num_items_in_batch)
        self._record_router_metrics(router_logits, token_mask_T, z_loss, lb_loss)
        return terms

    @torch.no_grad()
    def _record_router_metrics(self, router_logits, token_mask_T, z_loss, lb_loss) -> None:
        # Kept as device tensors and reduced only when logged: an `.item()` or a gather here would stall the GPU on
        # every micro-step.
        mode = "train" if self.model.training else "eval"
        self._router_metrics[mode + ":z_loss"].append(z_loss.detach().float())
        if lb_loss is not None:  # TRL logs `aux_loss` only when it adds it itself; keep the curve in every setting
            self._router_metrics[mode + ":aux_loss"].append(lb_loss.detach().float())
        if self.router.log_stats and mode == "train":
            stats = router_stats(router_logits, self._top_k, token_mask_T)
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
            stats = RouterStats(self.accelerator.reduce(stats.tokens_per_expert_LE.to(device), "sum").cpu(),
                                self.accelerator.reduce(stats.entropy_sum_L.to(device), "sum").cpu(),
                                self.accelerator.reduce(torch.tensor(stats.num_tokens, device=device), "sum").item())
        summary = stats.summary()
        if self.accelerator.is_main_process:
            os.makedirs(self.args.output_dir, exist_ok=True)
            with open(os.path.join(self.args.output_dir, "router_stats.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": self.state.global_step, **summary}) + "\n")
        logs = {}
        for i, (ratio, entropy) in enumerate(zip(summary["load_ratio"], summary["entropy"])):
            logs[f"router/layer_{i}/load_ratio"] = ratio
            logs[f"router/layer_{i}/entropy"] = entropy
        logs["router/load_ratio_max"] = max(summary["load_ratio"])
        logs["router/entropy_mean"] = sum(summary["entropy"]) / len(summary["entropy"])
        return logs
