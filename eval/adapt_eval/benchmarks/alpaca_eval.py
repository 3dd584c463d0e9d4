"""AlpacaEval 1.0: the win rate of the model's answers against text-davinci-003's reference answers on the 805
AlpacaEval instructions, as judged pairwise by a judge model (the OLMoE paper's "AlpacaEval 1.0 %win").

The judge prompt is alpaca_eval's `alpaca_eval_gpt4` annotator (the AlpacaEval 1.0 default: GPT-4, temperature 0,
max_tokens 100), copied from the template that the PyPI package `alpaca_eval` 0.6.6 (Apache-2.0) ships in
`evaluators_configs/alpaca_eval_gpt4/alpaca_eval.txt`, turned into chat messages as alpaca_eval does. The package
itself is not used: it needs the OpenAI client and the Hub at run time (its reference outputs load through a
dataset script that datasets 5 no longer runs), so it cannot score offline or with a local judge. Its rules are
kept: the two answers are shown in a random order, seeded per item (here by the instruction, the item's key, as
alpaca_eval seeds; lm-eval hands `process_results` the document, not its index), so the judge's position bias
cancels out; identical answers are a tie without asking the judge; a tie counts half; a reply that names no
ranking is dropped from the rate and counted in `judge_unparsed`. The reply is read leniently (the ranking
list in either quoting or key order, else the one model name it mentions).

win_rate = mean over judged items of 1 (model preferred), 0.5 (tie), 0 (reference preferred), a fraction (reports
show %); stderr = sample standard deviation / sqrt(n), as alpaca_eval's `standard_error`. Without a judge the
completions are still generated (kept in samples.jsonl, to be judged later with `adapt eval score`), and the win
rate is reported as skipped with the reason, never as 0. `avg_length` (characters) is reported either way because
the judge is known to favour long answers. Preferences decided elsewhere (by another judge, or people) are scored
by `summarize_given_preferences` (`adapt eval score` with a `preference` on each row).

Data: the local jsonl (instruction, output = the reference, generator, dataset) or the Hub file
tatsu-lab/alpaca_eval `alpaca_eval.json` (the "alpaca_eval" config; not checked offline).
"""

from __future__ import annotations

import ast
import hashlib
import math
import re
from collections.abc import Iterable
from typing import Any

from adapt_eval.benchmarks import chat_generation_task, local_dataset, score
from adapt_eval.judge import make_judge

HUB_FILE = "https://huggingface.co/datasets/tatsu-lab/alpaca_eval/resolve/main/alpaca_eval.json"
JUDGE_MAX_TOKENS = 100
JUDGE_SYSTEM = "You are a helpful assistant, that ranks models by the quality of their answers."
JUDGE_PROMPT = '''I want you to create a leaderboard of different of large-language models. To do so, I will give you the instructions (prompts) given to the models, and the responses of two models. Please rank the models based on which responses would be preferred by humans. All inputs and outputs should be python dictionaries.

Here is the prompt:
{
    "instruction": """{instruction}""",
}

Here are the outputs of the models:
[
    {
        "model": "model_1",
        "answer": """{output_1}"""
    },
    {
        "model": "model_2",
        "answer": """{output_2}"""
    }
]

Now please rank the models by the quality of their answers, so that the model with rank 1 has the best output. Then return a list of the model names and ranks, i.e., produce the following output:
[
    {'model': <model-name>, 'rank': <model-rank>},
    {'model': <model-name>, 'rank': <model-rank>}
]

Your response must be a valid Python dictionary and should contain nothing else because we will directly execute it in Python. Please provide the ranking that the majority of humans would give.'''  # noqa: E501 (alpaca_eval's text, verbatim)


def model_shown_first(item_id: str) -> bool:
    """Whether the model's answer is `model_1` for this item: a fair coin seeded by the item, the same on every run
    and machine (Python's own `hash` is salted per process)."""
    return hashlib.sha256(f"alpaca_eval:{item_id}".encode()).digest()[0] % 2 == 1


def judge_messages(instruction: str, output_1: str, output_2: str) -> list[dict[str, str]]:
    values = {"instruction": instruction, "output_1": output_1, "output_2": output_2}
    # One pass, so an answer that itself contains "{output_2}" is not substituted again.
    user = re.sub(r"\{(instruction|output_1|output_2)\}", lambda m: values[m.group(1)], JUDGE_PROMPT)
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def parse_ranking(reply: str) -> int | None:
    """Which answer the judge ranked first: 1, 2, 0 for a tie (equal ranks), None when the reply has no ranking."""
    ranks: dict[int, int] = {}
    try:  # the format the prompt asks for, as alpaca_eval's `ranking_parser` reads it
        for entry in ast.literal_eval(reply.strip()):
            ranks[{"model_1": 1, "model_2": 2}[entry["model"]]] = int(entry["rank"])
    except (ValueError, SyntaxError, TypeError, KeyError, MemoryError, RecursionError):
        ranks = {}
    if not ranks:  # otherwise each {...} that names a model and a rank, in any quoting or key order
        for chunk in re.findall(r"\{[^{}]*\}", reply):
            model, rank = re.search(r"model_([12])", chunk), re.search(r"rank\W*(\d+)", chunk)
            if model and rank:
                ranks.setdefault(int(model.group(1)), int(rank.group(1)))
    if 1 in ranks and 2 in ranks:
        return 0 if ranks[1] == ranks[2] else (1 if ranks[1] < ranks[2] else 2)
    if len(ranks) == 1:
        (model, rank), = ranks.items()
        return model if rank == 1 else 3 - model
    named = set(re.findall(r"model_([12])", reply))
    return int(named.pop()) if len(named) == 1 else None


def judge_pair(judge, instruction: str, output: str, reference: str, item_id: str | None = None) -> float | None:
    """1.0 if the judge prefers the model's output, 0.0 if the reference, 0.5 for a tie, None if unreadable."""
    if output == reference:
        return 0.5  # alpaca_eval's rule: identical answers are a draw, the judge is not asked
    first = model_shown_first(item_id if item_id is not None else instruction)
    messages = judge_messages(instruction, *((output, reference) if first else (reference, output)))
    choice = parse_ranking(judge.complete(messages, JUDGE_MAX_TOKENS))
    if choice is None:
        return None
    if choice == 0:
        return 0.5
    return 1.0 if (choice == 1) == first else 0.0


def summarize_preferences(preferences: Iterable[float | None]) -> dict[str, Any]:
    preferences = list(preferences)
    judged = [p for p in preferences if p is not None]
    n = len(judged)
    rate = sum(judged) / n if n else None
    stderr = math.sqrt(sum((p - rate) ** 2 for p in judged) / (n - 1) / n) if n > 1 else None
    return {"win_rate": rate, "stderr": stderr, "n_wins": judged.count(1.0), "n_losses": judged.count(0.0),
            "n_ties": judged.count(0.5), "n_unparsed": len(preferences) - n, "n_judged": n}


def summarize_given_preferences(preferences: list[float | None],
                                completions: list[str] | None = None) -> dict[str, dict]:
    """The metrics `summarize` gives, from preferences decided elsewhere (1 the model's answer wins, 0 the
    reference's, 0.5 tie, None unreadable); `avg_length` only when the completions are given."""
    got = summarize_preferences(preferences)
    counts = {k: got[k] for k in ("n_judged", "n_wins", "n_losses", "n_ties")}
    out: dict[str, dict] = {"win_rate": score(got["win_rate"], got["stderr"], **counts),
                            "judge_unparsed": score(got["n_unparsed"] / len(preferences) if preferences else None)}
    if got["win_rate"] is None:
        out["win_rate"]["skipped"] = "no item has a readable preference"
    if completions is not None:
        out["avg_length"] = score(sum(len(c) for c in completions) / len(completions) if completions else None)
    return out


def win_rate(items: Iterable[dict[str, str]], judge) -> dict[str, Any]:
    """Win rate of stored completions: items with `instruction`, `output` (the model's) and `reference`."""
    preferences = [judge_pair(judge, it["instruction"], it["output"], it["reference"], it.get("id")) for it in items]
    return {**summarize_preferences(preferences), "preferences": preferences}


def _process_results(judge):
    def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
        output, out = results[0], {}
        if judge:
            preference = judge_pair(judge, doc["instruction"], output, doc["output"])
            if preference is not None:  # an unreadable judgement is left out of the mean, as alpaca_eval drops it
                out["win_rate"] = preference
            out["judge_unparsed"] = float(preference is None)
        out["avg_length"] = float(len(output))
        return out

    return process_results


def task_configs(name: str, data: str | None, settings: dict[str, Any]) -> list[dict[str, Any]]:
    judge = make_judge(settings.get("judge"))  # a missing API key fails here, before any generation
    metrics = [{"metric": "avg_length", "aggregation": "mean", "higher_is_better": False}]
    if judge:
        metrics = [{"metric": "win_rate", "aggregation": "mean", "higher_is_better": True},
                   {"metric": "judge_unparsed", "aggregation": "mean", "higher_is_better": False}] + metrics
    config = chat_generation_task(
        name, "instruction", "output", settings.get("max_gen_toks", 512), _process_results(judge), metrics,
        dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": {"eval": HUB_FILE}}, test_split="eval")
    if data:
        config.update(local_dataset(data, "eval"))
    return [config]


def no_judge_reason(task: str, completions_in: str = "samples.jsonl") -> str:
    """Why the win rate is skipped without a judge, and how to score the completions later."""
    return (f"no judge configured (suite setting `judge`); the completions are in {completions_in}: score them with "
            f"`adapt eval score --task {task} --predictions {completions_in} --set {task}.judge={{...}}`, or give "
            f"each row a `preference` decided elsewhere (eval/README.md)")


def summarize(results: dict[str, dict]) -> dict[str, dict]:
    ((task, scores),) = results.items()

    def metric(key: str) -> dict[str, Any]:
        return score(scores[f"{key},none"], scores.get(f"{key}_stderr,none"))

    out = {}
    if "win_rate,none" in scores:
        out["win_rate"], out["judge_unparsed"] = metric("win_rate"), metric("judge_unparsed")
    else:
        reason = (no_judge_reason(task) if "judge_unparsed,none" not in scores
                  else "the judge's reply could not be read on any item")
        out["win_rate"] = {"value": None, "stderr": None, "skipped": reason}
    out["avg_length"] = metric("avg_length")
    return out
