"""Parallelism: the DeepSpeed configurations shipped with the toolkit, selectable by name from a recipe.

`"auto"` values are filled in by the HF Trainer from the training config, so one preset serves every recipe.
Expert parallelism (DeepSpeed AutoEP) and the matching accelerate configs are the scale-out issue's work.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PRESETS = ("zero2", "zero3", "zero3-offload")


def preset_path(name_or_path: str) -> Path | None:
    """The JSON file for a preset name or an existing path; None when it is neither."""
    if name_or_path in PRESETS:
        return Path(str(resources.files("adapt.parallel") / "presets" / f"{name_or_path}.json"))
    path = Path(name_or_path).expanduser()
    return path if path.is_file() else None
