"""EXTENDING.md's touch-lists: every file they name exists, and each list names its table and the test that holds the
table equal to what implements it, so the guide cannot drift from the code."""

import re

import pytest

from conftest import REPO

GUIDE = (REPO / "EXTENDING.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", GUIDE, re.S | re.M)
    assert match, f"EXTENDING.md has no section {title!r}"
    return match.group(1)


def test_every_path_the_guide_names_exists():
    paths = {p for p in re.findall(r"`([\w./<>-]+\.(?:py|yaml|md))`", GUIDE) if "<" not in p}
    assert len(paths) >= 20
    assert sorted(p for p in paths if not (REPO / p).exists()) == []


@pytest.mark.parametrize("title, table, equality_test", [
    ("A model family", "adapt/config/families.py", "tests/test_families.py"),
    ("A benchmark", "adapt/config/benchmarks.py", "tests/test_benchmarks_table.py"),
    ("A training stage or preference loss (KTO, ORPO, ...)", "adapt/config/stages.py", "tests/test_stages.py"),
    ("An export architecture for a family already trained", "adapt/export/architectures.py",
     "tests/test_export_families.py"),
])
def test_each_list_names_its_table_and_the_test_that_keeps_it_whole(title, table, equality_test):
    section = _section(title)
    assert f"`{table}`" in section and f"`{equality_test}`" in section
    table_name = {"families.py": "FAMILIES", "benchmarks.py": "BENCHMARKS", "stages.py": "STAGES",
                  "architectures.py": "ARCHITECTURES"}[table.rsplit("/", 1)[1]]
    assert table_name in (REPO / equality_test).read_text(encoding="utf-8")  # the test reads the table itself
