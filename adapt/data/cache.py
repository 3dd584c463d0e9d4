"""The tokenized-mixture cache: a second run of an unchanged recipe skips reading, converting, decontaminating and
tokenizing; any change to what goes into the mixture gives a new key and a fresh build.

The key hashes everything the tokenized rows depend on: the data section (sources, counts, shuffle, seed, formats,
bad-row policy, eval split, decontamination settings), the *contents* of every input (local files and benchmark files
by sha256, Hub datasets by the fingerprint `datasets` gives the downloaded revision, built-in tasks by their code),
the tokenizer (vocabulary, merges, special tokens, chat template), max length and over-length policy, packing,
assistant-only loss, and the library versions that tokenize. Only `data.cache`/`data.cache_dir` are left out.

An entry is a folder `<cache_dir>/<key>/` with `train/`, optionally `eval/` (`Dataset.save_to_disk`),
`summary.json`, and last `files.json`: every file of the entry with its size, sha256 and stat stamp. It is written
under a temporary name and renamed into place, so an interrupted build never leaves an entry that looks complete. A
hit memory-maps the entry: seconds for the 608k-row mixture.

A hit is verified first, cheaply: every recorded file present with its size, and its content hashed again only
when its stamp (inode, modification and change times) moved since the record was written; a write to a file moves
its change time, which no tool sets back. A file written in the same clock tick as the record is hashed every
time (git's "racy" case: a write in that tick would keep the stamp). A damaged entry (a truncated Arrow file, a
summary or `state.json` edited or missing, `train/` deleted, bytes overwritten in place) is removed and rebuilt, with
a note on stderr; one that cannot be removed is one line naming it. Without the check, a truncated file was a
traceback and an overwritten token column trained on whatever the bytes then said.

Beside the entries: `file-hashes.json` (`HashMemo`: the input files' sha256 by path and stat stamp, so that computing
the key of an unchanged 2 GB input does not read it again) and, while a build runs, its `.build-*` folder of
intermediate Arrow files on the same disk (removed when the entry is written or the build fails; a build killed
outright leaves it behind, and it can be deleted).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
from datasets import Dataset, load_from_disk

from adapt.config.sections import DataSection, SequenceLayout
from adapt.data.decontam import benchmark_fingerprint
from adapt.data.sources import DataError
from adapt.tasks import get_task

FORMAT_VERSION = 3  # bump when the cached columns or summary change shape (2: int32 token columns, 3: files.json)
RECORD = "files.json"  # written last: its presence marks an entry complete


def default_cache_dir() -> Path:
    return Path(os.environ.get("ADAPT_CACHE", Path.home() / ".cache" / "adapt")) / "data"


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]


def _sha256(f: Path) -> str:
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sha256_file(f: Path, memo: dict) -> str:
    """A file's sha256, remembered against its size, inode and change times: the key of a 608k-row mixture is then
    computed without reading its gigabytes again. A write to the file changes its ctime, which no tool sets back."""
    stamp = _stamp(f.stat())
    name = str(f.resolve())
    known = memo.get(name)
    if known and known["stamp"] == stamp:
        return known["sha256"]
    memo[name] = {"stamp": stamp, "sha256": _sha256(f)}
    return memo[name]["sha256"]


def _sha256_path(path: str, memo: dict | None = None) -> str:
    p = Path(path).expanduser()
    memo = {} if memo is None else memo
    if not p.is_dir():
        return _sha256_file(p, memo)
    h = hashlib.sha256()
    for f in sorted(f for f in p.rglob("*") if f.is_file()):
        h.update(f"{f.relative_to(p)}\0{_sha256_file(f, memo)}\n".encode())
    return h.hexdigest()


class HashMemo:
    """`<cache_dir>/file-hashes.json`: the input files' hashes by path and stat stamp (written atomically)."""

    def __init__(self, cache_dir: Path):
        self.path = cache_dir / "file-hashes.json"
        try:
            self.hashes = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.hashes = {}
        self._before = dict(self.hashes)

    def save(self) -> None:
        if self.hashes == self._before:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(self.hashes, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError:
            pass  # only a speed-up: an unwritable cache folder is reported when the entry is written


def source_fingerprint(src, memo: dict | None = None) -> str:
    if src.path:
        return "sha256:" + _sha256_path(src.path, memo)
    if src.task:
        code = inspect.getsource(inspect.getmodule(type(get_task(src.task))))
        return "code:" + hashlib.sha256(code.encode()).hexdigest()
    from datasets import load_dataset

    # The fingerprint of the prepared arrow files: it changes when the resolved revision changes.
    return "datasets:" + load_dataset(src.hub, src.name, split=src.split, revision=src.revision)._fingerprint


def decontamination_fingerprint(decontaminate: dict[str, str], memo: dict | None = None) -> dict[str, str]:
    def hash_path(path):
        return _sha256_path(path, memo)

    return {name: benchmark_fingerprint(name, ref, hash_path) for name, ref in sorted(decontaminate.items())}


def tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)).encode())
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    h.update((tokenizer.chat_template or "").encode())
    return h.hexdigest()


def mixture_key(stage: str, data: DataSection, layout: SequenceLayout, tokenizer,
                memo: HashMemo | None = None) -> str:
    """With a `memo`, input files' hashes are taken from it while the files are unchanged, and new ones added."""
    import datasets
    import transformers
    import trl

    settings = dataclasses.asdict(data)
    settings.pop("cache"), settings.pop("cache_dir")
    hashes = memo.hashes if memo is not None else None
    parts = {
        "format_version": FORMAT_VERSION, "stage": stage, "data": settings,
        "inputs": [source_fingerprint(s, hashes) for s in data.sources],
        "benchmarks": decontamination_fingerprint(data.decontaminate, hashes),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "layout": {k: v for k, v in dataclasses.asdict(layout).items() if k != "num_proc"},  # num_proc: same rows
        "versions": [transformers.__version__, trl.__version__, datasets.__version__],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def load_entry(cache_dir: Path, key: str) -> tuple[Dataset, Dataset | None, dict] | None:
    """The entry's datasets and summary; None when there is no entry, or it was damaged (then it is removed, and
    the caller builds it again)."""
    entry = cache_dir / key
    if not entry.is_dir():
        return None
    problem = damage(entry)
    if problem is None:
        try:
            summary = json.loads((entry / "summary.json").read_text(encoding="utf-8"))
            held_out = load_from_disk(str(entry / "eval")) if (entry / "eval").is_dir() else None
            return load_from_disk(str(entry / "train")), held_out, summary
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as e:  # as recorded, yet unreadable
            problem = f"it cannot be read ({' '.join(str(e).split())[:200]})"
    _discard(entry, problem)
    return None


def damage(entry: Path) -> str | None:
    """What is wrong with an entry's files, in words; None when each is as it was written (module note)."""
    try:
        written = (entry / RECORD).stat().st_mtime_ns
        files = json.loads((entry / RECORD).read_text(encoding="utf-8"))["files"]
    except FileNotFoundError:
        return f"its {RECORD} is missing (a folder copied in part, or not written by adapt)"
    except (OSError, ValueError, KeyError, TypeError):
        files = None
    if not isinstance(files, dict):
        return f"its {RECORD} cannot be read"
    moved = {}
    try:
        for name, record in files.items():
            path = entry / name
            if not path.is_file():
                return f"{name} is missing"
            st = path.stat()
            if st.st_size != record["size"]:
                return f"{name} has {st.st_size} bytes, {record['size']} were written"
            stamp = _stamp(st)
            if stamp == record["stamp"] and max(stamp[2:]) < written:
                continue
            if _sha256(path) != record["sha256"]:
                return f"{name} was changed since it was written"
            moved[name] = stamp
    except (KeyError, TypeError):
        return f"its {RECORD} cannot be read"
    if moved:  # the same bytes under new stamps (a copied cache): recorded, so the next load reads nothing
        _write_record(entry, {name: {**r, "stamp": moved.get(name, r["stamp"])} for name, r in files.items()})
    return None


def _discard(entry: Path, problem: str) -> None:
    """Remove a damaged entry so that it is built again, saying so; one that cannot be removed stops the run."""
    aside = entry.with_name(f".{entry.name}.damaged-{os.getpid()}")
    try:
        os.replace(entry, aside)  # at once: no other process loads it half-deleted
    except OSError as e:
        raise DataError(f"data.cache_dir {entry.parent}: the cached mixture {entry.name} is damaged ({problem}) and "
                        f"cannot be removed ({e.strerror or e}). Fix: delete {entry}, or point data.cache_dir "
                        f"elsewhere") from None
    shutil.rmtree(aside, ignore_errors=True)
    print(f"note: data.cache_dir {entry.parent}: the cached mixture {entry.name} was damaged ({problem}); "
          f"rebuilding it", file=sys.stderr)


def _write_record(entry: Path, files: dict) -> None:
    """`files.json`, atomically; not writable (a read-only shared cache) only means the next load hashes again."""
    tmp = entry / f".{RECORD}.{os.getpid()}"
    try:
        tmp.write_text(json.dumps({"files": files}, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, entry / RECORD)
    except OSError:
        tmp.unlink(missing_ok=True)


def _record_files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): {"size": p.stat().st_size, "stamp": _stamp(p.stat()), "sha256": _sha256(p)}
            for p in sorted(folder.rglob("*")) if p.is_file()}


def save_entry(cache_dir: Path, key: str, train: Dataset, held_out: Dataset | None, summary: dict,
               num_proc: int | None = None) -> Path:
    """Write an entry under a temporary name and rename it into place. A failure (a full disk, an unwritable
    folder) removes the temporary folder and is one line naming the cache folder."""
    tmp = None
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_dir))
        train.save_to_disk(str(tmp / "train"), num_proc=num_proc if num_proc and len(train) >= num_proc else None)
        if held_out is not None:
            held_out.save_to_disk(str(tmp / "eval"))
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        # the record last: its presence is what marks the entry complete
        (tmp / RECORD).write_text(json.dumps({"files": _record_files(tmp)}, indent=1, sort_keys=True) + "\n",
                                  encoding="utf-8")
        os.replace(tmp, cache_dir / key)
    except OSError as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if not (cache_dir / key / RECORD).is_file():  # unless another process finished the same entry
            raise DataError(f"data.cache_dir {cache_dir}: cannot write the tokenized mixture ({e.strerror or e}). Fix: "
                            f"free space there, point data.cache_dir elsewhere, or set data.cache: false") from None
    return cache_dir / key
