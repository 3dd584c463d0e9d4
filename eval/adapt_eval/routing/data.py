"""The texts a router analysis runs on, one sample per domain (`adapt analyze --data DOMAIN=SPEC ...`).

A SPEC is one of:
- `task:NAME`: a built-in task's held-out prompts (adapt.tasks), e.g. `task:reverse`;
- `benchmark:TASK`: an evaluation benchmark's prompts as the harness poses them (lm-eval's `doc_to_text` of the
  suite task's config; its data from `--data-dir` or the Hub), e.g. `benchmark:gsm8k`, `benchmark:humaneval`;
- `suite:NAME`: every benchmark of an evaluation suite, one domain each (`DOMAIN/mmlu`, `DOMAIN/gsm8k`, ...);
- `recipe:PATH`: every source of a training recipe's data mixture, one domain each (`DOMAIN/<source>`): the
  conversations as the data layer reads them (format conversion included), user and assistant turns;
- a JSONL file whose rows carry `prompt`, `text`, `instruction` or `messages` (its turns).
Each domain takes its first `limit` texts: the sample is the same for every model and every run.
"""

from __future__ import annotations

from pathlib import Path

from adapt.config import load_recipe
from adapt.runfolder import numbered_records
from adapt.tasks import get_task
from adapt_eval.suite import load_suite, quiet_lmeval, task_configs

KINDS = ("task:", "benchmark:", "suite:", "recipe:")


def domain_texts(domains: dict[str, str], limit: int, data_dir: str | None = None) -> dict[str, list[str]]:
    """Domain name -> its texts, with `suite:` and `recipe:` specs expanded into one domain per part."""
    out: dict[str, list[str]] = {}
    for name, spec in domains.items():
        kind, _, ref = spec.partition(":") if spec.startswith(KINDS) else ("file", "", spec)
        if kind == "suite":
            parts = {f"{name}/{task}": benchmark_prompts(task, limit, data_dir, ref) for task in _suite_tasks(ref)}
        elif kind == "recipe":
            parts = {f"{name}/{source}": texts for source, texts in recipe_texts(ref, limit).items()}
        else:
            texts = {"task": task_prompts, "benchmark": benchmark_prompts, "file": file_texts}[kind](
                ref, limit, *((data_dir,) if kind == "benchmark" else ()))
            parts = {name: texts}
        for domain, texts in parts.items():
            if not texts:
                raise ValueError(f"--data {name}={spec}: no texts in {domain}")
            out[domain] = texts
    return out


def task_prompts(name: str, limit: int) -> list[str]:
    return [item.prompt for item in get_task(name).items("test", limit)]


def _suite_tasks(suite_ref: str) -> list[str]:
    return list(load_suite(suite_ref).tasks)


def benchmark_prompts(task: str, limit: int, data_dir: str | None = None, suite_ref: str = "olmoe-paper") -> list[str]:
    """The first `limit` prompts of a suite task, as lm-eval builds them from the benchmark's config (0-shot text;
    a benchmark of several subtasks, such as MMLU's subjects, gives each subtask's first items in turn)."""
    from lm_eval.api.task import ConfigurableTask

    suite = load_suite(suite_ref)
    if task not in suite.tasks:
        raise ValueError(f"benchmark:{task}: not a task of suite {suite.name} (its tasks: {', '.join(suite.tasks)})")
    with quiet_lmeval():
        docs = [(t, t.eval_docs) for t in (ConfigurableTask(config=c) for c in task_configs(suite, task, data_dir))]
    texts, depth = [], 0
    while len(texts) < limit and any(depth < len(d) for _, d in docs):
        for t, d in docs:
            if depth < len(d) and len(texts) < limit:
                text = t.doc_to_text(d[depth])
                texts.append(text if isinstance(text, str) else str(text))
        depth += 1
    return texts


def recipe_texts(path: str, limit: int) -> dict[str, list[str]]:
    """The first `limit` conversations of each source of a recipe's mixture, read by the data layer itself."""
    from adapt.data.sources import read_mixture  # TRL and datasets, needed only by `recipe:` domains
    from adapt.data.tokenize import SOURCE_COLUMN  # TRL and datasets, needed only by `recipe:` domains

    config = load_recipe(path, check_output=False, check_hardware=False)
    mixture, _ = read_mixture(config.data, config.stage)
    names = [source_label(src) for src in config.data.sources]
    names = [n if names.count(n) == 1 else f"{n}-{i}" for i, n in enumerate(names)]
    out: dict[str, list[str]] = {name: [] for name in names}
    for row in mixture:
        texts = out[names[row[SOURCE_COLUMN]]]
        if len(texts) < limit:  # SFT: the conversation; DPO: the prompt and the chosen answer
            turns = row.get("messages") or (row.get("prompt") or []) + (row.get("chosen") or [])
            texts.append("\n\n".join(t["content"] for t in turns if isinstance(t.get("content"), str)))
    return out


def source_label(src) -> str:
    return src.task or (Path(src.path).name.split(".")[0] if src.path else src.hub.split("/")[-1])


def file_texts(path: str, limit: int) -> list[str]:
    texts = []
    for n, row in numbered_records(path):  # a bad line is named with its file and line number
        text = row.get("prompt") or row.get("text") or row.get("instruction") or "\n\n".join(
            m.get("content", "") for m in row.get("messages", []) if isinstance(m, dict))
        if not isinstance(text, str) or not text:
            raise ValueError(f"{path}: line {n}: no prompt, text, instruction or messages")
        texts.append(text)
        if len(texts) >= limit:
            break
    return texts
