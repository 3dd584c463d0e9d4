"""Launch-time setup that must happen before the training config is built.

Without a GPU, torch.distributed needs the gloo backend. Plain data parallelism gets it from
`training.ddp_backend=gloo`. Under DeepSpeed, transformers ignores `ddp_backend` and accelerate would start the
process group with no backend, so every rank believes it is rank 0 of 1; the fix (GROUND-TRUTH.md) is to build
accelerate's process state with gloo first and tell the Trainer to reuse it. On GPUs nothing is needed.
"""

from __future__ import annotations

import os


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


def launch_overrides(uses_deepspeed: bool, overrides: list[str]) -> list[str]:
    """Recipe overrides (and process state) for this launch; the user's own `training.ddp_backend` wins."""
    if uses_deepspeed:
        for name in ACCELERATE_DEEPSPEED_ENV:
            os.environ.pop(name, None)
    if not distributed_cpu() or any(o.startswith("training.ddp_backend=") for o in overrides):
        return []
    if not uses_deepspeed:
        return ["training.ddp_backend=gloo"]
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(backend="gloo")
    return ["training.ddp_backend=gloo", "training.accelerator_config={use_configured_state: true}"]
