"""The recipe reference, docs/recipe-reference.md, written from the config classes themselves: each field's name,
type, default, range and help (its `metadata`), so the reference cannot drift from what the recipe check accepts.

Regenerate with `make docs` (`python -m adapt.config.reference > docs/recipe-reference.md`); tests/test_reference.py
fails while the committed file differs from what this writes.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from typing import Any

from adapt.config.checks import describe
from adapt.config.configs import OWNED_TRAINING_KEYS, _AdaptSections
from adapt.config.limits import MAX_STEPS, TRAINING_RANGES
from adapt.config.recipe import RENAMED_TRAINING_KEYS
from adapt.config.sections import SECTION_TYPES, DataSource, Range, field_ranges

COMMAND = "python -m adapt.config.reference > docs/recipe-reference.md"
TRL_DOCS = {  # TRL's and transformers' own references for the `training:` keys the toolkit passes through
    "SFTConfig": "https://huggingface.co/docs/trl/sft_trainer#trl.SFTConfig",
    "DPOConfig": "https://huggingface.co/docs/trl/dpo_trainer#trl.DPOConfig",
    "TrainingArguments": "https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments",
}

INTRO = f"""# Recipe reference

<!-- Generated from the config classes in adapt/config/ by `make docs` ({COMMAND});
do not edit by hand: tests/test_reference.py fails while this file is stale. -->

A recipe is a YAML file read by `adapt sft` and `adapt dpo`: a few top-level keys, one mapping per section below
(`model:`, `data:`, ...; an absent or empty section takes its defaults) and a `training:` mapping of TRL's config
fields. A string value may name an environment variable as `${{NAME}}`. Every key, type and range here is checked
before anything loads, and a mistake is one line naming the file, the key and the fix. The recipes in `recipes/` are
worked examples.
"""


def reference() -> str:
    """The whole reference, as markdown."""
    parts = [INTRO, "## Top-level keys\n", _table(_AdaptSections, _top_level_fields())]
    for name, cls in SECTION_TYPES.items():
        parts += [f"## `{name}:`\n", _doc(cls), _table(cls, dataclasses.fields(cls))]
        if cls is SECTION_TYPES["data"]:
            parts += ["### `data.sources[]`: each source\n", _doc(DataSource),
                      _table(DataSource, dataclasses.fields(DataSource))]
    parts += _training()
    return "\n".join(parts)


def _top_level_fields() -> list[dataclasses.Field]:
    """`stage`, `overwrite`: the recipe keys of the stage config that are neither a section nor under `training:`."""
    return [f for f in dataclasses.fields(_AdaptSections) if f.name not in SECTION_TYPES
            and f.metadata.get("recipe_key", True) and not f.metadata.get("training_key")]


def _training() -> list[str]:
    own = [f for f in dataclasses.fields(_AdaptSections) if f.metadata.get("training_key")]
    trl = ", ".join(f"[{name}]({url})" for name, url in TRL_DOCS.items())
    ranges = "\n".join(f"| `{key}` | {_range(bounds)} |" for key, bounds in TRAINING_RANGES.items())
    refused = "\n".join(f"| `{key}` | {_cell(fix)} |"
                        for key, fix in {**OWNED_TRAINING_KEYS, **RENAMED_TRAINING_KEYS}.items())
    return [
        "## `training:`\n",
        "The fields of TRL's `SFTConfig` (`stage: sft`) or `DPOConfig` (`stage: dpo`), which extend transformers' "
        f"`TrainingArguments`: see {trl} for each field's meaning and default. A few keys are the toolkit's own.\n",
        "### The toolkit's own `training:` keys\n",
        _table(_AdaptSections, own),
        "### Ranges checked on TRL's and transformers' keys\n",
        "A value outside its range is refused before anything loads (adapt/config/limits.py). `max_steps` must be -1 "
        f"(train for `num_train_epochs`) or from 1 to {MAX_STEPS:,}.\n",
        "| Key | Range |\n|---|---|\n" + ranges + "\n",
        "### Keys refused under `training:`\n",
        "The toolkit sets these itself, or today's libraries renamed them; a recipe that sets one is refused with "
        "the fix.\n",
        "| Key | Instead |\n|---|---|\n" + refused + "\n",
    ]


def _table(cls, fields: typing.Iterable[dataclasses.Field]) -> str:
    hints = typing.get_type_hints(cls)
    ranges = field_ranges(cls)
    rows = [f"| `{f.name}` | {_cell(describe(hints[f.name]))} | {_default(f)} | {_range(ranges.get(f.name))} | "
            f"{_cell(f.metadata['help'])} |" for f in fields]
    return "| Key | Type | Default | Range | Description |\n|---|---|---|---|---|\n" + "\n".join(rows) + "\n"


def _doc(cls) -> str:
    return inspect.cleandoc(cls.__doc__) + "\n"


def _default(f: dataclasses.Field) -> str:
    value: Any = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return f"`{value}`" if isinstance(value, str) else f"`{json.dumps(value)}`"


def _range(bounds: Range | None) -> str:
    return _cell(str(bounds)) if bounds else ""


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


if __name__ == "__main__":
    print(reference(), end="")
