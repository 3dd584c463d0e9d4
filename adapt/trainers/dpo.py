"""DPO: TRL's `DPOTrainer` plus the router z-loss and routing statistics on the policy forward."""

from __future__ import annotations

from trl import DPOTrainer

from adapt.trainers.router import RouterLossMixin


class AdaptDPOTrainer(RouterLossMixin, DPOTrainer):
    # DPOTrainer's loss is a per-micro-batch mean that the HF Trainer divides for gradient accumulation, so the
    # mixin's default divisor of 1 is right here.
    pass
