"""Run a suite of benchmarks on a model and write `results.json` and `samples.jsonl` (formats: eval/README.md).

    evaluate(model="runs/demo/sft", suite="olmoe-paper", data_dir="data", limit=5, output_dir=...)

Each suite task becomes lm-eval task configs (adapt_eval.benchmarks), runs through lm-eval against a journaled model
(adapt_eval.runner), and is summarised into the suite's metrics. Finished tasks are kept under
`<output_dir>/tasks/`, unfinished ones in the journal, so an interrupted run started again continues.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from adapt_eval import benchmarks

RUN_KEYS = ("benchmark", "local", "headline", "paper_limit", "batch_size")  # suite keys that are not task settings


@dataclass
class Suite:
    name: str
    tasks: dict[str, dict[str, Any]]
    paper: dict[str, dict[str, float | None]] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    path: str = ""


def load_suite(ref: str, settings: list[str] | tuple[str, ...] = ()) -> Suite:
    """A suite by name (eval/adapt_eval/suites/<name>.yaml) or by path, with `TASK.KEY=VALUE` settings applied (the
    value is YAML: `alpaca_eval.judge={endpoint: https://..., model: gpt-4o, api_key_env: OPENAI_API_KEY}`)."""
    path = Path(ref)
    if not path.is_file():
        shipped = resources.files("adapt_eval") / "suites" / f"{ref}.yaml"
        if not shipped.is_file():
            known = sorted(p.name[:-5] for p in (resources.files("adapt_eval") / "suites").iterdir()
                           if p.name.endswith(".yaml"))
            raise ValueError(f"--suite {ref}: no such suite file or shipped suite; shipped: {', '.join(known)}")
        path = Path(str(shipped))
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    for item in settings:
        _apply_setting(raw["tasks"], item)
    for name, task in raw["tasks"].items():
        if task.get("benchmark") not in benchmarks.NAMES:
            raise ValueError(f"{path}: tasks.{name}.benchmark: {task.get('benchmark')!r} is not one of "
                             f"{', '.join(benchmarks.NAMES)}")
    return Suite(raw["name"], raw["tasks"], raw.get("paper") or {}, raw.get("defaults") or {}, str(path))


def _apply_setting(tasks: dict[str, dict], item: str) -> None:
    key, sep, value = item.partition("=")
    task, _, field = key.partition(".")
    if not sep or not field:
        raise ValueError(f"--set {item}: expected TASK.KEY=VALUE, e.g. gsm8k.max_gen_toks=1024")
    if task not in tasks:
        raise ValueError(f"--set {item}: no task {task!r} in the suite ({', '.join(tasks)})")
    tasks[task][field] = yaml.safe_load(value)


def task_configs(suite: Suite, task: str, data_dir: str | None) -> list[dict[str, Any]]:
    spec = suite.tasks[task]
    data = str(Path(data_dir) / spec["local"]) if data_dir and spec.get("local") else None
    settings = {k: v for k, v in spec.items() if k not in RUN_KEYS}
    return benchmarks.get(spec["benchmark"]).task_configs(task, data, settings)


def summarize(suite: Suite, task: str, results: dict[str, dict]) -> dict[str, dict]:
    return benchmarks.get(suite.tasks[task]["benchmark"]).summarize(results)


@contextlib.contextmanager
def quiet_lmeval():
    """lm-eval with stdout kept for our own output (`adapt eval score ... | jq`): its prints ("bootstrapping for
    stddev") go to stderr, and the provenance it records but we discard (results.json records its own) is not
    collected: `git describe` (which prints "fatal: not a git repository" outside a checkout) and torch's environment
    report (~2 s). lm-eval has no option for either, so its two functions are swapped out while it runs.

    Its `apply_template` also compiles the task's Jinja template again for every call (`Environment.from_string`
    skips Jinja's template cache): for every prompt, target and few-shot example of every item. Re-scoring GSM8K's
    1,319 items compiled 25k templates, 34 of its 36 s on 2 CPU cores. While lm-eval runs, each template is compiled
    once; the rendering is lm-eval's own (its environment, filters and StrictUndefined)."""
    import lm_eval.evaluator as evaluator
    import lm_eval.utils as lm_utils

    saved = evaluator.get_git_commit_hash, evaluator.add_env_info, lm_utils.apply_template
    evaluator.get_git_commit_hash, evaluator.add_env_info = (lambda: None), (lambda storage: None)
    lm_utils.apply_template = _apply_compiled_template
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        evaluator.get_git_commit_hash, evaluator.add_env_info, lm_utils.apply_template = saved


@functools.lru_cache(maxsize=1024)
def _compiled_template(template: str):
    import lm_eval.utils as lm_utils

    return lm_utils.env.from_string(template)


def _apply_compiled_template(template: str, doc: dict) -> str:
    """lm_eval.utils.apply_template, with each template compiled once."""
    return _compiled_template(template).render(**doc)


def run_lmeval(lm, tasks: list, limit: int | None, samples: dict | None = None) -> dict[str, Any]:
    """lm-eval on our task configs (or task objects built from them). They are complete, so lm-eval's own index of
    ~10k task files is not built (`include_defaults=False`)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    with quiet_lmeval():
        return simple_evaluate(model=lm, tasks=tasks, task_manager=TaskManager(include_defaults=False),
                               limit=None if samples else limit, samples=samples, apply_chat_template=True,
                               fewshot_as_multiturn=True, log_samples=True, confirm_run_unsafe_code=True,
                               bootstrap_iters=1000)


def sample_rows(task: str, headline: str, lm_samples: dict[str, list[dict]]) -> list[dict[str, Any]]:
    """lm-eval's logged samples in the toolkit's per-sample format."""
    rows = []
    for subtask, items in sorted(lm_samples.items()):
        for s in sorted(items, key=lambda s: s["doc_id"]):
            responses = [r[0] if isinstance(r, list) else r for r in s["resps"]]
            if s["arguments"] and len(s["arguments"][0]) == 2 and isinstance(s["arguments"][0][1], str):
                # multiple choice: the "completion" is the choice with the highest log-likelihood
                logliks = [r[0] if isinstance(r, (list, tuple)) else r for r in responses]
                completions = [s["arguments"][max(range(len(logliks)), key=lambda i: logliks[i])][1].strip()]
            else:  # one entry holding every sampled completion of the item (HumanEval draws n of them)
                completions = [str(x) for r in s["resps"] for x in (r if isinstance(r, list) else [r])]
            metrics = {k: v for k, v in s.items() if k not in ("doc", "arguments", "resps", "filtered_resps")
                       and isinstance(v, (int, float)) and not isinstance(v, bool) and k != "doc_id"}
            row = {"task": task, "subtask": subtask, "item_id": s["doc_id"], "prompt": s["arguments"][0][0],
                   "completion": completions[0], "target": str(s.get("target")),
                   "score": metrics.get(headline, next(iter(metrics.values()), None)), "metrics": metrics,
                   "doc_hash": s.get("doc_hash")}
            if len(completions) > 1:
                row["completions"] = completions
            rows.append(row)
    return rows


def model_fingerprint(model_path: str) -> dict[str, Any]:
    """sha256 over config.json and each weight file's size, first and last MiB: cheap on a 14 GB model, and any
    retrained or re-exported model differs."""
    root, h = Path(model_path), hashlib.sha256()
    if not root.is_dir():
        return {"hub": model_path}
    files = sorted([root / "config.json"] + list(root.glob("*.safetensors")) + list(root.glob("*.bin")))
    for f in (f for f in files if f.is_file()):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            h.update(fh.read(1 << 20))
    return {"path": str(root), "sha256": h.hexdigest()}


def data_fingerprint(rows: list[dict]) -> str:
    """sha256 over lm-eval's per-item document hashes: the same items in the same order give the same value."""
    return hashlib.sha256("".join(r.get("doc_hash") or "" for r in rows).encode()).hexdigest()


def evaluate(model: str, suite: str | Suite = "olmoe-paper", tasks: list[str] | None = None,
             limit: int | None = None, data_dir: str | None = None, output_dir: str | Path = "eval-out",
             batch_size: int | None = None, device: str | None = None, max_length: int | None = None) -> dict:
    from adapt_eval.runner import JournaledLM, build_model  # imports lm-eval: keep `adapt eval --help` light

    suite = load_suite(suite) if isinstance(suite, str) else suite
    tasks = tasks or list(suite.tasks)
    unknown = [t for t in tasks if t not in suite.tasks]
    if unknown:
        raise ValueError(f"--tasks: {', '.join(unknown)} not in suite {suite.name} ({', '.join(suite.tasks)})")
    out = Path(output_dir)
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    started = time.time()
    inner = build_model(model, batch_size or suite.defaults.get("batch_size", 8), device, max_length)
    for task in tasks:
        spec = suite.tasks[task]
        settings = json.loads(json.dumps({k: v for k, v in spec.items() if k != "local"}, default=str))
        source = str(Path(data_dir) / spec["local"]) if data_dir else "hub"
        done = out / "tasks" / f"{task}.json"
        if done.is_file():
            previous = json.loads(done.read_text())
            if (previous["limit"], previous["settings"], previous["data"]["source"]) == (limit, settings, source):
                continue  # finished in an earlier, interrupted run with the same settings and data
        configs = task_configs(suite, task, data_dir)
        lm = JournaledLM(inner, out / "journal" / f"{task}.jsonl")
        result = run_lmeval(lm, configs, limit)
        rows = sample_rows(task, spec.get("headline", ""), result["samples"])
        record = {"task": task, "limit": limit, "scores": summarize(suite, task, result["results"]),
                  "settings": settings,
                  "data": {"source": source,
                           "items": len(rows), "fingerprint": data_fingerprint(rows)},
                  "lm_eval": {k: {m: v for m, v in r.items() if isinstance(v, (int, float, str))}
                              for k, r in result["results"].items()}}
        (out / "tasks" / f"{task}.samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        done.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return write_results(out, model, suite, tasks, limit, started)


def write_results(out: Path, model: str, suite: Suite, tasks: list[str], limit: int | None, started: float) -> dict:
    import lm_eval
    import torch
    import transformers

    records = {t: json.loads((out / "tasks" / f"{t}.json").read_text()) for t in tasks}
    results = {
        "model": model_fingerprint(model), "suite": suite.name, "limit": limit,
        "headline": {t: {"metric": suite.tasks[t].get("headline"),
                         "value": r["scores"].get(suite.tasks[t].get("headline"), {}).get("value")}
                     for t, r in records.items()},
        "tasks": records,
        "environment": {"python": platform.python_version(), "device": "cuda" if torch.cuda.is_available() else "cpu",
                        "versions": {"lm_eval": lm_eval.__version__, "transformers": transformers.__version__,
                                     "torch": torch.__version__}},
        "wall_time_s": round(time.time() - started, 1),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    with open(out / "samples.jsonl", "w", encoding="utf-8") as f:
        for t in tasks:
            f.write((out / "tasks" / f"{t}.samples.jsonl").read_text(encoding="utf-8"))
    return results
