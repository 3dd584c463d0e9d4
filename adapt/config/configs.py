"""Typed stage configs: TRL's `SFTConfig` / `DPOConfig` plus the toolkit's recipe sections.

A recipe YAML holds the sections (`model`, `data`, `router`, `parallel`, `hub`) and a `training:` mapping of TRL
fields; `adapt.config.recipe.load_recipe` validates the file and builds one of these. Subclassing (rather than
wrapping) keeps them usable anywhere TRL expects its own config, e.g. `SFTTrainer(args=config)`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import trl

from adapt.config.loss_scale import LossScale, loss_scale
from adapt.config.sections import (
    SECTION_TYPES,
    DataSection,
    ExpertsSection,
    HubSection,
    ModelSection,
    ParallelSection,
    PeftSection,
    Range,
    RouterSection,
    SequenceLayout,
)
from adapt.config.stages import STAGES

# TRL/transformers fields the toolkit sets itself, from its own sections or because it does the work TRL would: a
# recipe that sets them under `training:` is refused with the fix, and the resolved recipe does not repeat them.
OWNED_TRAINING_KEYS = {
    "router_aux_loss_coef": "set `router.load_balancing_weight` instead",
    "deepspeed": "set `parallel.deepspeed` instead",
    "push_to_hub": "set `hub.push` instead",
    "hub_model_id": "set `hub.repo_id` instead",
    "hub_private_repo": "set `hub.private` instead",
    "hub_revision": "set `hub.revision` instead",
    "model_init_kwargs": "set `model.dtype` / `model.attn_implementation` instead",
    # the toolkit builds the labels (adapt/data/tokenize.py), so the mask is a data setting
    "assistant_only_loss": "set `data.assistant_only_loss` instead (the toolkit builds the labels itself)",
    # the rows reach the trainer tokenized, masked and packed, so TRL's own preparation is always skipped
    "dataset_kwargs": "remove it: the toolkit tokenizes, masks and packs the rows itself (adapt/data/tokenize.py)",
}


@dataclass
class _Decided:
    """What the recipe loader decides from the final recipe (adapt/config/recipe.py `_finished`); not recipe keys."""

    # How the loss is reduced and scaled (adapt/config/loss_scale.py): decided by the recipe loader, or in
    # __post_init__ for a config built by hand.
    loss_scale: LossScale | None = field(default=None, metadata={
        "recipe_key": False, "help": "How the loss is reduced and scaled, decided once the config is final "
        "(adapt/config/loss_scale.py); not a recipe key."})


@dataclass
class _AdaptSections(_Decided):
    """Mixin holding the toolkit's sections; its fields come after TRL's in the dataclass."""

    stage: str = field(default="sft", metadata={
        "help": "`sft` or `dpo`: which trainer the recipe runs (`adapt sft` / `adapt dpo` check it is theirs)."})
    model: ModelSection = field(default_factory=ModelSection, metadata={"help": ModelSection.__doc__})
    data: DataSection = field(default_factory=DataSection, metadata={"help": DataSection.__doc__})
    router: RouterSection = field(default_factory=RouterSection, metadata={"help": RouterSection.__doc__})
    parallel: ParallelSection = field(default_factory=ParallelSection, metadata={"help": ParallelSection.__doc__})
    hub: HubSection = field(default_factory=HubSection, metadata={"help": HubSection.__doc__})
    peft: PeftSection = field(default_factory=PeftSection, metadata={"help": PeftSection.__doc__})
    experts: ExpertsSection = field(default_factory=ExpertsSection, metadata={"help": ExpertsSection.__doc__})
    overwrite: bool = field(default=False, metadata={
        "help": "Replace an existing run folder at `output_dir`. Off by default: a run never silently overwrites "
                "another."})
    loss_reduction: Literal["mean", "sum"] = field(default="mean", metadata={
        "training_key": True,
        "help": "How the SFT loss is reduced (a `training:` key, the toolkit's own). `mean`: TRL's token mean over "
                "the global batch. `sum`: open-instruct's `--reduce_loss sum`, the published OLMoE SFT: each "
                "micro-batch's summed token cross-entropy, divided by the accumulation steps and averaged over ranks, "
                "so the gradient is the global batch's sum / (accumulation x processes); the router terms are added "
                "per micro-batch. DPO is a mean over pairs in both open-instruct and TRL, so `sum` is refused there."})
    stop_grace_seconds: float = field(default=25.0, metadata={
        "training_key": True,
        "help": "On SIGTERM or SIGINT (preemption, Ctrl-C) the run finishes its step and saves a resumable "
                "checkpoint within this many seconds, or exits without it (adapt/trainers/signals.py). Below the "
                "30 s Slurm and Kubernetes wait before SIGKILL by default; raise it with theirs (e.g. Slurm's "
                "`--signal=TERM@120`) when a checkpoint takes longer.",
        "range": Range(0, False, 3600, True)})
    recipe_path: str | None = field(default=None, metadata={
        "recipe_key": False,
        "help": "The file the recipe was read from (for messages and the resolved copy); not a recipe key."})
    allow_changed: tuple[str, ...] = field(default=(), metadata={
        "recipe_key": False,
        "help": "Recipe keys a resumed run may change from its checkpoint's (`adapt sft|dpo --allow-changed KEY`, "
                "checked by adapt/runfolder.py `check_same_recipe`); a command-line flag, not a recipe key."})

    def __post_init__(self):
        super().__post_init__()
        if self.loss_scale is None:  # built by hand, not by load_recipe: the same rule, decided once, here
            self.loss_scale = loss_scale(STAGES[self.stage], self.loss_reduction, self.average_tokens_across_devices)
            self.average_tokens_across_devices = self.loss_scale.average_tokens_across_devices

    def training_dict(self) -> dict[str, Any]:
        """The TRL/transformers fields only, JSON-serialisable (enums as values, tokens hidden)."""
        own = {f.name for f in dataclasses.fields(_AdaptSections) if not f.metadata.get("training_key")}
        own |= set(OWNED_TRAINING_KEYS)
        d = {k: v for k, v in super().to_dict().items() if k not in own}
        return {k: (None if k.endswith("_token") else v) for k, v in d.items()}

    def to_dict(self) -> dict[str, Any]:
        # transformers serialises args (e.g. into TensorBoard/W&B); nested dataclasses must become plain dicts.
        d = super().to_dict()
        for name in SECTION_TYPES:
            d[name] = dataclasses.asdict(getattr(self, name))
        d["loss_scale"] = None if self.loss_scale is None else dataclasses.asdict(self.loss_scale)
        return d

    def sequence_layout(self) -> SequenceLayout:
        """The TRL fields the data layer reads (a stage that packs, adapt/config/stages.py, reads the packing too)."""
        if not STAGES[self.stage].packs:
            return SequenceLayout(self.max_length, num_proc=self.dataset_num_proc)
        return SequenceLayout(self.max_length, self.packing, self.packing_strategy, self.eval_packing,
                              self.dataset_num_proc)

    def router_loss_scale(self) -> str:
        """What each router weight multiplies, in words (the header of the run's recipe.yaml, the model card)."""
        return self.loss_scale.words(self.router.load_balancing_weight, self.router.z_loss_weight)

    def resolved_recipe(self) -> dict[str, Any]:
        """The fully resolved recipe: every section and every training field, re-loadable by `load_recipe`."""
        out: dict[str, Any] = {"stage": self.stage}
        for name in SECTION_TYPES:
            out[name] = dataclasses.asdict(getattr(self, name))
        out["overwrite"] = self.overwrite
        out["training"] = self.training_dict()
        return out


@dataclass
class AdaptSFTConfig(_AdaptSections, trl.SFTConfig):
    """`SFTConfig` with the toolkit's sections."""


@dataclass
class AdaptDPOConfig(_AdaptSections, trl.DPOConfig):
    """`DPOConfig` with the toolkit's sections."""


# Per stage of adapt/config/stages.py, its config class and the TRL config that class extends.
_CONFIG_CLASSES = {cls.__name__: cls for cls in (AdaptSFTConfig, AdaptDPOConfig)}
STAGE_CONFIGS = {name: _CONFIG_CLASSES[s.config_class] for name, s in STAGES.items()}
TRL_CONFIGS = {name: getattr(trl, s.trl_config) for name, s in STAGES.items()}
