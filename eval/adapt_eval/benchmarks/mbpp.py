"""MBPP (Austin et al. 2021), full test split (task ids 11-510), 0-shot, pass@1, each program run in the sandbox.

The prompt gives the problem text and one of its three asserts (as EvalPlus and open-instruct's chat-format MBPP
do: the assert names the function and shows how it is called); the assistant turn is started with open-instruct's
"Here is the completed function:" and a ```python fence, and the model is stopped at the closing fence. The program
is the answer's code (see code.extract_code: a fenced chat answer works too), the problem's
`test_setup_code`, then all three asserts of `test_list` (not the challenge tests, as usual).
Default: one greedy sample; with `num_samples` n and a temperature, pass@k is the unbiased estimate from n.

lm-eval's own `mbpp` tasks are 3-shot base-model prompts and use the Hub's `code_eval` metric (offline it fails;
it runs code in-process). The local data file holds all 974 problems; `process_docs` keeps the test split.
"""

from __future__ import annotations

import re
from typing import Any

from adapt.config.benchmarks import BENCHMARKS
from adapt_eval.benchmarks import local_dataset
from adapt_eval.benchmarks.code import ANSWER_PREFIX, code_task, extract_code, sampling_kwargs, strip_scripts, summarize

__all__ = ["entry_point", "doc_to_text", "build_program", "task_configs", "summarize"]

TEST_IDS = range(11, 511)  # the paper's test split (1-10: few-shot prompts, 511-600: validation, 601-974: train)


def entry_point(doc: dict[str, Any]) -> str | None:
    """The function the asserts call: the first function of the reference code that the first assert calls."""
    called = re.findall(r"([A-Za-z_]\w*)\s*\(", doc["test_list"][0])
    defined = re.findall(r"^def\s+([A-Za-z_]\w*)", doc.get("code", ""), re.MULTILINE)
    return next((name for name in called if name in defined), None)


def doc_to_text(doc: dict[str, Any]) -> str:
    return (f"You are an expert Python programmer, and here is your task: {doc['text']} "
            f"Your code should pass this test:\n\n{doc['test_list'][0]}")


def build_program(doc: dict[str, Any], completion: str) -> str:
    code = strip_scripts(extract_code(completion, entry_point(doc)))
    tests = "\n".join(doc["test_list"])
    return f"{code}\n\n{doc.get('test_setup_code') or ''}\n\n{tests}\n"


def keep_test_problems(dataset):
    """The test problems (the Hub's `full` test split already is exactly these; the local file holds all 974)."""
    return dataset.filter(lambda doc: doc["task_id"] in TEST_IDS)


def task_configs(name: str, data: str | None, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """One lm-eval task; `data` is mbpp.jsonl (all 974 problems) or None for google-research-datasets/mbpp."""
    n = int(settings.get("num_samples", 1))
    temperature = float(settings.get("temperature", 0.0))
    prefixed = settings.get("answer_prefix", True)
    config = code_task(
        name, n, list(settings.get("k", [1])), settings, build_program,
        dataset_path=BENCHMARKS["mbpp"].hub_dataset, dataset_name=BENCHMARKS["mbpp"].hub_config,
        process_docs=keep_test_problems,
        doc_to_text=doc_to_text, doc_to_target=lambda doc: "\n".join(doc["test_list"]),
        generation_kwargs=sampling_kwargs(settings, temperature, ["```"] if prefixed else []),
    )
    if prefixed:
        config["gen_prefix"] = ANSWER_PREFIX
    if data:
        config.update(local_dataset(data, "test"))
    return [config]
