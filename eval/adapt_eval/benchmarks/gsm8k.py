"""GSM8K, 8-shot chain of thought, exact match (the OLMoE paper's setting).

The prompt and the 8 exemplars are lm-eval's `gsm8k-cot` task, used as it is. The answer extraction is ours:
lm-eval's `strict-match` only accepts "The answer is N." and its `flexible-extract` takes the last number anywhere,
so a chat model that answers in its own style ("... so she makes $18 a day.", `\\boxed{18}`, or a program followed by
its printed output) is mis-scored by one or the other. `extract_answer` takes, in order: the last `\\boxed{...}`,
the last "answer is N", the last number printed in a ```output block (tool-integrated reasoning), else the last
number in the text; answers are compared as numbers ("18.0" == "18", "1,000" == "1000").
Checked against ToRA-70B's published GSM8K outputs: 1112/1319 = 84.3, its reported score (tests/test_eval_scorers.py).
"""

from __future__ import annotations

import re
from typing import Any

from adapt_eval.benchmarks import lmeval_builtin, local_dataset, score

NUMBER = r"-?[\d,]*\.?\d+"


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    while i < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[start + len("\\boxed{"):i - 1]


def extract_answer(text: str) -> str | None:
    """The final numeric answer of a completion, or None."""
    candidates = [_last_boxed(text)]
    candidates += re.findall(r"answer is[:\s]*\$?\s*(" + NUMBER + ")", text, flags=re.IGNORECASE)[-1:]
    if not any(candidates):
        candidates += re.findall(r"```output\n(.*?)```", text, flags=re.DOTALL)[-1:]
    for candidate in candidates:
        numbers = re.findall(NUMBER, candidate or "")
        if numbers:
            return numbers[-1]
    numbers = re.findall(NUMBER, text)
    return numbers[-1] if numbers else None


def as_number(text: str | None) -> float | None:
    try:
        return float(text.replace(",", "").rstrip(".")) if text else None
    except ValueError:
        return None


def is_correct(completion: str, gold: str) -> bool:
    predicted, expected = as_number(extract_answer(completion)), as_number(gold)
    return predicted is not None and expected is not None and abs(predicted - expected) < 1e-6 * max(1, abs(expected))


def gold_answer(doc: dict) -> str:
    return doc["answer"].split("####")[-1].strip() if "answer" in doc else str(doc["target"])


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    return {"exact_match": float(is_correct(results[0], gold_answer(doc)))}


def task_configs(name: str, data: str | None, settings: dict[str, Any]) -> list[dict[str, Any]]:
    config = lmeval_builtin("gsm8k/gsm8k-cot.yaml")
    config.update(task=name, tag=[], num_fewshot=settings.get("num_fewshot", 8), process_results=process_results,
                  metric_list=[{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}])
    config.pop("filter_list", None)  # our extraction replaces lm-eval's two regex filters (see the module note)
    # "Q:" ends a completion in the base-model few-shot format; a chat model ends its turn with EOS instead.
    config["generation_kwargs"] = {**config["generation_kwargs"], "max_gen_toks": settings.get("max_gen_toks", 512)}
    if data:
        config.update(local_dataset(data, "test"))
    return [config]


def summarize(results: dict[str, dict]) -> dict[str, dict]:
    (scores,) = results.values()
    return {"exact_match": score(scores["exact_match,none"], scores.get("exact_match_stderr,none"))}
