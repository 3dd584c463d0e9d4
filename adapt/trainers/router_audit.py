"""The router-loss audit: on the first training micro-batch, measure that the router losses are what the recipe says.

The terms are added by hooks and a mixin (adapt/trainers/router.py), far from the recipe that asks for them, and
every way they go wrong is silent: a term that is zero, a router whose gradient is cut (a detached tensor, a frozen
module, reentrant gradient checkpointing recording the logits under no_grad), the model's own aux loss added a
second time by TRL or by the model, padding tokens counted. Each is measured here, once, on the micro-batch the run
trains on, before its first optimizer step:

- values: each term is finite, and > 0 when its weight is > 0;
- gradients: per MoE layer, the term computed on detached copies of the logits depends on that layer's logits (a
  loss function that drops a layer is named by layer: through the network, a later layer's logits also carry an
  earlier router's gradient, so the weights alone cannot say which layer was dropped), the recorded logits carry a
  gradient, and `torch.autograd.grad(term, router weights)` is non-zero for every trainable router weight (not
  measured under ZeRO-3, whose parameters are partitioned outside autograd's view);
- counted once: d(main loss)/d(the model's own `aux_loss`) is 0. TRL 1.16 adds `router_aux_loss_coef * aux_loss`
  when its coefficient is non-zero, and the fused forward it installs adds the config's coefficient to `loss`
  whenever `output_router_logits` is on; the derivative is the weight the main loss really gives the model's term,
  whichever path added it, with no second forward and no tolerance;
- padding: the tokens the terms count equal the micro-batch's real tokens, and a padding row appended with logits
  that would move every term leaves each term unchanged.

A failure raises `RouterAuditError` on every process (the stage turns it into one `error:` line); the record goes
into `run.json` as `router_audit`, with the loss-scaling rule the run applies (`loss_scale`,
adapt/config/loss_scale.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

from adapt.model.routing import RouterCapture
from adapt.trainers.guards import TrainingStopped

log = logging.getLogger(__name__)

FORMULAS = {
    "load_balancing": "transformers' load_balancing_loss_func (Switch: E * sum_e f_e * P_e over the layers' real "
                      "tokens; about top_k when balanced)",
    "z_loss": "ST-MoE router z-loss (mean over real tokens of logsumexp(router logits)^2, mean over layers)",
}
SIGMOID_NOTE = ("none: the sigmoid router is balanced by its score-correction bias, fixed during fine-tuning, and a "
                "softmax z-loss has no meaning for sigmoid scores (the recipe check keeps both weights at 0)")
NO_GRAD_HINT = ("the usual cause is reentrant gradient checkpointing, whose forward runs under no_grad; use "
                "training.activation_checkpointing_kwargs: {use_reentrant: false} (TRL forces reentrant for PEFT under "
                "ZeRO-3: use ZeRO-2 there, or no checkpointing)")
PADDING_LOGIT = 30.0  # a padding row routed this hard to one expert would move both terms far beyond rounding


class RouterAuditError(TrainingStopped):
    """The router-loss audit failed; the message is one line naming the term, the layer and the fix."""


class ModelAuxProbe:
    """The model's own `aux_loss` from the first forward while attached (the policy forward of `compute_loss`)."""

    def __init__(self, model: torch.nn.Module):
        self.aux_loss: torch.Tensor | None = None
        self.seen = False
        self._handle = model.register_forward_hook(self._record)

    def _record(self, module, args, output):
        if not self.seen:
            self.seen = True
            aux = getattr(output, "aux_loss", None)
            self.aux_loss = aux if isinstance(aux, torch.Tensor) else None

    def remove(self) -> None:
        self._handle.remove()


def real_token_count(inputs: dict) -> int:
    """The micro-batch's real tokens as the collator marks them: the 2-D attention mask, else every token
    (padding-free batches carry position_ids and no mask)."""
    mask = inputs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return int(mask.sum())
    return int(inputs["input_ids"].numel())


def _counted_tokens(captured: RouterCapture) -> int:
    mask = captured.token_mask_T
    return int(mask.sum()) if mask is not None else int(captured.logits[0].shape[0])


def check_padding(losses: Callable[[RouterCapture], dict], captured: RouterCapture, real_tokens: int) -> dict:
    """The token count the terms use, and each term with one padding row appended (masked out, its logits loud)
    against the term without it. Computed in float32 on detached logits: this checks the masking, not rounding."""
    logits = [x.detach().float() for x in captured.logits]
    mask = captured.token_mask_T
    mask = torch.ones(1, logits[0].shape[0], device=logits[0].device) if mask is None else mask.float()
    mask = mask.to(logits[0].device)
    row = mask.shape[-1]
    loud = torch.zeros(row, logits[0].shape[-1], device=logits[0].device)
    loud[:, 0] = PADDING_LOGIT
    padded = RouterCapture(captured.layer_ids, [torch.cat([x, loud]) for x in logits], None,
                           torch.cat([mask, torch.zeros(1, row, device=mask.device)]))
    with torch.no_grad():
        plain = losses(RouterCapture(captured.layer_ids, logits, None, mask))
        with_padding = losses(padded)
    changes = {name: abs(float(with_padding[name]) - float(plain[name])) / max(abs(float(plain[name])), 1e-12)
               for name in plain}
    return {"real_tokens": real_tokens, "counted_tokens": _counted_tokens(captured),
            "padding_tokens": int(mask.numel() - mask.sum()), "appended_padding_relative_change": changes}


def layers_ignored(losses: Callable[[RouterCapture], dict], captured: RouterCapture) -> dict[str, list[int]]:
    """Per term, the MoE layers whose logits it does not depend on, measured on detached leaf copies (the
    dependence of the loss function alone, not of the network around it)."""
    leaves = [x.detach().float().requires_grad_() for x in captured.logits]
    with torch.enable_grad():
        terms = losses(RouterCapture(captured.layer_ids, leaves, None, captured.token_mask_T))
        ignored = {}
        for name, term in terms.items():
            grads = torch.autograd.grad(term, leaves, allow_unused=True) if term.requires_grad else [None] * len(
                leaves)
            ignored[name] = [layer for layer, g in zip(captured.layer_ids, grads)
                             if g is None or not bool(g.abs().sum() > 0)]
    return ignored


def router_weight_gradients(term: torch.Tensor, routers: dict[int, list[torch.nn.Parameter]]) -> dict:
    """Per MoE layer, the largest |d term / d router weight| over its trainable router parameters; `frozen` where
    it has none (LoRA without the `router` target, ESFT), or why it is not measured."""
    trainable = {layer: [p for p in params if p.requires_grad] for layer, params in routers.items()}
    flat = [p for params in trainable.values() for p in params]
    result = {layer: "frozen" for layer, params in trainable.items() if not params}
    if not flat:
        return result
    if any(hasattr(p, "ds_id") for p in flat):  # ZeRO-3: the weights autograd sees are empty partitions
        return {**result, **{layer: "not measured under ZeRO-3" for layer in trainable if trainable[layer]}}
    if not term.requires_grad:
        return {**result, **{layer: 0.0 for layer in trainable if trainable[layer]}}
    try:
        grads = torch.autograd.grad(term, flat, retain_graph=True, allow_unused=True)
    except RuntimeError as e:  # e.g. reentrant gradient checkpointing, which autograd.grad cannot run through
        why = f"not measured ({str(e).splitlines()[0][:120]})"
        return {**result, **{layer: why for layer in trainable if trainable[layer]}}
    by_param = {id(p): (0.0 if g is None else float(g.detach().abs().max())) for p, g in zip(flat, grads)}
    for layer, params in trainable.items():
        if params:
            result[layer] = max(by_param[id(p)] for p in params)
    return result


def counted_once(main_loss: torch.Tensor, model_aux: torch.Tensor | None) -> float | None:
    """The weight the main loss gives the model's own aux loss: d main / d aux_loss (0 when the model computed none
    or the main loss does not use it; None when it cannot be measured: the aux loss carries no gradient)."""
    if model_aux is None:
        return 0.0
    if not (main_loss.requires_grad and model_aux.requires_grad):
        return None
    (grad,) = torch.autograd.grad(main_loss, model_aux, retain_graph=True, allow_unused=True)
    return 0.0 if grad is None else float(grad)


def _check_term(name: str, term: torch.Tensor, weight: float, ignored: list[int], no_grad_layers: list[int],
                routers: dict[int, list[torch.nn.Parameter]], failures: list[str]) -> dict:
    """One term's record: value, weight, formula and, when it is added (weight > 0), where its gradient goes."""
    value = float(term.detach())
    entry = {"weight": weight, "formula": FORMULAS[name], "value": value, "weighted": weight * value}
    if weight <= 0:
        return entry
    if not math.isfinite(value) or value <= 0:
        failures.append(f"{name} is {value} on the first micro-batch (weight {weight:g}): it adds nothing")
    if ignored:
        failures.append(f"{name} does not depend on the router logits of layer(s) {', '.join(map(str, ignored))}: "
                        f"their routers get none of its gradient")
    gradients = router_weight_gradients(term, routers)
    entry["router_weight_gradient"] = {str(k): v for k, v in gradients.items()}
    # layers whose logits carry no gradient at all are reported once for every term (audit)
    cut = [layer for layer, g in gradients.items() if isinstance(g, float) and not g > 0 and layer not in
           no_grad_layers]
    if cut:
        failures.append(f"{name}'s gradient does not reach the router weights of layer(s) "
                        f"{', '.join(map(str, sorted(cut)))}")
    return entry


def audit(*, family, weights: dict[str, float], losses: Callable[[RouterCapture], dict], captured: RouterCapture,
          main_loss: torch.Tensor, model_aux: torch.Tensor | None, routers: dict[int, list[torch.nn.Parameter]],
          real_tokens: int, model_side: dict) -> dict:
    """Every measurement of the module note on one micro-batch; returns the record with its `failures` (one
    sentence each, naming the term and layer)."""
    failures = []
    terms = losses(captured) if family.router_losses else {}
    ignored = layers_ignored(losses, captured) if terms else {}
    no_grad_layers = [layer for layer, x in zip(captured.layer_ids, captured.logits) if not x.requires_grad]
    record = {"family": family.model_type, "scoring": family.scoring, "moe_layers": list(captured.layer_ids),
              "terms": {name: _check_term(name, term, weights[name], ignored[name], no_grad_layers, routers, failures)
                        for name, term in terms.items()}}
    if not terms:
        record["terms_note"] = SIGMOID_NOTE
    trained = [layer for layer in no_grad_layers if any(p.requires_grad for p in routers.get(layer, []))]
    if any(weights[name] > 0 for name in terms) and trained:
        failures.append(f"the router logits of layer(s) {', '.join(map(str, trained))} carry no gradient, though "
                        f"their routers train: {NO_GRAD_HINT}")
    aux_weight = counted_once(main_loss, model_aux)
    record["counted_once"] = {**model_side, "model_aux_loss": None if model_aux is None else float(model_aux.detach()),
                              "model_aux_weight_in_main_loss": aux_weight}
    if aux_weight:
        failures.append(f"the main loss already holds the model's own load-balancing loss "
                        f"({float(model_aux.detach()):.4g}) with weight {aux_weight:.4g}, so it is counted twice; keep "
                        f"TRL's router_aux_loss_coef at 0 (router.load_balancing_weight sets the term)")
    padding = check_padding(losses, captured, real_tokens) if terms else {
        "real_tokens": real_tokens, "counted_tokens": _counted_tokens(captured)}
    record["padding"] = padding
    if padding["counted_tokens"] != real_tokens:
        failures.append(f"the router terms and statistics count {padding['counted_tokens']} tokens of a micro-batch "
                        f"with {real_tokens} real tokens: the padding mask does not reach them")
    for name, change in padding.get("appended_padding_relative_change", {}).items():
        if change > 1e-5:
            failures.append(f"{name} counts padding: a masked padding row changes it by {change:.3g} (relative)")
    record["failures"] = failures
    record["passed"] = not failures
    return record


def _gradient_words(entry: dict) -> str:
    grads = entry.get("router_weight_gradient")
    if grads is None:
        return "weight 0: not added"
    reached = [k for k, v in grads.items() if isinstance(v, float) and v > 0]
    missed = [k for k, v in grads.items() if isinstance(v, float) and not v > 0]
    parts = [f"gradient reaches the router weights of layers {', '.join(reached)}"] if reached else []
    parts += [f"gradient reaches NO router weight of layers {', '.join(missed)}"] if missed else []
    for why in sorted({v for v in grads.values() if isinstance(v, str)}):  # frozen, not measured under ZeRO-3
        parts.append(f"routers of layers {', '.join(k for k, v in grads.items() if v == why)}: {why}")
    return "; ".join(parts) or "no router weight to reach"


def format_block(record: dict) -> str:
    """The audit as the one block the run prints at start-up."""
    lines = [f"router-loss audit, first micro-batch ({record['family']}, {record['scoring']} router, MoE layers "
             f"{', '.join(map(str, record['moe_layers']))}):"]
    if record.get("terms_note"):
        lines.append(f"  terms: {record['terms_note']}")
    for name, t in record["terms"].items():
        lines.append(f"  {name}: weight {t['weight']:g} x {t['value']:.4g} = {t['weighted']:.4g}; {t['formula']}; "
                     f"{_gradient_words(t)}")
    once = record["counted_once"]
    aux = once["model_aux_weight_in_main_loss"]
    computed = "is not computed" if once["model_aux_loss"] is None else f"is computed ({once['model_aux_loss']:.4g})"
    lines.append(f"  counted once: the model's own aux loss {computed} in the policy forward"
                 f" (config output_router_logits {once['output_router_logits']}, TRL router_aux_loss_coef "
                 f"{once['trl_router_aux_loss_coef']}); its weight in the main loss, d main / d aux_loss: "
                 f"{'not measured (no gradient)' if aux is None else f'{aux:g}'}")
    pad = record["padding"]
    changes = pad.get("appended_padding_relative_change", {})
    lines.append(f"  padding: the terms count {pad['counted_tokens']} tokens, the micro-batch has {pad['real_tokens']}"
                 f" real ones" + (f" and {pad['padding_tokens']} padding" if "padding_tokens" in pad else "") +
                 ("; a masked padding row changes " + ", ".join(f"{k} by {v:.2g}" for k, v in changes.items())
                  if changes else ""))
    scale = record.get("loss_scale")  # added by the trainer (adapt/config/loss_scale.py)
    if scale:
        lines.append(f"  loss scale: loss_reduction {scale['loss_reduction']}, {scale['accumulation_steps']} "
                     f"accumulation step(s) x {scale['processes']} process(es); the router terms are added to "
                     f"{scale['main_loss']}, divided by {scale['router_terms_divided_by']}, the total by "
                     f"{scale['total_divided_by']}; tokens averaged across devices: "
                     f"{scale['average_tokens_across_devices']}")
    lines.append("  passed" if record["passed"] else "  FAILED: " + "; ".join(record["failures"]))
    return "\n".join(lines)
