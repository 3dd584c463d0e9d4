"""SFT: TRL's `SFTTrainer` plus the router z-loss and routing statistics."""

from __future__ import annotations

from trl import SFTTrainer

from adapt.trainers.checkpoint import ConvertingCheckpointMixin
from adapt.trainers.guards import FiniteLossMixin
from adapt.trainers.router import RouterLossMixin


class AdaptSFTTrainer(FiniteLossMixin, ConvertingCheckpointMixin, RouterLossMixin, SFTTrainer):
    """The loss's scaling (`training.loss_reduction`, accumulation) is the config's `loss_scale` rule, applied by
    RouterLossMixin (adapt/config/loss_scale.py)."""
