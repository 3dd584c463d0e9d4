"""IFEval, strict and loose accuracy at prompt and instruction level (the paper reports loose prompt-level).

lm-eval's `ifeval` task (its port of Google's checker, which agreed with the official per-prompt results on
538/540 strict and 539/540 loose GPT-4 responses) is used as it is, pointed at local data when given. Its checker
needs nltk's `punkt_tab` tokenizer data; `adapt_eval.nltk_data.ensure_punkt_tab` finds it offline first, because
without it 64 of the 541 prompts fail while scoring and a short smoke run would not show it.
"""

from __future__ import annotations

from typing import Any

from adapt_eval.benchmarks import lmeval_builtin, local_dataset, score
from adapt_eval.nltk_data import ensure_punkt_tab

METRICS = ("prompt_level_strict_acc", "prompt_level_loose_acc", "inst_level_strict_acc", "inst_level_loose_acc")


def task_configs(name: str, data: str | None, settings: dict[str, Any]) -> list[dict[str, Any]]:
    ensure_punkt_tab()  # before lm-eval imports its checker, which tries to download it
    config = lmeval_builtin("ifeval/ifeval.yaml")
    config["task"] = name
    config["generation_kwargs"] = {**config["generation_kwargs"], "max_gen_toks": settings.get("max_gen_toks", 1280)}
    if data:
        config.update(local_dataset(data, "train"))
    return [config]


def summarize(results: dict[str, dict]) -> dict[str, dict]:
    (scores,) = results.values()
    return {m: score(scores[f"{m},none"], scores.get(f"{m}_stderr,none")) for m in METRICS}
