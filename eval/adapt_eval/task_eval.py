"""Score a model on a built-in task's held-out split (`adapt.tasks`), directly with transformers, not lm-eval: task
accuracy from greedy generations, preference accuracy from log-probs. The demo uses it; suites go through `suite.py`."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from adapt.tasks.task import Task
from adapt_eval.generation import completion_logprobs, generate


def evaluate_task(model, tokenizer, task: Task, n_items: int = 200, n_pairs: int = 200, seed: int = 0,
                  max_new_tokens: int = 32) -> dict[str, Any]:
    """{"task_accuracy", "preference_accuracy", per-kind preference accuracies, counts}. Held-out split only."""
    items = task.items("test", n_items, seed)
    completions = generate(model, tokenizer, [it.prompt for it in items], max_new_tokens=max_new_tokens)
    scores = [task.score(it, c) for it, c in zip(items, completions)]
    result: dict[str, Any] = {"task_accuracy": sum(scores) / len(scores), "n_items": len(items)}

    pairs = task.preference_pairs("test", n_pairs, seed)
    prompts = [p.item.prompt for p in pairs]
    chosen = completion_logprobs(model, tokenizer, prompts, [p.chosen for p in pairs])
    rejected = completion_logprobs(model, tokenizer, prompts, [p.rejected for p in pairs])
    wins = [c > r for c, r in zip(chosen, rejected)]
    by_kind = defaultdict(list)
    for pair, win in zip(pairs, wins):
        by_kind[pair.kind].append(win)
    result["preference_accuracy"] = sum(wins) / len(wins)
    result["n_pairs"] = len(pairs)
    for kind, values in sorted(by_kind.items()):
        result[f"preference_accuracy/{kind}"] = sum(values) / len(values)
    result["samples"] = [{"id": it.id, "prompt": it.prompt, "completion": c, "score": s}
                         for it, c, s in list(zip(items, completions, scores))[:5]]
    return result
