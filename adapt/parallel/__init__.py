"""Parallelism: the DeepSpeed configurations shipped with the toolkit (selectable by name from a recipe), expert
parallelism through DeepSpeed AutoEP (`autoep.py`, which reads the family table and so sits a layer above this
package's other modules, beside adapt.model), and the launch-time setup (`launch.py`).

A recipe's `parallel:` section says *how* the model is sharded (ZeRO stage, offload, expert-parallel size); the
accelerate config given to `accelerate launch` says *where* (processes, machines). Layouts: DESIGN.md beside this
file.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

PRESETS = ("zero2", "zero3", "zero3-offload")
ACCELERATE_CONFIGS = ("cpu-2proc", "1gpu", "8gpu", "multinode")


def preset_path(name_or_path: str) -> Path | None:
    """The JSON file for a preset name or an existing path; None when it is neither."""
    if name_or_path in PRESETS:
        return Path(str(resources.files("adapt.parallel") / "presets" / f"{name_or_path}.json"))
    path = Path(name_or_path).expanduser()
    return path if path.is_file() else None


def accelerate_config(name: str) -> Path:
    """A shipped accelerate config (`accelerate launch --config_file $(...)`)."""
    if name not in ACCELERATE_CONFIGS:
        raise ValueError(f"unknown accelerate config {name!r}; shipped: {', '.join(ACCELERATE_CONFIGS)}")
    return Path(str(resources.files("adapt.parallel") / "accelerate" / f"{name}.yaml"))


def deepspeed_config(preset: str, expert_parallel_size: int) -> dict:
    """The DeepSpeed config a stage runs with: the preset's JSON, plus AutoEP when experts are spread over ranks.

    With MoE layers DeepSpeed must build the optimizer itself (a Trainer-built one fails with "None of the param
    groups are marked as MoE"), so an `optimizer` section is added whose "auto" values the Trainer fills from the
    recipe (learning rate, betas, epsilon, weight decay).
    """
    config = json.loads(preset_path(preset).read_text(encoding="utf-8"))
    if expert_parallel_size > 1:
        # No preset name and no routing overrides: AutoEP picks the family's preset (registered by
        # `autoep.register_presets`) from the model's `model_type` and reads `norm_topk_prob`, the groups and the
        # route scale from the model config, so one recipe setting serves every family.
        config["expert_parallel"] = {"enabled": True, "autoep_size": expert_parallel_size}
        config.setdefault("optimizer", {"type": "AdamW", "params": {
            "lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto", "torch_adam": True}})
    return config


def check_layout(num_experts: int | None, expert_parallel_size: int, world_size: int) -> str | None:
    """Why this layout cannot run, or None. Checked before any weights load."""
    if num_experts and num_experts % expert_parallel_size:
        return (f"{num_experts} experts cannot be split evenly over {expert_parallel_size} ranks; "
                f"choose a divisor of {num_experts}")
    if world_size % expert_parallel_size:
        return (f"{world_size} processes cannot form expert-parallel groups of {expert_parallel_size}; "
                f"launch a multiple of {expert_parallel_size} processes or change the size")
    return None
