"""Decontamination on real data: eval prompts planted into a real training set are caught, real rows are kept."""

import json

import pytest

from adapt.config.sections import DataSection, DataSource
from adapt.data.decontam import NgramIndex, read_benchmark
from conftest import mixture_rows

BENCHMARKS = {
    "gsm8k": "gsm8k/test.jsonl", "mmlu": "mmlu/test", "bbh": "bbh/bbh", "humaneval": "humaneval/HumanEval.jsonl.gz",
    "ifeval": "ifeval/input_data.jsonl", "alpaca_eval": "alpaca_eval/alpaca_eval.jsonl",
    "xstest": "xstest/xstest_prompts.csv",
}


def test_index_matches_overlap_share():
    index = NgramIndex({"b": [("x", "one two three four five six seven eight nine ten")]}, n=4, threshold=0.5)
    assert index.match("please: one two three four five six seven eight nine ten!").overlap == 1.0
    assert index.match("one two three four five six") is None  # 3 of the item's 7 4-grams < 0.5
    assert index.match("one two three four five six seven").overlap == pytest.approx(4 / 7, abs=1e-4)
    assert index.match("ten nine eight seven six five four three") is None
    short = NgramIndex({"mmlu": [("m", "−4 + ( −3 )=")]}, n=8)
    assert short.too_short == {"mmlu": 1} and short.match("4, 3") is None


def test_planted_eval_prompts_are_caught_and_real_rows_kept(shared, tmp_path):
    data = shared / "data"
    benchmarks = {name: str(data / rel) for name, rel in BENCHMARKS.items()}
    rows = json.loads((data / "sft/code_alpaca_2k.json").read_text())
    planted = {}
    for k, name in enumerate(sorted(benchmarks)):
        items = [it for it in read_benchmark(name, benchmarks[name]) if len(it[1].split()) >= 8]
        item_id, prompt = items[len(items) // 2]
        row_number = 100 + 150 * k  # 1-based row numbers, spread through the file
        rows[row_number - 1] = {"instruction": f"Please answer the following.\n{prompt}", "input": "",
                                "output": "An answer."}
        planted[row_number] = (name, item_id)
    path = tmp_path / "planted.json"
    path.write_text(json.dumps(rows))

    section = DataSection(sources=[DataSource(path=str(path))], on_bad_row="skip", decontaminate=benchmarks)
    summary = mixture_rows(section, "sft").sources[0]
    caught = {d["row"]: (d["benchmark"], d["item"]) for d in summary["decontaminated"]}
    assert caught == planted  # every planted prompt, with the benchmark item it came from, and nothing else
    assert summary["dropped"]["benchmark overlap"] == len(planted)
    assert summary["rows_kept"] + sum(summary["dropped"].values()) == len(rows)
