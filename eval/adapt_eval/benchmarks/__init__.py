"""The benchmarks of the OLMoE paper, each an lm-evaluation-harness task config built from our suite settings.

Which benchmarks exist, and what is fixed about each (its Hub dataset, whether it runs code, draws several samples or
is judged), is the table adapt/config/benchmarks.py; this package holds each one's implementation, the module named
after its record (`adapt_eval.benchmarks.<name>`), and tests/test_benchmarks_table.py holds the two equal.

Every benchmark module is a `Benchmark` (the Protocol below; a module satisfies it by its two functions, no base
class): `task_configs(name, data, settings) -> list[dict]` gives lm-eval task config dicts (callables allowed) that
`adapt_eval.suite` hands to `lm_eval.simple_evaluate`, and `summarize(results) -> dict` turns lm-eval's
per-(sub)task results into the suite's metrics. `code.py` is not a benchmark: HumanEval and MBPP share it. `data` is
a local file or folder (offline) or None (the Hub dataset the module names). lm-eval supplies few-shot construction,
chat templating, batching, filters and standard errors; a module writes only what lm-eval lacks offline or gets
wrong for chat models (said in each).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from adapt.config.benchmarks import BENCHMARKS

NAMES = tuple(BENCHMARKS)


@runtime_checkable
class Benchmark(Protocol):
    """What the suite needs of a benchmark (torchtune's recipe interfaces are the model: a Protocol, no base class)."""

    def task_configs(self, name: str, data: str | None, settings: dict[str, Any]) -> list[dict[str, Any]]:
        """lm-eval task configs for the suite task `name`. `data`: the local file or folder, or None for the Hub.
        `settings`: the suite's keys for this task (num_fewshot, max_gen_toks, judge, ...)."""
        ...

    def summarize(self, results: dict[str, dict]) -> dict[str, dict]:
        """The suite's metrics, `{metric: score(...)}`, from lm-eval's results of those configs (keyed by task)."""
        ...


def get(name: str) -> Benchmark:
    """The implementation of the benchmark table's record `name`: the module named after it."""
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(NAMES)}")
    return importlib.import_module(f"adapt_eval.benchmarks.{name}")


def lmeval_builtin(relative: str) -> dict[str, Any]:
    """A task YAML shipped inside the installed lm-eval, with its `include`s and `!function`s resolved: we extend
    lm-eval's own task definitions instead of copying them."""
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(Path(os.path.dirname(lm_eval.__file__)) / "tasks" / relative, resolve_func=True, recursive=True)


def local_dataset(path: str | Path, split: str, **kwargs) -> dict[str, Any]:
    """Config keys that point a task at a local json/jsonl(.gz)/csv file instead of the Hub."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: benchmark data file not found")
    kind = "csv" if ".csv" in path.suffixes else "json"
    return {"dataset_path": kind, "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: str(path.resolve())}, **kwargs}, "test_split": split}


def score(value, stderr=None, **extra) -> dict[str, Any]:
    """One metric of a summary; lm-eval reports a missing standard error as the string "N/A"."""
    return {"value": value, "stderr": stderr if isinstance(stderr, (int, float)) else None, **extra}


def lmeval_metrics(results: dict[str, dict]) -> dict[str, dict]:
    """The metrics of one lm-eval task as they are (`name,filter` -> name), with their standard errors."""
    (scores,) = results.values()
    out: dict[str, dict] = {}
    for key, value in scores.items():
        metric, _, _ = key.partition(",")
        if "," in key and not metric.endswith("_stderr") and isinstance(value, (int, float)):
            out[metric] = score(value, scores.get(key.replace(",", "_stderr,", 1)))
    return out


def chat_generation_task(name: str, prompt_field: str, target: str, max_gen_toks: int, process_results,
                         metrics: list[dict], **dataset) -> dict[str, Any]:
    """A 0-shot task whose prompt is one field of the item and whose answer runs to the end of the model's turn
    (no stop strings: lm-eval's default "\n\n" would keep only a chat answer's first paragraph)."""
    return {"task": name, "output_type": "generate_until", **dataset,
            "doc_to_text": lambda doc: doc[prompt_field], "doc_to_target": target,
            "generation_kwargs": {"until": [], "do_sample": False, "temperature": 0.0, "max_gen_toks": max_gen_toks},
            "process_results": process_results, "metric_list": metrics, "metadata": {"version": 1.0}}
