"""How a micro-batch's loss is reduced and scaled, decided in one function from the final recipe.

What decides it: the stage (a token cross-entropy or a mean over preference pairs, adapt/config/stages.py),
`training.loss_reduction`, gradient accumulation and the number of processes. The rule:

- `mean` (TRL's), token loss (SFT): TRL divides the micro-batch's token sum by the global batch's token count
  (`num_items_in_batch`, summed over processes when `average_tokens_across_devices`), and the Trainer then leaves
  gradient accumulation to the loss; so the router terms, a per-micro-batch mean, are divided by the accumulation
  steps, as TRL scales its own aux loss. Without `num_items_in_batch` the Trainer divides the whole loss itself.
- `mean`, pair loss (DPO): the loss is a per-micro-batch mean that the Trainer divides for accumulation; the router
  terms are added as they are.
- `sum` (open-instruct's `--reduce_loss sum`, token loss only): TRL gets `num_items_in_batch=1`, so the main loss is
  the micro-batch's token sum; the router terms are added undivided; the total is divided by the accumulation steps
  by the toolkit (the Trainer's own division is off, `loss_is_scaled_for_ga`), and DDP/ZeRO average over ranks, so
  the step's gradient is the global batch's sum / (accumulation x processes). Tokens are not averaged across devices
  (TRL would multiply the sum by the process count, expecting a global token count).

`loss_scale()` returns the rule as a frozen record; the recipe loader stores it on the config (`config.loss_scale`,
adapt/config/recipe.py `_finished`), the trainers apply it (adapt/trainers/router.py), the run's router audit and
recipe.yaml header state it. tests/test_loss_reduction.py checks the gradients against a hand-written reference.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapt.config.stages import Stage


@dataclass(frozen=True)
class LossScale:
    reduction: str  # `training.loss_reduction`: "mean" or "sum"
    # The main loss is the micro-batch's token sum: TRL is given `num_items_in_batch=1` (module note).
    summed: bool
    # Mean token loss: the router terms are divided by the accumulation steps whenever the Trainer leaves
    # accumulation to the loss (it passes `num_items_in_batch`).
    router_over_accumulation: bool
    # Sum: the toolkit divides main loss + router terms by the accumulation steps itself in training.
    total_over_accumulation: bool
    average_tokens_across_devices: bool  # the TRL field's final value
    main: str  # in words: what the main loss is and what divides it
    router: str  # ... what divides the router terms

    def main_items(self, num_items_in_batch):
        """The `num_items_in_batch` TRL divides the main loss by."""
        return 1 if self.summed else num_items_in_batch

    def router_divisor(self, accumulation_steps: int, num_items_in_batch) -> int:
        """What one micro-batch's weighted router terms are divided by before they are added to its main loss."""
        return accumulation_steps if self.router_over_accumulation and num_items_in_batch is not None else 1

    def total_divisor(self, accumulation_steps: int, training: bool) -> int:
        """What main loss + router terms are divided by (the Trainer's own accumulation scaling aside)."""
        return accumulation_steps if self.total_over_accumulation and training else 1

    def words(self, load_balancing_weight: float, z_loss_weight: float) -> str:
        """One sentence: what the router weights multiply and what the products are added to (the run's recipe.yaml
        header, the model card)."""
        return (f"router.load_balancing_weight {load_balancing_weight:g} multiplies each micro-batch's load-balancing "
                f"loss (about top_k when balanced) and router.z_loss_weight {z_loss_weight:g} its router z-loss (mean "
                f"of logsumexp(router logits)^2); both products are added to {self.main}.")

    def record(self) -> dict:
        """The rule as the router audit keeps it in run.json."""
        return {"loss_reduction": self.reduction, "main_loss": self.main, "router_terms": self.router,
                "average_tokens_across_devices": self.average_tokens_across_devices}


def loss_scale(stage: Stage, loss_reduction: str, average_tokens_across_devices: bool) -> LossScale:
    """The rule for a stage and its final training settings (module note). `average_tokens_across_devices` is the
    value the recipe gives or TRL's default; under `sum` it is turned off (the recipe check refuses it set on)."""
    if loss_reduction == "sum":  # token loss only: the recipe check refuses `sum` for other stages
        return LossScale("sum", summed=True, router_over_accumulation=False, total_over_accumulation=True,
                         average_tokens_across_devices=False,
                         main="the micro-batch's summed token cross-entropy (training.loss_reduction: sum), the total "
                              "then divided by the accumulation steps and averaged over processes",
                         router="nothing (added to the summed loss; the total is divided by the accumulation steps "
                                "and averaged over processes)")
    if stage.token_labels:
        return LossScale("mean", summed=False, router_over_accumulation=True, total_over_accumulation=False,
                         average_tokens_across_devices=average_tokens_across_devices,
                         main="the global batch's token-mean cross-entropy (training.loss_reduction: mean), each "
                              "router term divided by the accumulation steps",
                         router="the accumulation steps (as TRL scales its own aux loss)")
    return LossScale("mean", summed=False, router_over_accumulation=False, total_over_accumulation=False,
                     average_tokens_across_devices=average_tokens_across_devices, main=stage.scores,
                     router="nothing (the Trainer divides the micro-batch's whole loss for accumulation)")
