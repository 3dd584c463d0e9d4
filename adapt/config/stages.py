"""The training stages, as data: everything that differs between SFT and DPO, in one table (like families.py).

Every module that needs to know what a stage does reads `STAGES[name]`: the recipe check (which keys and data
formats apply), the config (its sequence layout), the data layer (row fields, tokenized columns, pairs), the loss
rule (adapt/config/loss_scale.py), the model card, the command line. Nothing else compares a stage's name
(tests/test_stages.py greps for such a branch).

Layers. The table sits in `adapt.config`, below the data, the trainers and the stage modules, and imports nothing
above it: what lives higher is named, not imported. The config classes (adapt/config/configs.py, which imports TRL)
by class name, looked up there; the trainer and the stage module by "module:attr" / module strings, as the command
table of adapt/cli.py names its functions (the model card prints the module in its launch line; the stage module
imports its trainer itself). tests/test_stages.py resolves every name and holds it equal to the rest of the table.

Adding a stage (KTO, ORPO): its config class in configs.py, one record here, its module in adapt/stages/ (and its
`adapt NAME` command in adapt/cli.py), a test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adapt.config.sections import PREFERENCE_FORMATS, SFT_FORMATS


@dataclass(frozen=True)
class Stage:
    name: str  # the recipe's `stage:`, the `adapt NAME` command, run.json's "stage"
    config_class: str  # the toolkit's config class in adapt/config/configs.py
    trl_config: str  # ... and the TRL config it extends (its fields are the recipe's `training:` keys; DPO: beta)
    trl_trainer: str  # the TRL trainer the stage's trainer extends, as the model card names it
    trainer: str  # "module:class" of the toolkit's trainer (adapt/trainers/)
    module: str  # the stage module: `accelerate launch -m MODULE`, its `main` is `adapt NAME`
    formats: tuple[str, ...]  # the row formats a source may have (adapt/data/formats.py)
    row_fields: tuple[str, ...]  # the columns of a converted row (adapt/data/sources.py)
    tokenized_columns: tuple[str, ...]  # the token columns the trainer receives (adapt/data/tokenize.py)
    task_rows: str  # the method of a built-in task (adapt/tasks/task.py) that generates this stage's rows
    # The loss is a cross-entropy on token labels the toolkit builds: `data.assistant_only_loss` and
    # `data.train_assistant_newline` apply, and `training.loss_reduction: sum` may sum it (adapt/config/loss_scale.py).
    token_labels: bool
    packs: bool  # rows may be packed into one sequence (`training.packing`); else one row per sequence
    pairs: bool  # a row is a chosen and a rejected answer to one prompt (identical pairs, two sequences per row)
    # What the loss scores, for the recipe check's messages and the loss rule's words when not a token loss.
    scores: str
    # The stage whose run this one usually starts from (the card says to produce it first); None: a base model.
    follows: str | None = None
    # TRL fields the toolkit sets for this stage (adapt/config/recipe.py `_finished`), as (field, value) pairs.
    trl_fields: tuple[tuple[str, Any], ...] = ()


STAGES = {s.name: s for s in (
    Stage("sft", "AdaptSFTConfig", "SFTConfig", "SFTTrainer", "adapt.trainers.sft:AdaptSFTTrainer", "adapt.stages.sft",
          SFT_FORMATS, row_fields=("messages",), tokenized_columns=("input_ids", "labels"), task_rows="sft_rows",
          token_labels=True, packs=True, pairs=False,
          scores="the token cross-entropy of the labelled tokens",
          # the labels are built by adapt/data/tokenize.py, so TRL's own preparation (and its mask) stays off
          trl_fields=(("dataset_kwargs", {"skip_prepare_dataset": True}),)),
    Stage("dpo", "AdaptDPOConfig", "DPOConfig", "DPOTrainer", "adapt.trainers.dpo:AdaptDPOTrainer", "adapt.stages.dpo",
          PREFERENCE_FORMATS, row_fields=("prompt", "chosen", "rejected"),
          tokenized_columns=("prompt_ids", "chosen_ids", "rejected_ids"), task_rows="preference_rows",
          token_labels=False, packs=False, pairs=True,
          scores="the micro-batch's DPO loss (a mean over its preference pairs, scoring the whole chosen and rejected "
                 "answers, in open-instruct and TRL alike; policy forward only)",
          follows="sft"),
)}

