"""SFT: TRL's `SFTTrainer` plus the router z-loss and routing statistics."""

from __future__ import annotations

from trl import SFTTrainer

from adapt.trainers.router import RouterLossMixin


class AdaptSFTTrainer(RouterLossMixin, SFTTrainer):
    def _router_loss_divisor(self, num_items_in_batch) -> int:
        # Mirrors SFTTrainer.compute_loss: with `num_items_in_batch` the trainer leaves gradient accumulation to the
        # loss, so a per-micro-batch mean must be divided by the number of accumulated micro-batches here.
        return self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
