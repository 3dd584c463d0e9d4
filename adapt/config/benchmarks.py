"""The evaluation benchmarks the toolkit knows, as data: one `Benchmark` record each, in one table.

Every place that lists benchmarks reads `BENCHMARKS`: the recipe check (`decontaminate:` names, adapt/config/recipe.py
through sections.DECONTAMINATION_BENCHMARKS), decontamination (adapt/data/decontam.py reads each benchmark's prompts
by its record: the local file's layout, the Hub dataset, the prompt field), the model card (the Hub dataset each
score is on), and the evaluation harness (eval/adapt_eval: `benchmarks.NAMES`, which tasks run code in the sandbox,
which draw several samples, which are judged against reference answers).

Why here, at the bottom: the recipe check (adapt.config) is the lowest layer that needs the names, and the data
layer needs the rest, while the harness sits above both. So the record holds only what is fixed about a benchmark,
and the harness attaches its implementation by name: the lm-eval task module `adapt_eval.benchmarks.<name>`
(adapt_eval.benchmarks.get). No record names a module of a layer above, so imports keep pointing down, and
tests/test_benchmarks_table.py holds the table equal to the harness's modules and to every list that reads it.

How a benchmark is run (few-shot count, generation length, samples, the headline metric) is the suite's, not the
record's: eval/adapt_eval/suites/olmoe-paper.yaml holds the OLMoE paper's settings, and `--set` or another suite
changes them per run.

A new benchmark is one record here, its module eval/adapt_eval/benchmarks/<name>.py, and a test of that module.
"""

from __future__ import annotations

from dataclasses import dataclass

# The layouts decontamination reads a benchmark's local copy in (adapt/data/decontam.py `READERS`).
LOCAL_FORMATS = ("jsonl", "mmlu_csv", "bbh_json", "xstest_csv")


@dataclass(frozen=True)
class Benchmark:
    name: str  # the suite's `benchmark:` key, a recipe's `decontaminate:` key, the harness module's name
    title: str  # as papers and reports write it
    # Where its items live on the Hub: dataset, config (None: the default; "*": every config, BBH's one per
    # subtask), split. The model card names this dataset beside the score, and `decontaminate: {NAME: hub}` reads it.
    hub_dataset: str
    hub_config: str | None
    hub_split: str
    # The field holding an item's prompt, on the Hub and in a local JSONL copy (decontamination's n-grams)
    prompt_field: str
    # The layout of the public release's local copy (LOCAL_FORMATS): a JSONL file of `prompt_field`s, MMLU's
    # header-less `*_test.csv` files, BBH's `*.json` files of `examples`, XSTest's csv
    local_format: str = "jsonl"
    # The model writes programs that the harness runs, in the sandbox (eval/adapt_eval/sandbox.py): `adapt eval`
    # and `adapt eval score` refuse to run without isolation (unless --unsafe-sandbox)
    code: bool = False
    # Several completions per item: the suite's `num_samples` is lm-eval's `repeats` (pass@k)
    sampled: bool = False
    # Scored by a judge comparing the model's answer with a reference answer (a win rate): without a judge the score
    # is skipped, and stored rows may carry the judge's `preference` instead (adapt eval score)
    judged: bool = False


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("mmlu", "MMLU", "cais/mmlu", "all", "test", "question", local_format="mmlu_csv"),
    Benchmark("gsm8k", "GSM8K", "openai/gsm8k", "main", "test", "question"),
    # lm-eval's copy of BBH, the one `adapt eval` scores
    Benchmark("bbh", "BBH", "SaylorTwift/bbh", "*", "test", "input", local_format="bbh_json"),
    Benchmark("humaneval", "HumanEval", "openai/openai_humaneval", None, "test", "prompt", code=True, sampled=True),
    Benchmark("mbpp", "MBPP", "google-research-datasets/mbpp", "full", "test", "text", code=True, sampled=True),
    Benchmark("alpaca_eval", "AlpacaEval", "tatsu-lab/alpaca_eval", "alpaca_eval", "eval", "instruction",
              judged=True),
    Benchmark("xstest", "XSTest", "Paul/XSTest", None, "train", "prompt", local_format="xstest_csv"),
    Benchmark("ifeval", "IFEval", "google/IFEval", None, "train", "prompt"),
)}


def benchmark(name: str) -> Benchmark:
    """The record of `name`; an unknown name is one line listing the known ones."""
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]
