"""Router collapse and dead-expert warnings, from the routing counts the trainer already keeps per logging window.

Per MoE layer and window (adapt.losses.router.RouterStats, real tokens only, every process's counts summed):
- dead fraction: the share of the layer's experts that no token chose;
- load entropy: the entropy of the expert load (each expert's share of the top-k assignments) over ln E, 1.0 when
  even, and its ratio to the same layer's at the start. The start is the routing of the run's first optimizer step,
  counted on the micro-batches that run before its first update: the model as it came in, at no extra forward;
- top expert share: the share of tokens whose top-k includes the busiest expert (k/E when even, 1.0 when every
  token chose it).

A figure is judged only when the window holds at least `MIN_ASSIGNMENTS_PER_EXPERT` assignments per expert: in a
smaller sample an idle expert or a busy one is chance. It crosses when it is beyond its `router.*` threshold and
beyond the same figure at the start: a model that already routed that way before training (a random init, whose
routers favour a few experts; a domain the base model sends to few experts) is not training collapsing it. A crossing
gives one warning line per layer; with `router.on_collapse: stop` the trainer ends training at that step and the
stage marks the run folder stopped with the reason (adapt/stages/train.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from adapt.losses.router import RouterStats
from adapt.trainers.guards import TrainingStopped

log = logging.getLogger(__name__)

MIN_ASSIGNMENTS_PER_EXPERT = 10  # 10 expected per expert: an idle expert by chance under even routing is e^-10
ADVICE = "Try: raise router.load_balancing_weight, lower training.learning_rate, check the data mix"


class RouterCollapseError(TrainingStopped):
    """`router.on_collapse: stop` ended training; the message names the step, the layer and the figures."""


@dataclass
class LayerHealth:
    layer: int
    dead_fraction: float
    top_expert: int
    top_share: float
    load_entropy: float  # over ln E: 1.0 even, 0.0 one expert
    entropy_ratio: float | None  # load_entropy / the start's (None: no start, or too small to judge)
    judged: bool  # the window is large enough to judge (module note)
    start_dead_fraction: float = 0.0  # the same figures at the start (0: no start to compare with)
    start_top_share: float = 0.0


def _load_entropy(counts_E: torch.Tensor) -> float:
    share_E = counts_E.double() / counts_E.sum().clamp(min=1)
    entropy = -(share_E * share_E.clamp(min=1e-300).log()).sum()
    return float(entropy) / math.log(counts_E.numel()) if counts_E.numel() > 1 else 1.0


def _enough(counts_E: torch.Tensor) -> bool:
    return float(counts_E.sum()) >= MIN_ASSIGNMENTS_PER_EXPERT * counts_E.numel()


def _dead_and_top(counts_E: torch.Tensor, num_tokens: float) -> tuple[float, int, float]:
    top = int(counts_E.argmax())
    return float((counts_E == 0).double().mean()), top, float(counts_E[top]) / max(num_tokens, 1)


def layer_health(stats: RouterStats, start: RouterStats | None) -> list[LayerHealth]:
    result = []
    for i, layer in enumerate(stats.layer_ids):
        counts_E = stats.tokens_per_expert_LE[i]
        entropy = _load_entropy(counts_E)
        h = LayerHealth(layer, *_dead_and_top(counts_E, stats.num_tokens), entropy, None, _enough(counts_E))
        if start is not None and _enough(start.tokens_per_expert_LE[i]):
            begin = _load_entropy(start.tokens_per_expert_LE[i])
            h.entropy_ratio = entropy / begin if begin > 0 else None
            h.start_dead_fraction, _, h.start_top_share = _dead_and_top(start.tokens_per_expert_LE[i],
                                                                         start.num_tokens)
        result.append(h)
    return result


def crossings(h: LayerHealth, router, top_k: int, num_experts: int) -> list[str]:
    """The thresholds a layer crosses, in words (empty when healthy or too small a window to judge)."""
    if not h.judged:
        return []
    crossed = []
    if h.dead_fraction > max(router.dead_expert_fraction, h.start_dead_fraction):
        crossed.append(f"{round(h.dead_fraction * num_experts)} of {num_experts} experts got no token "
                       f"({h.dead_fraction:.0%} > router.dead_expert_fraction {router.dead_expert_fraction:.0%})")
    if h.entropy_ratio is not None and h.entropy_ratio < 1 - router.entropy_drop:
        crossed.append(f"load entropy {h.load_entropy:.2f} of the even split, {h.entropy_ratio:.2f} of its value at "
                       f"the start (a drop of more than router.entropy_drop {router.entropy_drop:g})")
    fair = top_k / num_experts
    if h.top_share > max(router.top_expert_share, 2 * fair, h.start_top_share):
        crossed.append(f"expert {h.top_expert} is in {h.top_share:.0%} of the tokens' top-{top_k} "
                       f"(> router.top_expert_share {router.top_expert_share:.0%}; even: {fair:.0%}, at the start: "
                       f"{h.start_top_share:.0%})")
    return crossed


class CollapseMonitor:
    """The start routing, and the check at each logging step (`router.*` thresholds)."""

    def __init__(self, router, top_k: int, num_experts: int):
        self.router, self.top_k, self.num_experts = router, top_k, num_experts
        self.start: RouterStats | None = None
        self._start_step: int | None = None
        self._start_open = True
        self._last_step = 0

    def observe(self, stats: RouterStats, global_step: int) -> None:
        """Count a training micro-batch's routing into the start while the run's first step has not updated."""
        if not self._start_open:
            return
        if self._start_step is None:
            self._start_step = self._last_step = global_step
        if global_step == self._start_step:
            self.start = stats if self.start is None else self.start + stats
        else:
            self._start_open = False

    def check(self, stats: RouterStats, global_step: int,
              reduce: Callable[[RouterStats], RouterStats]) -> tuple[dict[str, float], list[str]]:
        """The window's figures as metrics, and one warning line per layer that crosses a threshold. `stats` is
        already summed over processes; `reduce` sums the start the same way (once), so every process decides alike."""
        if self._start_open and self.start is not None:
            self.start, self._start_open = reduce(self.start), False
        health = layer_health(stats, self.start)
        metrics = {}
        for h in health:
            metrics[f"router/layer_{h.layer}/dead_fraction"] = h.dead_fraction
            metrics[f"router/layer_{h.layer}/top_expert_share"] = h.top_share
            metrics[f"router/layer_{h.layer}/load_entropy"] = h.load_entropy
            if h.entropy_ratio is not None:
                metrics[f"router/layer_{h.layer}/load_entropy_vs_start"] = h.entropy_ratio
        window = max(global_step - self._last_step, 1)
        self._last_step = global_step
        lines = []
        for h in health:
            crossed = crossings(h, self.router, self.top_k, self.num_experts)
            if crossed:
                lines.append(f"router collapse at step {global_step}, layer {h.layer}, over the last {window} "
                             f"step(s): {'; '.join(crossed)}. {ADVICE}")
        return metrics, lines
