"""DPO: TRL's `DPOTrainer` plus the router z-loss and routing statistics on the policy forward."""

from __future__ import annotations

from trl import DPOTrainer

from adapt.trainers.checkpoint import ConvertingCheckpointMixin
from adapt.trainers.guards import FiniteLossMixin
from adapt.trainers.router import RouterLossMixin


class AdaptDPOTrainer(FiniteLossMixin, ConvertingCheckpointMixin, RouterLossMixin, DPOTrainer):
    # DPOTrainer's loss is a per-micro-batch mean that the HF Trainer divides for gradient accumulation; the
    # config's `loss_scale` rule (adapt/config/loss_scale.py) adds the router terms to it undivided.

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        # Rows tokenized by adapt.data.tokenize carry exactly the columns DPOTrainer's own preparation produces
        # (tests/test_tokenize.py checks it), so they go to the collator as they are.
        if {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(dataset.column_names):
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
