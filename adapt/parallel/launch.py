"""Launch-time setup that must happen before the training config is built.

Without a GPU, torch.distributed needs the gloo backend. Plain data parallelism gets it from
`training.ddp_backend=gloo` with `training.use_cpu=true` (both are needed: see `launch_settings`). Under
DeepSpeed, transformers ignores `ddp_backend` and accelerate would start the process group with no backend, so
every rank believes it is rank 0 of 1; the fix is to build accelerate's process state with gloo first and tell
the Trainer to reuse it. On GPUs nothing is needed.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def distributed_cpu() -> bool:
    import torch

    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


# What an accelerate config's `deepspeed_config` block exports for the launched processes. The recipe's DeepSpeed
# config is the one that counts; left set, accelerate refuses the combination ("will be ignored").
ACCELERATE_DEEPSPEED_ENV = (
    "ACCELERATE_DEEPSPEED_ZERO_STAGE", "ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "ACCELERATE_GRADIENT_CLIPPING",
    "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE",
    "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_NVME_PATH", "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_NVME_PATH",
    "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL", "ACCELERATE_MIXED_PRECISION", "ACCELERATE_CONFIG_DS_FIELDS",
)


def prepare_launch(uses_deepspeed: bool) -> None:
    """Process state for this launch, set before the stage's config is built: the recipe, not an accelerate config,
    decides DeepSpeed; under DeepSpeed on CPUs, accelerate's process state starts with gloo here (see above)."""
    if uses_deepspeed:
        for name in ACCELERATE_DEEPSPEED_ENV:
            os.environ.pop(name, None)
    elif os.environ.pop("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        # An accelerate config with `distributed_type: DEEPSPEED` but a recipe without `parallel.deepspeed`: the
        # recipe decides, so this is plain data parallelism, not a ZeRO stage made up from accelerate's defaults.
        for name in ACCELERATE_DEEPSPEED_ENV:
            os.environ.pop(name, None)
        if int(os.environ.get("RANK", "0")) == 0:
            log.warning("the accelerate config asks for DeepSpeed but the recipe sets no parallel.deepspeed: running "
                        "plain data parallelism (set parallel.deepspeed, e.g. zero2, for ZeRO)")
    if uses_deepspeed and distributed_cpu():
        from accelerate import PartialState

        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        PartialState(backend="gloo")


def launch_settings(uses_deepspeed: bool, training: dict) -> dict:
    """The training fields this launch needs (none on GPUs or one process); the recipe's own `ddp_backend` wins.
    Pure: `prepare_launch` makes the matching process state."""
    if not distributed_cpu():
        return {}
    settings = {} if training.get("ddp_backend") else {"ddp_backend": "gloo"}
    if not uses_deepspeed:
        # Without `use_cpu`, accelerate finds no GPU behind LOCAL_RANK and settles on DistributedType.NO: every rank
        # trains alone (no gradient all-reduce) while the Trainer still scales the loss for 2 processes.
        return {**settings, "use_cpu": True}
    return {**settings, "accelerator_config": {"use_configured_state": True}}
