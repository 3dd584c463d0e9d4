"""The recipe reference (docs/recipe-reference.md) is written from the config classes: it must be current, and every
field it lists must say what it does."""

import dataclasses
from pathlib import Path

from adapt.config import reference
from adapt.config.configs import _AdaptSections
from adapt.config.sections import SECTION_TYPES, DataSource, Range, field_ranges

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "recipe-reference.md"


def test_the_committed_reference_is_current():
    assert REFERENCE.read_text(encoding="utf-8") == reference.reference(), \
        f"docs/recipe-reference.md is stale: regenerate it with `make docs` ({reference.COMMAND})"


def test_every_recipe_field_has_help():
    classes = [*SECTION_TYPES.values(), DataSource, _AdaptSections]
    missing = [f"{cls.__name__}.{f.name}" for cls in classes for f in dataclasses.fields(cls)
               if not str(f.metadata.get("help", "")).strip()]
    assert missing == [], f"give these fields metadata={{'help': ...}}: {missing}"


def test_every_field_range_is_listed_with_its_field():
    rows = reference.reference().splitlines()
    for cls in [*SECTION_TYPES.values(), DataSource, _AdaptSections]:
        for name, bounds in field_ranges(cls).items():
            assert isinstance(bounds, Range), f"{cls.__name__}.{name}"
            assert any(r.startswith(f"| `{name}` |") and f"| {bounds} |" in r for r in rows), f"{cls.__name__}.{name}"


def test_a_range_reads_as_written():
    assert (str(Range(0, False, 1, True)), str(Range(1, True)), str(Range(0, True, 1, False))) == \
        ("in (0, 1]", ">= 1", "in [0, 1)")
    assert [Range(0, False, 1, True).admits(v) for v in (0, 0.5, 1, 1.5)] == [False, True, True, False]
