"""A source's raw rows, in a shape the parallel conversion pass (`adapt.data.sources`) can split between workers
without the parent holding the rows in Python.

- `.jsonl` (and `.jsonl.gz`, decompressed once into the build folder): the byte offsets of each non-blank line, 16
  bytes a row; each worker memory-maps the file and decodes only its own lines.
- `.parquet` and Hub datasets: the memory-mapped Arrow table as it is.
- `.json` and `.csv`: parsed here and streamed into an Arrow file as one JSON text per row (a `.json` list is one
  JSON document, so it is parsed whole: for a large source use `.jsonl` or `.parquet`).
- built-in tasks: their rows (small by construction).

A line or row that cannot be decoded is kept as a bad row with its reason, so that `data.on_bad_row` counts it or
stops on it with its row number like any other bad row.
"""

from __future__ import annotations

import csv
import gzip
import json
import mmap
import shutil
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from datasets import Dataset

BOM = b"\xef\xbb\xbf"
JSON_TEXT = pa.schema([("json", pa.large_string()), ("bad", pa.string())])


@dataclass
class RawRows:
    """The rows of one source: `kind` says how a worker reads row i of `rows`.

    lines:   columns `start`, `end`: byte offsets of the row's line in the file `file` names (path:inode:size:mtime)
    json:    column `json` (the row as JSON text) or `bad` (why it could not be read)
    records: the rows themselves (a parquet file, a Hub dataset, a task's rows)
    """

    name: str
    rows: Dataset
    kind: str
    file: str | None = None


def read_local(path: str, workdir: Path, error) -> RawRows:
    """A local file's rows; `error(message)` builds the exception for a file that cannot be read at all."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise error(f"{path}: file not found")
    suffixes = [s for s in p.suffixes if s != ".gz"]
    kind = suffixes[-1] if suffixes else ""
    if kind == ".parquet":
        try:  # arrow-backed; the conversion reads it batch by batch
            return RawRows(path, Dataset.from_parquet(str(p), cache_dir=str(workdir / "parquet")), "records")
        except Exception as e:  # pyarrow raises its own error types for a corrupt file
            raise error(f"{path}: not a readable parquet file ({type(e).__name__}: {str(e)[:300]})") from None
    if kind not in (".jsonl", ".json", ".csv"):
        raise error(f"{path}: unsupported file type {''.join(p.suffixes)!r}; use .jsonl, .json, .csv or .parquet")
    try:
        if kind == ".jsonl":
            plain = _decompressed(p, workdir) if p.suffix == ".gz" else p
            starts, ends = line_offsets(plain)
            stat = plain.stat()  # names this version of the file for the workers' memory maps
            file_id = f"{plain.resolve()}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}"
            return RawRows(path, Dataset.from_dict({"start": starts, "end": ends}), "lines", file_id)
        target = workdir / f"raw-{len(list(workdir.glob('raw-*')))}.arrow"
        rows = _json_rows(p, path, error) if kind == ".json" else _csv_rows(p)
        return RawRows(path, _write_json_texts(rows, target), "json")
    except (OSError, EOFError) as e:  # a truncated or corrupt .gz, an unreadable file
        raise error(f"{path}: cannot be read ({type(e).__name__}: {e})") from None


def _decompressed(p: Path, workdir: Path) -> Path:
    target = workdir / f"{p.stem}.{len(list(workdir.glob('*.jsonl')))}.jsonl"
    with gzip.open(p, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return target


def line_offsets(path: Path) -> tuple[array, array]:
    """Byte offsets (start, end) of every non-blank line; only `\\n` ends a JSON line, a UTF-8 BOM is skipped."""
    starts, ends = array("q"), array("q")
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            return starts, ends
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            size, pos = len(mm), 3 if mm[:3] == BOM else 0
            while pos < size:
                newline = mm.find(b"\n", pos)
                end = size if newline < 0 else newline
                if not _blank(mm, pos, end):
                    starts.append(pos)
                    ends.append(end)
                pos = end + 1
    return starts, ends


def _blank(mm: mmap.mmap, start: int, end: int) -> bool:
    head = mm[start:min(end, start + 16)]
    if head.strip() and head.lstrip()[:1] in b'{["':  # the common case: a JSON value starts here
        return False
    return not mm[start:end].decode("utf-8", errors="surrogateescape").strip()


def _has_bad_bytes(value: Any) -> bool:
    """Text decoded with `surrogateescape` holds invalid UTF-8 bytes as U+DC80..U+DCFF."""
    if isinstance(value, str):
        return any("\udc80" <= c <= "\udcff" for c in value)
    if isinstance(value, dict):
        return any(_has_bad_bytes(k) or _has_bad_bytes(v) for k, v in value.items())
    if isinstance(value, list):
        return any(map(_has_bad_bytes, value))
    return False


def _text(p: Path) -> str:
    raw = gzip.open(p, "rb").read() if p.suffix == ".gz" else p.read_bytes()
    return raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")


def _json_rows(p: Path, path: str, error):
    try:
        data = json.loads(_text(p))
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON at line {e.lineno}, column {e.colno} ({e.msg})") from None
    if not isinstance(data, list):
        raise error(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
    for row in data:
        yield (None, "invalid UTF-8") if _has_bad_bytes(row) else (row, None)


def _csv_rows(p: Path):
    """CSV rows as dicts; a row whose field count differs from the header's, or that holds invalid UTF-8, is bad."""
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt", encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f, strict=True)
        try:
            header = next(reader)
        except (StopIteration, csv.Error):
            return
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield None, f"malformed CSV ({e})"
                continue
            if not fields:
                continue
            if len(fields) != len(header):
                yield None, f"malformed CSV ({len(fields)} fields, the header has {len(header)})"
            elif _has_bad_bytes(fields):
                yield None, "invalid UTF-8"
            else:
                yield dict(zip(header, fields)), None


def _write_json_texts(rows, target: Path, batch: int = 1000) -> Dataset:
    """Stream (row, bad reason) pairs into an Arrow file, `batch` rows at a time, and memory-map it."""
    with pa.OSFile(str(target), "wb") as sink, pa.ipc.new_stream(sink, JSON_TEXT) as writer:
        texts, bad = [], []

        def flush():
            writer.write_batch(pa.record_batch([pa.array(texts, pa.large_string()), pa.array(bad, pa.string())],
                                               schema=JSON_TEXT))
            texts.clear(), bad.clear()

        for row, reason in rows:
            texts.append(None if row is None else json.dumps(row))
            bad.append(reason)
            if len(texts) == batch:
                flush()
        flush()
    return Dataset.from_file(str(target))


# -------------------------------------------------------------------------------------- a worker's view of a row

_MAPS: dict[str, mmap.mmap] = {}  # file id -> the map, in each worker process


class BadRow(Exception):
    """A row that could not be decoded, with the reason the summary counts it under."""


def rows_of(batch: dict[str, list], kind: str, file: str | None) -> list[Any]:
    """The rows of a conversion batch as Python values (a `BadRow` where a row could not be decoded)."""
    if kind == "records":
        columns = list(batch)
        return [dict(zip(columns, values)) for values in zip(*batch.values())]
    if kind == "json":
        return [BadRow(bad) if bad is not None else json.loads(text) for text, bad in zip(batch["json"], batch["bad"])]
    if file not in _MAPS:  # once per worker process and file version; the OS shares the pages between workers
        for old in _MAPS.values():
            old.close()
        _MAPS.clear()
        with open(file.rsplit(":", 3)[0], "rb") as f:
            _MAPS[file] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    mm = _MAPS[file]
    return [_json_line(mm[start:end]) for start, end in zip(batch["start"], batch["end"])]


def _json_line(raw: bytes) -> Any:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        return BadRow("invalid UTF-8")
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        return BadRow(f"undecodable line ({e.msg})")
