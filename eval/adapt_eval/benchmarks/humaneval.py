"""HumanEval (Chen et al. 2021), 0-shot, pass@k from n samples, each program run in the sandbox (code.py).

Setting of the OLMoE paper (open-instruct's `codex_humaneval` in chat format): n=20 samples at temperature 0.8,
top-p 0.95, pass@10 reported. The prompt is open-instruct's: the user turn is "Complete the following python
function." and the problem; the assistant turn is started for the model with "Here is the completed function:" and
a ```python fence that already holds the problem, so the model continues the function body and is stopped at the
closing fence or at the next top-level statement. `build_program` also takes answers that ignore that start (a
fenced chat answer, one that writes the whole function again, one that forgets to indent the body), so completions
produced elsewhere are rescored fairly.

Why not lm-eval's `humaneval` task: it loads the Hub's `code_eval` metric (fails offline) and executes completions
in threads of the evaluating process, which is no sandbox. Without a filter lm-eval keeps only the first of the n
samples, so the config carries one that keeps them all.
Checked (tests/test_code_eval.py): all 164 canonical solutions pass; EvalPlus's published greedy Llama-3-8B-Instruct
solutions score 105/164 = 64.0 base pass@1, task by task the same as EvalPlus's own base_status.
"""
from __future__ import annotations

import re
import textwrap
from typing import Any

from adapt.config.benchmarks import BENCHMARKS
from adapt_eval.benchmarks import local_dataset
from adapt_eval.benchmarks.code import (
    ANSWER_PREFIX,
    code_task,
    extract_code,
    parses,
    sampling_kwargs,
    strip_scripts,
    summarize,
)

__all__ = ["build_program", "task_configs", "summarize"]

INSTRUCTION = "Complete the following python function.\n\n\n"
# open-instruct's stops: the closing fence, and any new top-level statement after the function body
UNTIL = ["\n```", "\nclass", "\ndef", "\n#", "\nif", "\nprint"]


def _continue(prompt: str, body: str) -> str:
    """prompt + body. The prompt ends inside the function, so a body the model wrote without indentation is meant
    as the function's body (unindented it would often still parse, as top-level code): indented if that parses."""
    if not body.strip() or body.lstrip("\n")[:1] in (" ", "\t"):
        return prompt + body
    indented = textwrap.indent(body, "    ")
    return prompt + indented if parses(prompt + indented) else prompt + body


def build_program(doc: dict[str, Any], completion: str) -> str:
    """The program that tests one completion: solution, then the problem's `check`, then `check(entry_point)`.

    A completion that defines the entry point at top level (the whole function written again) follows the prompt
    instead of continuing it: the prompt's stub (a docstring-only body, which is valid Python) keeps the imports and
    helper functions the answer may leave out, and the answer's definition replaces the stub.
    """
    prompt, entry_point = doc["prompt"], doc["entry_point"]
    code = extract_code(completion, entry_point, prompt)
    if re.search(rf"^(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", textwrap.dedent(code), re.MULTILINE):
        solution = prompt + "\n" + textwrap.dedent(code)
    else:
        solution = _continue(prompt, code)
    return f"{strip_scripts(solution)}\n\n{doc['test']}\n\ncheck({entry_point})\n"


def task_configs(name: str, data: str | None, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """One lm-eval task; `data` is HumanEval.jsonl(.gz) or None for the Hub's openai/openai_humaneval."""
    n = int(settings.get("num_samples", 20))
    temperature = float(settings.get("temperature", 0.8))
    prefixed = settings.get("answer_prefix", True)
    config = code_task(
        name, n, list(settings.get("k", [1, 10])), settings, build_program,
        dataset_path=BENCHMARKS["humaneval"].hub_dataset,
        doc_to_text=lambda doc: INSTRUCTION + doc["prompt"],
        doc_to_target=lambda doc: f"{doc['test']}\ncheck({doc['entry_point']})",
        generation_kwargs=sampling_kwargs(settings, temperature, UNTIL if prefixed else []),
    )
    if prefixed:
        config["gen_prefix"] = ANSWER_PREFIX + "{{prompt}}"
    if data:
        config.update(local_dataset(data, "test"))
    return [config]
