"""SFT: TRL's `SFTTrainer` plus the router z-loss and routing statistics."""

from __future__ import annotations

from trl import SFTTrainer

from adapt.trainers.checkpoint import ConvertingCheckpointMixin
from adapt.trainers.guards import FiniteLossMixin
from adapt.trainers.router import RouterLossMixin


class AdaptSFTTrainer(FiniteLossMixin, ConvertingCheckpointMixin, RouterLossMixin, SFTTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.loss_reduction == "sum":
            # compute_loss (RouterLossMixin) returns each micro-batch's sum already divided for accumulation.
            self.loss_is_scaled_for_ga = True

    def _router_loss_divisor(self, num_items_in_batch) -> int:
        # Mirrors SFTTrainer.compute_loss: with `num_items_in_batch` the trainer leaves gradient accumulation to the
        # loss, so a per-micro-batch mean must be divided by the number of accumulated micro-batches here.
        return self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
