"""Typed stage configs: TRL's `SFTConfig` / `DPOConfig` plus the toolkit's recipe sections.

A recipe YAML holds the sections (`model`, `data`, `router`, `parallel`, `hub`) and a `training:` mapping of TRL
fields; `adapt.config.recipe.load_recipe` validates the file and builds one of these. Subclassing (rather than
wrapping) keeps them usable anywhere TRL expects its own config, e.g. `SFTTrainer(args=config)`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from trl import DPOConfig, SFTConfig

from adapt.config.sections import (
    SECTION_TYPES,
    DataSection,
    HubSection,
    ModelSection,
    ParallelSection,
    RouterSection,
)


@dataclass
class _AdaptSections:
    """Mixin holding the toolkit's sections; its fields come after TRL's in the dataclass."""

    stage: str = "sft"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    router: RouterSection = field(default_factory=RouterSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    hub: HubSection = field(default_factory=HubSection)
    # Replace an existing run folder at `output_dir`. Off by default: a run never silently overwrites another.
    overwrite: bool = False
    # The file the recipe was read from (for messages and the resolved copy); not a recipe key.
    recipe_path: str | None = field(default=None, metadata={"recipe_key": False})

    def training_dict(self) -> dict[str, Any]:
        """The TRL/transformers fields only, JSON-serialisable (enums as values, tokens hidden)."""
        from adapt.config.recipe import OWNED_TRAINING_KEYS  # set through the sections, so not repeated here

        own = {f.name for f in dataclasses.fields(_AdaptSections)} | set(OWNED_TRAINING_KEYS)
        d = {k: v for k, v in super().to_dict().items() if k not in own}
        return {k: (None if k.endswith("_token") else v) for k, v in d.items()}

    def to_dict(self) -> dict[str, Any]:
        # transformers serialises args (e.g. into TensorBoard/W&B); nested dataclasses must become plain dicts.
        d = super().to_dict()
        for name in SECTION_TYPES:
            d[name] = dataclasses.asdict(getattr(self, name))
        return d

    def resolved_recipe(self) -> dict[str, Any]:
        """The fully resolved recipe: every section and every training field, re-loadable by `load_recipe`."""
        out: dict[str, Any] = {"stage": self.stage}
        for name in SECTION_TYPES:
            out[name] = dataclasses.asdict(getattr(self, name))
        out["overwrite"] = self.overwrite
        out["training"] = self.training_dict()
        return out


@dataclass
class AdaptSFTConfig(_AdaptSections, SFTConfig):
    """`SFTConfig` with the toolkit's sections."""


@dataclass
class AdaptDPOConfig(_AdaptSections, DPOConfig):
    """`DPOConfig` with the toolkit's sections."""


STAGE_CONFIGS = {"sft": AdaptSFTConfig, "dpo": AdaptDPOConfig}
TRL_CONFIGS = {"sft": SFTConfig, "dpo": DPOConfig}
