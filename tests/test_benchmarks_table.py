"""The benchmark table (adapt/config/benchmarks.py) is the one list of benchmarks: the recipe check's
`decontaminate:` names, decontamination's readers, the harness's modules and its code/sampled/judged handling all
follow it, so none of them can drift from it."""

from pathlib import Path

import pytest

from adapt.config import sections
from adapt.config.benchmarks import BENCHMARKS, LOCAL_FORMATS, benchmark
from adapt.data import decontam
from adapt.hub import card
from adapt_eval import benchmarks
from adapt_eval.benchmarks import code
from conftest import REPO

# The modules of eval/adapt_eval/benchmarks that are no benchmark (code: what HumanEval and MBPP share)
HELPERS = {"__init__", "code"}


def test_every_list_of_benchmarks_is_the_table():
    modules = {p.stem for p in (REPO / "eval" / "adapt_eval" / "benchmarks").glob("*.py")} - HELPERS
    assert set(BENCHMARKS) == set(benchmarks.NAMES) == set(sections.DECONTAMINATION_BENCHMARKS) == modules
    assert all(name == record.name for name, record in BENCHMARKS.items())


def test_each_record_is_read_by_decontamination_and_named_by_the_card():
    assert set(decontam.READERS) == set(LOCAL_FORMATS)
    for name, record in BENCHMARKS.items():
        assert record.local_format in LOCAL_FORMATS, name
        assert card._hub_dataset(name) == record.hub_dataset
        assert decontam.parse_hub_ref(name, "hub") == (record.hub_dataset, None)
    assert card._hub_dataset("my_task") == "my_task"


def test_the_flags_match_what_each_module_implements():
    code_modules = {n for n in BENCHMARKS if benchmarks.get(n).summarize is code.summarize}
    assert {n for n, b in BENCHMARKS.items() if b.code} == code_modules == {"humaneval", "mbpp"}
    assert {n for n, b in BENCHMARKS.items() if b.sampled} <= code_modules  # pass@k over drawn programs
    judged = {n for n in BENCHMARKS if hasattr(benchmarks.get(n), "summarize_given_preferences")}
    assert {n for n, b in BENCHMARKS.items() if b.judged} == judged == {"alpaca_eval"}


def test_a_local_jsonl_copy_is_read_by_the_records_prompt_field(tmp_path: Path):
    path = tmp_path / "test.jsonl"
    path.write_text('{"question": "How many apples are left over?"}\n', encoding="utf-8")
    assert decontam.read_benchmark("gsm8k", str(path)) == [("0", "How many apples are left over?")]
    path.write_text('{"task_id": "HumanEval/0", "prompt": "def f():"}\n', encoding="utf-8")
    assert decontam.read_benchmark("humaneval", str(path)) == [("HumanEval/0", "def f():")]


def test_an_unknown_benchmark_names_the_known_ones():
    with pytest.raises(KeyError, match="known: mmlu, gsm8k"):
        benchmark("gsm9k")
    with pytest.raises(KeyError, match="known: mmlu, gsm8k"):
        benchmarks.get("gsm9k")
    with pytest.raises(ValueError, match="known: mmlu, gsm8k"):
        decontam.read_benchmark("gsm9k", "x")
