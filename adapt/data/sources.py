"""Turn a recipe's `data.sources` into one training `datasets.Dataset` in TRL's conversational format.

Each source is read (local file, Hub dataset or built-in task), each row converted by its format
(`adapt.data.formats`), bad rows failed on or skipped-and-counted as `data.on_bad_row` says, then the sources are
truncated, concatenated and split. The per-source counts come back as a summary that the stage writes beside the
model (`data_summary.json`).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, concatenate_datasets

from adapt.data.formats import RowError, converter, detect_format
from adapt.data.tokenize import SOURCE_COLUMN


class DataError(ValueError):
    """A data problem, naming the source (file or dataset) and, where there is one, the row; always one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


@dataclass
class SourceSummary:
    source: str
    format: str
    rows_read: int = 0
    rows_kept: int = 0
    rows_not_taken: int = 0  # usable rows left out by the source's `rows:` limit
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    examples: list[str] = field(default_factory=list)  # the first few dropped rows, `row N: reason`
    duplicates: int = 0  # rows repeating an earlier row of the source exactly (kept or dropped: data.duplicates)
    decontaminated: list[dict[str, Any]] = field(default_factory=list)  # every row dropped for a benchmark overlap

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "format": self.format, "rows_read": self.rows_read,
                "rows_kept": self.rows_kept, "rows_not_taken": self.rows_not_taken,
                "dropped": dict(sorted(self.dropped.items())),
                "dropped_examples": self.examples, "duplicates": self.duplicates,
                "decontaminated": self.decontaminated}


# ------------------------------------------------------------------------------------------------------- reading

class _BadLine:
    """Placeholder for a line that did not decode; becomes a counted (or fatal) bad row."""

    def __init__(self, reason: str):
        self.reason = reason


def _read_local(path: str) -> list[Any] | Dataset:
    """A local file's rows. A line or row that cannot be decoded becomes a `_BadLine` (counted or fatal as
    `data.on_bad_row` says); a file that cannot be read at all (truncated archive, JSON syntax, corrupt parquet) is a
    `DataError` naming it."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{path}: file not found")
    suffixes = [s for s in p.suffixes if s != ".gz"]
    kind = suffixes[-1] if suffixes else ""
    if kind == ".parquet":
        try:
            return Dataset.from_parquet(str(p))  # arrow-backed; rows are read one at a time while converting
        except Exception as e:  # pyarrow raises its own error types for a corrupt file
            raise DataError(f"{path}: not a readable parquet file ({type(e).__name__}: {str(e)[:300]})") from None
    if kind not in (".jsonl", ".json", ".csv"):
        raise DataError(f"{path}: unsupported file type {''.join(p.suffixes)!r}; use .jsonl, .json, .csv or .parquet")
    text = _read_text(p, path)
    if kind == ".jsonl":
        return [_json_line(line) for line in text.split("\n") if line.strip()]  # only \n ends a JSON line
    if kind == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON at line {e.lineno}, column {e.colno} ({e.msg})") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
        return [_BadLine("invalid UTF-8") if _has_bad_bytes(row) else row for row in data]
    return _csv_rows(text)


def _read_text(p: Path, path: str) -> str:
    """The file as text. Undecodable bytes are kept as surrogates (`surrogateescape`), so that only the rows holding
    them are bad; a UTF-8 byte-order mark is dropped."""
    try:
        if p.suffix == ".gz":
            with gzip.open(p, "rb") as f:
                raw = f.read()
        else:
            raw = p.read_bytes()
    except (OSError, EOFError) as e:  # a truncated or corrupt .gz, an unreadable file
        raise DataError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
    return raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")


def _has_bad_bytes(value: Any) -> bool:
    if isinstance(value, str):
        return any("\udc80" <= c <= "\udcff" for c in value)
    if isinstance(value, dict):
        return any(_has_bad_bytes(k) or _has_bad_bytes(v) for k, v in value.items())
    if isinstance(value, list):
        return any(map(_has_bad_bytes, value))
    return False


def _json_line(line: str) -> Any:
    if _has_bad_bytes(line):
        return _BadLine("invalid UTF-8")
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        return _BadLine(f"undecodable line ({e.msg})")


def _csv_rows(text: str) -> list[Any]:
    """CSV rows as dicts; a row whose field count differs from the header's, or that holds invalid UTF-8, is bad."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except (StopIteration, csv.Error):
        return []
    rows: list[Any] = []
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return rows
        except csv.Error as e:
            rows.append(_BadLine(f"malformed CSV ({e})"))
            continue
        if not fields:
            continue
        if len(fields) != len(header):
            rows.append(_BadLine(f"malformed CSV ({len(fields)} fields, the header has {len(header)})"))
        elif _has_bad_bytes(fields):
            rows.append(_BadLine("invalid UTF-8"))
        else:
            rows.append(dict(zip(header, fields)))


def _raw_rows(src, stage: str, seed: int) -> tuple[str, list[Any] | Dataset]:
    if src.task:
        from adapt.tasks import get_task

        task = get_task(src.task)
        rows_of = task.sft_rows if stage == "sft" else task.preference_rows
        rows = rows_of(src.split, src.rows, seed)
        return f"task:{src.task}", rows
    if src.path:
        return src.path, _read_local(src.path)
    from datasets import load_dataset

    ds = load_dataset(src.hub, src.name, split=src.split, revision=src.revision)
    # Kept as the memory-mapped dataset, not a list: the OLMoE mixture is 608k conversations, and only the
    # converted rows need to live in Python at once.
    return f"{src.hub}@{src.revision or 'main'}:{src.split}", ds


# ---------------------------------------------------------------------------------------------------- converting

def _convert(name: str, rows: list[Any] | Dataset, src, stage: str,
             data_section) -> tuple[list[tuple[int, dict]], SourceSummary]:
    """Converted rows with their 1-based row numbers in the source, and the source's counts so far."""
    if isinstance(rows, Dataset):
        first = rows[0] if len(rows) else None
    else:
        first = next((r for r in rows if isinstance(r, dict)), None)
    fmt = src.format or (detect_format(set(first), stage) if first else None)
    if fmt is None:
        found = ", ".join(sorted(first)) if first else "no rows"
        raise DataError(f"{name}: cannot tell the {stage} format from the columns ({found}); "
                        f"set `format:` on the source or rename the columns")
    try:
        convert = converter(fmt, stage)
    except ValueError as e:
        raise DataError(f"{name}: {e}") from None
    summary = SourceSummary(source=name, format=fmt, rows_read=len(rows))
    kept, seen = [], set()
    for n, row in enumerate(rows, start=1):
        try:
            if isinstance(row, _BadLine):
                raise RowError(row.reason)
            if not isinstance(row, dict):
                raise RowError("not an object")
            converted = _converted(convert, row)
        except RowError as e:
            if data_section.on_bad_row == "fail":
                raise DataError(f"{name}: row {n}: {e}; fix or remove that row, or set data.on_bad_row: skip") from None
            summary.dropped[e.reason] += 1
            if len(summary.examples) < 5:
                summary.examples.append(f"row {n}: {e}")
            continue
        if stage == "dpo" and data_section.identical_pairs == "drop" and converted["chosen"] == converted["rejected"]:
            summary.dropped["chosen equals rejected"] += 1
            continue
        # A 16-byte digest per row, not the row's text: the OLMoE mixture has 608k conversations.
        key = hashlib.blake2b(json.dumps(converted, sort_keys=True).encode(), digest_size=16).digest()
        if key in seen:
            summary.duplicates += 1
            if data_section.duplicates == "drop":
                summary.dropped["duplicate"] += 1
                continue
        seen.add(key)
        kept.append((n, converted))
    summary.rows_kept = len(kept)
    return kept, summary


def _converted(convert, row: dict) -> dict:
    """A converter's result; a field of the wrong type (a number where text belongs, a string where turns belong)
    is a bad row like any other, not a crash."""
    try:
        return convert(row)
    except RowError:
        raise
    except (TypeError, AttributeError, KeyError, ValueError, IndexError) as e:
        raise RowError("malformed row", f"{type(e).__name__}: {e}") from None


def _decontamination_index(data_section):
    if not data_section.decontaminate:
        return None
    from adapt.data.decontam import NgramIndex, read_benchmark

    benchmarks = {}
    for name, ref in sorted(data_section.decontaminate.items()):
        try:
            benchmarks[name] = read_benchmark(name, ref)
        except (OSError, ValueError, KeyError, IndexError) as e:
            raise DataError(f"data.decontaminate.{name}: cannot read {ref!r} as {name} prompts "
                            f"({type(e).__name__}: {e}); point it at the benchmark's file as the benchmark's release "
                            f"ships it") from None
    return NgramIndex(benchmarks, n=data_section.decontam_ngram, threshold=data_section.decontam_threshold)


def _decontaminate(numbered: list[tuple[int, dict]], index, summary: SourceSummary) -> list[dict]:
    from adapt.data.decontam import prompt_text

    kept = []
    for n, row in numbered:
        match = index.match(prompt_text(row)) if index is not None else None
        if match is None:
            kept.append(row)
            continue
        summary.dropped["benchmark overlap"] += 1
        summary.decontaminated.append({"row": n, "benchmark": match.benchmark, "item": match.item,
                                       "overlap": match.overlap})
    return kept


def read_mixture(data_section, stage: str) -> tuple[Dataset, list[SourceSummary]]:
    """All sources concatenated in recipe order (each converted, decontaminated, shuffled/truncated as its entry
    says), with a `source_id` column giving each row's position in `data.sources`."""
    parts, summaries = [], []
    index = _decontamination_index(data_section)
    for i, src in enumerate(data_section.sources):
        name, raw = _raw_rows(src, stage, data_section.seed)
        numbered, summary = _convert(name, raw, src, stage, data_section)
        rows = _decontaminate(numbered, index, summary)
        if not rows:
            raise DataError(f"{name}: no usable rows ({dict(summary.dropped) or 'the source is empty'})")
        ds = Dataset.from_list(rows)
        if src.shuffle:
            ds = ds.shuffle(seed=data_section.seed)
        if src.rows is not None and src.rows < len(ds):
            summary.rows_not_taken = len(ds) - src.rows
            ds = ds.select(range(src.rows))
        summary.rows_kept = len(ds)
        parts.append(ds.add_column(SOURCE_COLUMN, [i] * len(ds)))
        summaries.append(summary)
    return (concatenate_datasets(parts) if len(parts) > 1 else parts[0]), summaries


def split_eval(ds: Dataset, eval_rows: int, seed: int) -> tuple[Dataset, Dataset | None]:
    if not eval_rows:
        return ds, None
    split = ds.train_test_split(test_size=eval_rows, seed=seed)
    return split["train"], split["test"]
