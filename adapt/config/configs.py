"""Typed stage configs: TRL's `SFTConfig` / `DPOConfig` plus the toolkit's recipe sections.

A recipe YAML holds the sections (`model`, `data`, `router`, `parallel`, `hub`) and a `training:` mapping of TRL
fields; `adapt.config.recipe.load_recipe` validates the file and builds one of these. Subclassing (rather than
wrapping) keeps them usable anywhere TRL expects its own config, e.g. `SFTTrainer(args=config)`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from trl import DPOConfig, SFTConfig

from adapt.config.sections import (
    SECTION_TYPES,
    DataSection,
    HubSection,
    ModelSection,
    ParallelSection,
    RouterSection,
    router_loss_scale,
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
    # How the SFT loss is reduced (a `training:` key, the toolkit's own). `mean`: TRL's token mean over the global
    # batch. `sum`: open-instruct's `--reduce_loss sum`, the published OLMoE SFT: each micro-batch's summed token
    # cross-entropy, divided by the accumulation steps and averaged over ranks, so the gradient is the global batch's
    # sum / (accumulation x processes); the router terms are added per micro-batch. DPO is a mean over pairs in
    # both open-instruct and TRL, so `sum` is refused there.
    loss_reduction: Literal["mean", "sum"] = field(default="mean", metadata={"training_key": True})
    # The file the recipe was read from (for messages and the resolved copy); not a recipe key.
    recipe_path: str | None = field(default=None, metadata={"recipe_key": False})

    def training_dict(self) -> dict[str, Any]:
        """The TRL/transformers fields only, JSON-serialisable (enums as values, tokens hidden)."""
        from adapt.config.recipe import OWNED_TRAINING_KEYS  # set through the sections, so not repeated here

        own = {f.name for f in dataclasses.fields(_AdaptSections) if not f.metadata.get("training_key")}
        own |= set(OWNED_TRAINING_KEYS)
        d = {k: v for k, v in super().to_dict().items() if k not in own}
        return {k: (None if k.endswith("_token") else v) for k, v in d.items()}

    def to_dict(self) -> dict[str, Any]:
        # transformers serialises args (e.g. into TensorBoard/W&B); nested dataclasses must become plain dicts.
        d = super().to_dict()
        for name in SECTION_TYPES:
            d[name] = dataclasses.asdict(getattr(self, name))
        return d

    def router_loss_scale(self) -> str:
        """What each router weight multiplies, in words (the header of the run's recipe.yaml, the model card)."""
        return router_loss_scale(self.stage, self.loss_reduction, self.router.load_balancing_weight,
                                 self.router.z_loss_weight)

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
