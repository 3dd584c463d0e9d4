"""TRL trainers with the MoE router losses kept active."""

from adapt.trainers.callbacks import MetricsJSONLCallback
from adapt.trainers.dpo import AdaptDPOTrainer
from adapt.trainers.guards import NonFiniteLossError
from adapt.trainers.router import RouterLossMixin
from adapt.trainers.sft import AdaptSFTTrainer

__all__ = ["AdaptDPOTrainer", "AdaptSFTTrainer", "MetricsJSONLCallback", "NonFiniteLossError", "RouterLossMixin"]
