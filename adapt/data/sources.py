"""Turn a recipe's `data.sources` into one training `datasets.Dataset` in TRL's conversational format.

Each source is read (local file, Hub dataset or built-in task: `adapt.data.reading`), each row converted by its
format (`adapt.data.formats`) and checked against the decontamination index, in parallel over `num_proc` workers
that write Arrow files into the build folder; then, in the parent and on whole columns, bad rows are failed on or
counted as `data.on_bad_row` says, duplicates found, benchmark overlaps dropped, the sources shuffled, truncated and
concatenated. The parent never holds the rows in Python: only per-row flags and 16-byte digests as numpy arrays.
The per-source counts come back as a summary that the stage writes beside the model (`data_summary.json`).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import re
import shutil
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset, Features, List, Value, concatenate_datasets

from adapt.config.stages import STAGES
from adapt.data.decontam import NgramIndex, prompt_text, read_benchmark, shared_index
from adapt.data.formats import RowError, converter, detect_format
from adapt.data.reading import BadRow, RawRows, read_local, rows_of
from adapt.data.tokenize import SOURCE_COLUMN
from adapt.tasks import get_task

log = logging.getLogger(__name__)


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

TURNS = List({"role": Value("string"), "content": Value("string")})


def build_folder(parent: Path | None = None) -> Path:
    """A fresh folder for a build's intermediate Arrow files: inside `parent` (the cache folder, removed by the
    caller once the entry is written), else a temporary folder removed when the process exits."""
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".build-", dir=parent))
    folder = Path(tempfile.mkdtemp(prefix="adapt-data-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _raw_rows(src, stage: str, seed: int, workdir: Path) -> RawRows:
    if src.task:
        task = get_task(src.task)
        rows_of_task = getattr(task, STAGES[stage].task_rows)  # sft_rows, preference_rows
        return RawRows(f"task:{src.task}", Dataset.from_list(rows_of_task(src.split, src.rows, seed)), "records")
    if src.path:
        return read_local(src.path, workdir, DataError)
    from datasets import load_dataset

    ds = load_dataset(src.hub, src.name, split=src.split, revision=src.revision)
    return RawRows(f"{src.hub}@{src.revision or 'main'}:{src.split}", ds, "records")  # memory-mapped as it is


# ---------------------------------------------------------------------------------------------------- converting

_SURROGATE = re.compile("[\ud800-\udfff]")

def _first_row(raw: RawRows) -> dict | None:
    """The first decodable row, to tell the format from its columns."""
    step = 1000
    for begin in range(0, len(raw.rows), step):
        batch = raw.rows[begin:begin + step]
        row = next((r for r in rows_of(batch, raw.kind, raw.file) if isinstance(r, dict)), None)
        if row is not None:
            return row
    return None


def _convert_batch(batch: dict[str, list], indices: list[int], *, kind: str, file: str | None, fmt: str,
                   stage: str, source_id: int, identical_pairs: str, index_dir: str | None) -> dict[str, list]:
    """One worker's batch: each row converted, its 16-byte digest and its benchmark overlap, or why it is bad."""
    convert, fields, pairs = converter(fmt, stage), STAGES[stage].row_fields, STAGES[stage].pairs
    index = shared_index(index_dir) if index_dir else None
    out: dict[str, list] = {"row": [], "status": [], "error": [], "same_pair": [], "digest_hi": [], "digest_lo": [],
                            "overlap": [], SOURCE_COLUMN: [], **{f: [] for f in fields}}
    for i, row in zip(indices, rows_of(batch, kind, file)):
        converted, status, error, same, digest, overlap = None, "", "", False, b"\0" * 16, None
        try:
            if isinstance(row, BadRow):
                raise RowError(str(row))
            if not isinstance(row, dict):
                raise RowError("not an object")
            converted = _converted(convert, row)
        except RowError as e:
            status, error, converted = e.reason, str(e), None
        if converted is not None:
            same = pairs and identical_pairs == "drop" and converted["chosen"] == converted["rejected"]
            # A 16-byte digest per row, not the row's text: duplicates are found on whole columns in the parent.
            digest = hashlib.blake2b(json.dumps(converted, sort_keys=True).encode(), digest_size=16).digest()
            match = index.match(prompt_text(converted)) if index is not None else None
            if match is not None:
                overlap = json.dumps({"benchmark": match.benchmark, "item": match.item, "overlap": match.overlap})
        out["row"].append(i + 1)
        out["status"].append(status)
        out["error"].append(error)
        out["same_pair"].append(same)
        out["digest_hi"].append(int.from_bytes(digest[:8], "little", signed=True))
        out["digest_lo"].append(int.from_bytes(digest[8:], "little", signed=True))
        out["overlap"].append(overlap)
        out[SOURCE_COLUMN].append(source_id)
        for f in fields:
            out[f].append(converted[f] if converted is not None else [])
    return out


def _converted(convert, row: dict) -> dict:
    """A converter's result; a field of the wrong type (a number where text belongs, a string where turns belong)
    is a bad row like any other, not a crash."""
    try:
        converted = convert(row)
    except RowError:
        raise
    except (TypeError, AttributeError, KeyError, ValueError, IndexError) as e:
        raise RowError("malformed row", f"{type(e).__name__}: {e}") from None
    for turns in converted.values():
        for turn in turns:
            if not isinstance(turn.get("content"), str):
                raise RowError("non-text content", turn.get("role", "?"))
            if _SURROGATE.search(turn["content"]):  # a lone surrogate (a JSON `\\udc80`) is not text
                raise RowError("invalid UTF-8")
    return converted


def _features(stage: str) -> Features:
    return Features({"row": Value("int64"), "status": Value("string"), "error": Value("string"),
                     "same_pair": Value("bool"), "digest_hi": Value("int64"), "digest_lo": Value("int64"),
                     "overlap": Value("string"), SOURCE_COLUMN: Value("int32"),
                     **{f: TURNS for f in STAGES[stage].row_fields}})


def _convert(raw: RawRows, src, source_id: int, stage: str, data_section, index_dir: Path | None,
             workdir: Path, num_proc: int | None) -> tuple[Dataset, str]:
    """The source's rows converted (with each row's status, digest and overlap), and the format used."""
    first = _first_row(raw)
    fmt = src.format or (detect_format(set(first), stage) if first else None)
    if fmt is None:
        found = ", ".join(sorted(first)) if first else "no rows"
        raise DataError(f"{raw.name}: cannot tell the {stage} format from the columns ({found}); "
                        f"set `format:` on the source or rename the columns")
    try:
        converter(fmt, stage)
    except ValueError as e:
        raise DataError(f"{raw.name}: {e}") from None
    if not len(raw.rows):
        raise DataError(f"{raw.name}: no usable rows (the source is empty)")
    kwargs = {"kind": raw.kind, "file": raw.file, "fmt": fmt, "stage": stage, "source_id": source_id,
              "identical_pairs": data_section.identical_pairs, "index_dir": str(index_dir) if index_dir else None}
    converted = raw.rows.map(
        _convert_batch, batched=True, with_indices=True, fn_kwargs=kwargs, remove_columns=raw.rows.column_names,
        features=_features(stage), num_proc=_procs(num_proc, len(raw.rows)),
        cache_file_name=str(workdir / f"converted-{source_id}.arrow"), load_from_cache_file=False,
        new_fingerprint=uuid.uuid4().hex, desc=f"Converting {raw.name}")
    return converted, fmt


def _procs(num_proc: int | None, rows: int) -> int | None:
    """More workers than batches of 1,000 rows only costs start-up."""
    return None if not num_proc or num_proc < 2 or rows < 2000 else min(num_proc, rows // 1000)


# ----------------------------------------------------------------------------------- bad rows, duplicates, overlaps

def _select(converted: Dataset, name: str, fmt: str, data_section) -> tuple[np.ndarray, SourceSummary]:
    """The rows kept, in source order, and the source's counts: bad rows (or the first one, as an error),
    identical pairs, duplicates and benchmark overlaps, worked out on whole columns."""
    table = converted.data
    summary = SourceSummary(source=name, format=fmt, rows_read=len(converted))
    status = table.column("status")
    bad = pc.not_equal(status, "").to_numpy(zero_copy_only=False)
    bad_rows = np.flatnonzero(bad)
    if len(bad_rows):
        first = converted.select_columns(["row", "error"]).select(bad_rows[:5])
        if data_section.on_bad_row == "fail":
            row, error = first[0]["row"], first[0]["error"]
            raise DataError(f"{name}: row {row}: {error}; fix or remove that row, or set data.on_bad_row: skip")
        reasons = pc.value_counts(pc.filter(status, pc.not_equal(status, ""))).to_pylist()
        summary.dropped.update({r["values"]: r["counts"] for r in reasons})
        summary.examples = [f"row {r['row']}: {r['error']}" for r in first]
    same = table.column("same_pair").to_numpy(zero_copy_only=False)
    if same.any():
        summary.dropped["chosen equals rejected"] += int(same.sum())
    candidates = np.flatnonzero(~bad & ~same)
    digests = np.stack([table.column("digest_hi").to_numpy(), table.column("digest_lo").to_numpy()], axis=1)
    digests = np.ascontiguousarray(digests[candidates]).view([("hi", "<i8"), ("lo", "<i8")]).ravel()
    _, first_seen = np.unique(digests, return_index=True)
    summary.duplicates = len(candidates) - len(first_seen)
    keep = candidates
    if data_section.duplicates == "drop":
        keep = np.sort(candidates[first_seen])
        if summary.duplicates:
            summary.dropped["duplicate"] += summary.duplicates
    overlapping = pc.is_valid(table.column("overlap")).to_numpy(zero_copy_only=False)[keep]
    if overlapping.any():
        hits = converted.select_columns(["row", "overlap"]).select(keep[overlapping])
        summary.decontaminated = [{"row": r["row"], **json.loads(r["overlap"])} for r in hits]
        summary.dropped["benchmark overlap"] += len(summary.decontaminated)
    return keep[~overlapping], summary


def _decontamination_index(data_section, workdir: Path) -> Path | None:
    """The n-gram index of `data.decontaminate`'s benchmarks, built once and saved for every worker to map."""
    if not data_section.decontaminate:
        return None
    benchmarks = {}
    for name, ref in sorted(data_section.decontaminate.items()):
        try:
            benchmarks[name] = read_benchmark(name, ref)
        except (OSError, ValueError, KeyError, IndexError) as e:
            raise DataError(f"data.decontaminate.{name}: cannot read {ref!r} as {name} prompts "
                            f"({type(e).__name__}: {e}); point it at the benchmark's file as the benchmark's release "
                            f"ships it") from None
    index = NgramIndex(benchmarks, n=data_section.decontam_ngram, threshold=data_section.decontam_threshold)
    return index.save(workdir / "decontamination-index")


def read_mixture(data_section, stage: str, num_proc: int | None = None,
                 workdir: Path | None = None) -> tuple[Dataset, list[SourceSummary]]:
    """All sources concatenated in recipe order (each converted, decontaminated, shuffled/truncated as its entry
    says), with a `source_id` column giving each row's position in `data.sources`. The rows live in Arrow files in
    `workdir` (a temporary folder when None)."""
    workdir = workdir or build_folder()
    parts, summaries = [], []
    start = time.perf_counter()
    index_dir = _decontamination_index(data_section, workdir)
    if index_dir is not None:
        log.info("data: decontamination index took %.1f s", time.perf_counter() - start)
    for i, src in enumerate(data_section.sources):
        raw = _raw_rows(src, stage, data_section.seed, workdir)
        converted, fmt = _convert(raw, src, i, stage, data_section, index_dir, workdir, num_proc)
        kept, summary = _select(converted, raw.name, fmt, data_section)
        if not len(kept):
            raise DataError(f"{raw.name}: no usable rows ({dict(summary.dropped) or 'the source is empty'})")
        ds = converted.select(kept).select_columns([*STAGES[stage].row_fields, SOURCE_COLUMN])
        if src.shuffle:
            ds = ds.shuffle(seed=data_section.seed)
        if src.rows is not None and src.rows < len(ds):
            summary.rows_not_taken = len(ds) - src.rows
            ds = ds.select(range(src.rows))
        summary.rows_kept = len(ds)
        parts.append(ds)
        summaries.append(summary)
    return (concatenate_datasets(parts) if len(parts) > 1 else parts[0]), summaries


def split_eval(ds: Dataset, eval_rows: int, seed: int) -> tuple[Dataset, Dataset | None]:
    if not eval_rows:
        return ds, None
    if eval_rows >= len(ds):  # the recipe check catches it when every source gives a row count
        raise DataError(f"data.eval_rows: {eval_rows} rows held out of a mixture of {len(ds)} leaves none to train "
                        f"on. Fix: hold out fewer rows, or add data")
    split = ds.train_test_split(test_size=eval_rows, seed=seed)
    return split["train"], split["test"]
