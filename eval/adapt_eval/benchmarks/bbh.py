"""BIG-Bench Hard, 3-shot chain of thought, exact match (the OLMoE paper's setting), averaged over the 27 tasks.

lm-eval's `bbh_cot_fewshot` tasks (the 3 exemplars of Suzgun et al. and the "the answer is" extraction) are used as
they are, pointed at the local task files (`{"examples": [{input, target}]}`) when given. One change for chat models:
lm-eval stops generation at a blank line, which cuts a chat model's reasoning short; here a completion ends at the
end of the model's turn or where it starts a new "Q:".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapt_eval.benchmarks import lmeval_builtin, local_dataset


def _tasks() -> list[str]:
    import lm_eval

    folder = Path(lm_eval.__file__).parent / "tasks" / "bbh" / "cot_fewshot"
    return sorted(f.stem for f in folder.glob("*.yaml") if not f.stem.startswith("_"))


def task_configs(name: str, data: str | None, settings: dict[str, Any]) -> list[dict[str, Any]]:
    configs = []
    for task in _tasks():
        config = lmeval_builtin(f"bbh/cot_fewshot/{task}.yaml")
        config.update(task=f"{name}_{task}", num_fewshot=settings.get("num_fewshot", 3))
        config["generation_kwargs"] = {**config["generation_kwargs"], "until": ["\n\nQ:", "</s>"],
                                       "max_gen_toks": settings.get("max_gen_toks", 512)}
        if data:
            config.update(local_dataset(Path(data) / f"{task}.json", "test", field="examples"))
        configs.append(config)
    return configs


def summarize(results: dict[str, dict]) -> dict[str, dict]:
    """The mean of the per-task exact matches (each task counts once, as BBH is usually reported)."""
    per_task = [r["exact_match,get-answer"] for r in results.values()]
    n = sum(r["sample_len"] for r in results.values())
    mean = sum(per_task) / len(per_task)
    stderrs = [r.get("exact_match_stderr,get-answer") for r in results.values()]
    variance = sum(s ** 2 for s in stderrs if isinstance(s, (int, float))) / len(per_task) ** 2
    return {"exact_match": {"value": mean, "stderr": variance ** 0.5, "n": n}, "tasks": {"value": len(per_task)}}
