"""MMLU, 0-shot, accuracy from the log-likelihood of the answer letter (the OLMoE paper's setting).

lm-eval's own `mmlu` default template (question, four lettered choices, "Answer:") is used as it is, one lm-eval
task per subject. Offline, the subjects come from the original csv release (no header: question, A, B, C, D,
letter), which `process_docs` maps into the Hub dataset's shape (question, choices, answer index) so the template
applies unchanged. The suite's score is the accuracy over all questions (subjects weighted by size, as lm-eval's
`mmlu` group reports it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapt.config.benchmarks import BENCHMARKS
from adapt_eval.benchmarks import lmeval_builtin, local_dataset

HUB = BENCHMARKS["mmlu"].hub_dataset


def _from_csv(dataset):
    letters = "ABCD"
    dataset = dataset.map(lambda row: {"choices": [row[c] for c in letters],
                                       "answer_index": letters.index(row["answer"].strip())})
    # a new column: mapping `answer` in place would keep the csv's string type ("0" is not a choice index)
    return dataset.remove_columns(["answer"]).rename_column("answer_index", "answer")


def _subjects(data: str | None) -> list[str]:
    if data:
        files = sorted(Path(data).expanduser().glob("test/*_test.csv")) or sorted(
            Path(data).expanduser().glob("*_test.csv"))
        if not files:
            raise FileNotFoundError(f"{data}: no MMLU `*_test.csv` files (expected the original release's folder)")
        return [f.name[: -len("_test.csv")] for f in files]
    import lm_eval

    folder = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
    return sorted(f.stem[len("mmlu_"):] for f in folder.glob("mmlu_*.yaml"))


def task_configs(name: str, data: str | None, settings: dict[str, Any]) -> list[dict[str, Any]]:
    template = lmeval_builtin("mmlu/default/_default_template_yaml")
    configs = []
    for subject in _subjects(data):
        config = {**template, "task": f"{name}_{subject}", "dataset_name": subject,
                  "num_fewshot": settings.get("num_fewshot", 0),
                  "description": f"The following are multiple choice questions (with answers) about "
                                 f"{subject.replace('_', ' ')}.\n\n"}
        if data:
            root = Path(data).expanduser()
            test = root / "test" / f"{subject}_test.csv" if (root / "test").is_dir() else root / f"{subject}_test.csv"
            config.update(local_dataset(test, "test", column_names=["question", "A", "B", "C", "D", "answer"],
                                        header=None))
            config["process_docs"] = _from_csv
            dev = root / "dev" / f"{subject}_dev.csv"
            if dev.is_file():
                config["dataset_kwargs"]["data_files"]["dev"] = str(dev.resolve())
            else:
                config.pop("fewshot_split", None)
        configs.append(config)
    return configs


def summarize(results: dict[str, dict]) -> dict[str, dict]:
    """Accuracy over all questions, and its standard error from the pooled Bernoulli variance."""
    n = sum(r["sample_len"] for r in results.values())
    acc = sum(r["acc,none"] * r["sample_len"] for r in results.values()) / n
    return {"acc": {"value": acc, "stderr": (acc * (1 - acc) / max(n - 1, 1)) ** 0.5, "n": n},
            "subjects": {"value": len(results)}}
