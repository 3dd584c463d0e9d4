"""Re-scoring stored completions without a model (`adapt eval score`; formats: eval/README.md).

    rescore("gsm8k", "samples.jsonl", "olmoe-paper", data_dir="data", per_item="items.jsonl")

The stored completions are replayed through lm-eval by `runner.ReplayLM`, so they are scored by exactly the task
code `adapt eval` runs. Before lm-eval runs, the predictions file is checked row by row, and each problem is one
line naming the file and line (`RescoreError`): lm-eval itself only fails an assertion on a bad item id, and it
would score everything else without a word, against whatever item a row happens to land on. The checks, in order:

- each line is a JSON object with an integer `item_id` (a JSON integer: not "0", not 0.0) and `completion` /
  `completions` (AlpacaEval: or a `preference`), of a (sub)task the suite task has;
- the item id is within that (sub)task's data, and no item is given twice;
- a row's `prompt`, when it has one, contains the item's own text as lm-eval builds it (`doc_to_text`, whitespace
  collapsed). Containment, not equality: the stored prompt went through the model's chat template, with the
  few-shot examples as earlier turns, which the replay does not reproduce. A file whose ids are shifted by one
  fails here instead of being scored against the neighbouring items. Checked before the replay, not on lm-eval's
  logged prompts after it, so a judge or the code sandbox is never paid for misaligned rows;
- each item has exactly as many completions as the task draws (`num_samples`, lm-eval's `repeats`): one stored
  completion replayed 20 times would report pass@10 equal to pass@1, and extra ones would be silently dropped;
- a multiple-choice answer (MMLU's letter) is one of the item's choices: otherwise every choice would score -inf
  and lm-eval would silently take the first.

AlpacaEval rows may carry `preference` (1 the model's answer wins, 0 the reference wins, 0.5 tie, null unreadable)
decided elsewhere: the win rate is then computed from them, with no judge and no lm-eval run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapt.config.benchmarks import BENCHMARKS
from adapt_eval import benchmarks
from adapt_eval.sandbox import require_isolation
from adapt_eval.suite import Suite, load_suite, quiet_lmeval, run_lmeval, sample_rows, summarize, task_configs

NO_PREFERENCE = object()  # a row without a `preference` field (null is a preference: "unreadable")


class RescoreError(ValueError):
    """A predictions file that cannot be scored as it is; one line naming the file, the line and the fix."""


@dataclass
class Prediction:
    line: int
    subtask: str
    item_id: int
    completions: list[str]
    prompt: str | None = None
    preference: Any = NO_PREFERENCE


@dataclass
class Rescored:
    metrics: dict[str, dict]
    items: list[dict[str, Any]]  # one per scored item, as written by `per_item`
    prompts_checked: int  # rows that carry a `prompt`
    prompt_mismatches: list[int]  # lines of the predictions file, scored under `allow_prompt_mismatch`


def rescore(task: str, predictions: str | Path, suite: str | Suite = "olmoe-paper", data_dir: str | None = None,
            *, settings: list[str] | tuple[str, ...] = (), per_item: str | Path | None = None,
            allow_prompt_mismatch: bool = False) -> dict[str, dict]:
    """Metrics of stored completions for one suite task, without a model (the options: see `score_file`)."""
    return score_file(task, predictions, suite, data_dir, settings=settings, per_item=per_item,
                      allow_prompt_mismatch=allow_prompt_mismatch).metrics


def score_file(task: str, predictions: str | Path, suite: str | Suite = "olmoe-paper", data_dir: str | None = None,
               *, settings: list[str] | tuple[str, ...] = (), per_item: str | Path | None = None,
               allow_prompt_mismatch: bool = False) -> Rescored:
    """Checks the predictions file (see the module note), replays it, and writes the per-item verdicts to
    `per_item` (JSONL) when given. `settings` are `TASK.KEY=VALUE` changes of a suite given by name or path."""
    if isinstance(suite, Suite):
        if settings:
            raise ValueError("settings apply to a suite given by name or path, not to a loaded Suite")
    else:
        suite = load_suite(str(suite), settings)
    if task not in suite.tasks:
        raise ValueError(f"--task {task}: not in suite {suite.name} ({', '.join(suite.tasks)})")
    benchmark = suite.tasks[task]["benchmark"]
    rows = read_predictions(predictions, task, benchmark)
    tasks = load_tasks(suite, task, data_dir, predictions, rows)
    docs = {name: t.eval_docs for name, t in tasks.items()}  # process_docs runs on every access: once here
    check_ids(predictions, rows, docs)
    mismatched = check_prompts(predictions, rows, tasks, docs, allow_prompt_mismatch)
    if any(r.preference is not NO_PREFERENCE for r in rows):
        metrics, items = score_preferences(predictions, task, suite, rows, tasks, docs)
    else:
        check_completion_counts(predictions, task, benchmark, rows, tasks)
        check_choices(predictions, rows, tasks, docs)
        if BENCHMARKS[benchmark].code:  # before anything runs: no sandbox, no code (unless --unsafe-sandbox)
            require_isolation()
        metrics, items = replay(task, suite, rows, tasks)
        if BENCHMARKS[benchmark].judged:
            _name_the_predictions_file(metrics, task, benchmark, predictions)
    checked, lines = sum(r.prompt is not None for r in rows), sorted(r.line for r in mismatched)
    if mismatched:  # scored anyway (--allow-prompt-mismatch): counted in the output, marked per item
        metrics["prompt_mismatches"] = {"value": len(mismatched), "checked": checked}
        for item in items:
            if item["line"] in lines:
                item["prompt_mismatch"] = True
    if per_item:
        Path(per_item).parent.mkdir(parents=True, exist_ok=True)
        Path(per_item).write_text("".join(json.dumps(i, default=str) + "\n" for i in items), encoding="utf-8")
    return Rescored(metrics, items, checked, lines)


# ---- reading the file -----------------------------------------------------------------------------------------

def read_predictions(path: str | Path, task: str, benchmark: str) -> list[Prediction]:
    """The rows of `task` (rows naming another task are skipped: samples.jsonl holds every task of a run)."""
    path = Path(path)
    if not path.is_file():
        raise RescoreError(f"--predictions {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RescoreError(f"{path}: not UTF-8 text (byte {e.start})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise RescoreError(f"{path}: line {n}: not JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(row, dict):
            raise RescoreError(f"{path}: line {n}: not a JSON object")
        if row.get("task", task) == task:
            rows.append(_prediction(f"{path}: line {n}", n, row, task, benchmark))
    if not rows:
        raise RescoreError(f"{path}: no rows for task {task}")
    return rows


def _prediction(where: str, n: int, row: dict, task: str, benchmark: str) -> Prediction:
    item_id = row.get("item_id")
    # The benchmark's ids are JSON integers (samples.jsonl writes them so). "0" or 0.0 is not one: taken as 0, a
    # file of text or float ids, from another tool's numbering, was scored against whatever items the numbers hit.
    if not isinstance(item_id, int) or isinstance(item_id, bool):
        raise RescoreError(f"{where}: item_id must be an integer, got {item_id!r} (see eval/README.md)")
    texts = row.get("completions") or ([row["completion"]] if "completion" in row else [])
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise RescoreError(f"{where}: `completion` must be a string and `completions` a list of strings")
    prediction = Prediction(n, row.get("subtask") or task, item_id, texts,
                            row["prompt"] if isinstance(row.get("prompt"), str) and row["prompt"] else None)
    if "preference" in row:
        if not BENCHMARKS[benchmark].judged:
            raise RescoreError(f"{where}: `preference` is read only for judged benchmarks (AlpacaEval), not for "
                               f"{task}")
        value = row["preference"]
        if value is not None and (isinstance(value, bool) or value not in (0, 0.5, 1)):
            raise RescoreError(f"{where}: preference must be 1 (model wins), 0 (reference wins), 0.5 (tie) or "
                               f"null (unreadable), got {value!r}")
        prediction.preference = None if value is None else float(value)
    elif not texts:
        raise RescoreError(f"{where}: needs `completion` or `completions` (see eval/README.md)")
    return prediction


# ---- checks against the task's data --------------------------------------------------------------------------

def load_tasks(suite: Suite, task: str, data_dir: str | None, path: str | Path, rows: list[Prediction]) -> dict:
    """lm-eval's task objects of the (sub)tasks the rows name (their data loaded once: the replay reuses them)."""
    configs = {c["task"]: c for c in task_configs(suite, task, data_dir)}
    for row in rows:
        if row.subtask not in configs:
            known = list(configs)
            examples = ", ".join(known[:3]) + (f", ... ({len(known)} in all)" if len(known) > 3 else "")
            raise RescoreError(f"{path}: line {row.line}: subtask {row.subtask!r} is not one of {task}'s ({examples})")
    from lm_eval.tasks import TaskManager

    wanted = [configs[name] for name in dict.fromkeys(r.subtask for r in rows)]
    with quiet_lmeval():  # no index of lm-eval's own task files: these configs are complete
        return TaskManager(include_defaults=False).load(wanted)["tasks"]


def check_ids(path: str | Path, rows: list[Prediction], docs: dict[str, Any]) -> None:
    seen: dict[tuple[str, int], int] = {}
    for row in rows:
        size = len(docs[row.subtask])
        if not 0 <= row.item_id < size:
            raise RescoreError(f"{path}: line {row.line}: item_id {row.item_id} is out of range for {row.subtask} "
                               f"({size} items: 0..{size - 1})")
        first = seen.setdefault((row.subtask, row.item_id), row.line)
        if first != row.line:
            raise RescoreError(f"{path}: line {row.line}: item_id {row.item_id} of {row.subtask} is given twice, "
                               f"on lines {first} and {row.line}")


def _collapsed(text: str) -> str:
    return " ".join(text.split())


def check_prompts(path: str | Path, rows: list[Prediction], tasks: dict, docs: dict[str, Any],
                  allow: bool) -> list[Prediction]:
    """Rows whose stored prompt does not contain their item's text; an error unless `allow` (see the module note)."""
    mismatched = []
    for row in rows:
        if row.prompt is None:
            continue
        text = tasks[row.subtask].doc_to_text(docs[row.subtask][row.item_id])
        if isinstance(text, str) and _collapsed(text) not in _collapsed(row.prompt):
            mismatched.append(row)
    if mismatched and not allow:
        first, checked = mismatched[0], sum(r.prompt is not None for r in rows)
        raise RescoreError(f"{path}: line {first.line}: the stored prompt is not {first.subtask} item "
                           f"{first.item_id}'s ({len(mismatched)} of {checked} stored prompts differ from their "
                           f"items: ids shifted?); --allow-prompt-mismatch scores them anyway")
    return mismatched


def check_completion_counts(path: str | Path, task: str, benchmark: str, rows: list[Prediction], tasks: dict) -> None:
    for row in rows:
        stored, draws = len(row.completions), tasks[row.subtask].config.repeats or 1
        if stored == draws:
            continue
        fix = (f"to score the stored ones, pass --set {task}.num_samples={stored}" if BENCHMARKS[benchmark].sampled
               else "store one `completion` per item")
        raise RescoreError(f"{path}: line {row.line}: {stored} completion(s) stored for {row.subtask} item "
                           f"{row.item_id}, but {task} scores {draws} per item (num_samples); {fix}")


def check_choices(path: str | Path, rows: list[Prediction], tasks: dict, docs: dict[str, Any]) -> None:
    for row in rows:
        task = tasks[row.subtask]
        if task.OUTPUT_TYPE != "multiple_choice":
            continue
        choices = [str(c).strip() for c in task.doc_to_choice(docs[row.subtask][row.item_id])]
        if row.completions[0].strip() not in choices:
            raise RescoreError(f"{path}: line {row.line}: the stored answer {row.completions[0]!r} is not one of "
                               f"{row.subtask} item {row.item_id}'s choices ({', '.join(choices)})")


# ---- scoring --------------------------------------------------------------------------------------------------

def replay(task: str, suite: Suite, rows: list[Prediction], tasks: dict) -> tuple[dict, list[dict]]:
    from adapt_eval.runner import ReplayLM  # imports lm-eval: keep `adapt eval score --help` light

    by_item = {(r.subtask, r.item_id): r for r in rows}
    chosen = {name: sorted(i for s, i in by_item if s == name) for name in tasks}
    # lm-eval numbers the chosen items 0..k-1 in dataset order when it asks the model (the replay is keyed by that
    # position) and logs each sample under its own id (the chosen list is sorted, so position p is chosen[p])
    answers = {name: {p: by_item[(name, i)].completions for p, i in enumerate(ids)} for name, ids in chosen.items()}
    result = run_lmeval(ReplayLM(answers), list(tasks.values()), None, samples=chosen)
    items = sample_rows(task, suite.tasks[task].get("headline", ""), result["samples"])
    for item in items:
        item["line"] = by_item[(item["subtask"], item["item_id"])].line
    return summarize(suite, task, result["results"]), items


def score_preferences(path: str | Path, task: str, suite: Suite, rows: list[Prediction], tasks: dict,
                      docs: dict[str, Any]) -> tuple[dict, list[dict]]:
    """A judged benchmark's win rate (AlpacaEval's) from preferences decided elsewhere: every row needs one, and no
    judge is asked. Its module computes the rate (`summarize_given_preferences`)."""
    missing = next((r for r in rows if r.preference is NO_PREFERENCE), None)
    if missing:
        raise RescoreError(f"{path}: line {missing.line}: no `preference`, while other rows have one; give every "
                           f"row a preference, or none (to judge the completions)")
    if suite.tasks[task].get("judge"):
        raise RescoreError(f"{path}: the rows carry preferences and a judge is set ({task}.judge); use one of them")
    rows = sorted(rows, key=lambda r: (r.subtask, r.item_id))
    completions = [r.completions[0] if r.completions else None for r in rows]
    metrics = benchmarks.get(suite.tasks[task]["benchmark"]).summarize_given_preferences(
        [r.preference for r in rows], completions if all(c is not None for c in completions) else None)
    items = []
    for row, completion in zip(rows, completions):
        doc = docs[row.subtask][row.item_id]
        verdict = {"judge_unparsed": float(row.preference is None)}
        if row.preference is not None:
            verdict["win_rate"] = row.preference
        items.append({"task": task, "subtask": row.subtask, "item_id": row.item_id,
                      "prompt": tasks[row.subtask].doc_to_text(doc), "completion": completion,
                      "target": str(tasks[row.subtask].doc_to_target(doc)), "score": row.preference,
                      "metrics": verdict, "line": row.line})
    return metrics, items


def _name_the_predictions_file(metrics: dict[str, dict], task: str, benchmark: str, predictions: str | Path) -> None:
    """Without a judge a judged benchmark's win rate is skipped; its reason should point at the completions given
    here (the module's `no_judge_reason`)."""
    module = benchmarks.get(benchmark)
    if metrics.get("win_rate", {}).get("skipped") == module.no_judge_reason(task):
        metrics["win_rate"]["skipped"] = module.no_judge_reason(task, str(predictions))
