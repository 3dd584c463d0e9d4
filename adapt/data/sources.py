"""Turn a recipe's `data.sources` into one training `datasets.Dataset` in TRL's conversational format.

SFT rows: `messages` (a list of role/content turns) or `prompt` + `completion`. DPO rows: `prompt` + `chosen` +
`rejected`. The full mixture machinery (format converters, decontamination, packing, caching) builds on this.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datasets import Dataset, concatenate_datasets

REQUIRED = {
    "sft": (("messages",), ("prompt", "completion")),
    "dpo": (("prompt", "chosen", "rejected"),),
}


class DataError(ValueError):
    """A data problem, naming the source (file or dataset) and, where there is one, the row."""


def _read_local(path: str) -> list[dict[str, Any]]:
    p = Path(path).expanduser()
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: row {n}: not valid JSON ({e.msg}); fix or remove that line") from None
        return rows
    if p.suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
        return data
    raise DataError(f"{path}: unsupported file type {p.suffix!r}; use .jsonl or .json")


def _load_source(src, stage: str, seed: int) -> tuple[str, Dataset]:
    if src.task:
        from adapt.eval.tasks import get_task

        task = get_task(src.task)
        rows = task.sft_rows(src.split, src.rows, seed) if stage == "sft" else task.preference_rows(src.split, src.rows, seed)
        return f"task:{src.task}", Dataset.from_list(rows)
    if src.path:
        return src.path, Dataset.from_list(_read_local(src.path))
    from datasets import load_dataset

    return src.hub, load_dataset(src.hub, src.name, split=src.split, revision=src.revision)


def _check_columns(name: str, ds: Dataset, stage: str) -> tuple[str, ...]:
    for columns in REQUIRED[stage]:
        if all(c in ds.column_names for c in columns):
            return columns
    wanted = " or ".join("/".join(c) for c in REQUIRED[stage])
    raise DataError(f"{name}: {stage} data needs columns {wanted}; found {', '.join(ds.column_names) or 'none'}")


def _check_rows(name: str, ds: Dataset, columns: tuple[str, ...]) -> None:
    for n, row in enumerate(ds.select_columns(list(columns)), start=1):
        for column in columns:
            value = row[column]
            if value is None or (isinstance(value, (str, list)) and len(value) == 0):
                raise DataError(f"{name}: row {n}: empty `{column}`; fix or remove that row")


def load_training_data(data_section, stage: str) -> tuple[Dataset, Dataset | None]:
    """The concatenated sources (each shuffled/truncated as its entry says) and the held-out eval rows."""
    parts = []
    for src in data_section.sources:
        name, ds = _load_source(src, stage, data_section.seed)
        columns = _check_columns(name, ds, stage)
        _check_rows(name, ds, columns)
        if src.shuffle:
            ds = ds.shuffle(seed=data_section.seed)
        if src.rows is not None:
            ds = ds.select(range(min(src.rows, len(ds))))
        parts.append(ds.select_columns(list(columns)))
    if len({tuple(sorted(p.column_names)) for p in parts}) > 1:
        raise DataError("data.sources: sources have different formats (messages vs prompt/completion); use one")
    train = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if not data_section.eval_rows:
        return train, None
    split = train.train_test_split(test_size=data_section.eval_rows, seed=data_section.seed)
    return split["train"], split["test"]
