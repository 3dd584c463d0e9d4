"""The tokenized-mixture cache: a second run of an unchanged recipe skips reading, converting, decontaminating and
tokenizing; any change to what goes into the mixture gives a new key and a fresh build.

The key hashes everything the tokenized rows depend on: the data section (sources, counts, shuffle, seed, formats,
bad-row policy, eval split, decontamination settings), the *contents* of every input (local files and benchmark files
by sha256, Hub datasets by the fingerprint `datasets` gives the downloaded revision, built-in tasks by their code),
the tokenizer (vocabulary, merges, special tokens, chat template), max length and over-length policy, packing,
assistant-only loss, and the library versions that tokenize. Only `data.cache`/`data.cache_dir` are left out.

An entry is a folder `<cache_dir>/<key>/` with `train/`, optionally `eval/` (`Dataset.save_to_disk`) and
`summary.json`. It is written under a temporary name and renamed into place, so an interrupted build never
leaves an entry that looks complete. A hit memory-maps the entry: seconds for the 608k-row mixture.

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
import tempfile
from pathlib import Path

from datasets import Dataset, load_from_disk

from adapt.config.sections import DataSection, SequenceLayout

FORMAT_VERSION = 2  # bump when the cached columns or summary change shape (2: int32 token columns)


def default_cache_dir() -> Path:
    return Path(os.environ.get("ADAPT_CACHE", Path.home() / ".cache" / "adapt")) / "data"


def _sha256_file(f: Path, memo: dict) -> str:
    """A file's sha256, remembered against its size, inode and change times: the key of a 608k-row mixture is then
    computed without reading its gigabytes again. A write to the file changes its ctime, which no tool sets back."""
    st = f.stat()
    stamp = [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]
    name = str(f.resolve())
    known = memo.get(name)
    if known and known["stamp"] == stamp:
        return known["sha256"]
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    memo[name] = {"stamp": stamp, "sha256": h.hexdigest()}
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
        from adapt.tasks import get_task

        code = inspect.getsource(inspect.getmodule(type(get_task(src.task))))
        return "code:" + hashlib.sha256(code.encode()).hexdigest()
    from datasets import load_dataset

    # The fingerprint of the prepared arrow files: it changes when the resolved revision changes.
    return "datasets:" + load_dataset(src.hub, src.name, split=src.split, revision=src.revision)._fingerprint


def decontamination_fingerprint(decontaminate: dict[str, str], memo: dict | None = None) -> dict[str, str]:
    from adapt.data.decontam import benchmark_fingerprint

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
    entry = cache_dir / key
    if not (entry / "summary.json").is_file():
        return None
    summary = json.loads((entry / "summary.json").read_text(encoding="utf-8"))
    held_out = load_from_disk(str(entry / "eval")) if (entry / "eval").is_dir() else None
    return load_from_disk(str(entry / "train")), held_out, summary


def save_entry(cache_dir: Path, key: str, train: Dataset, held_out: Dataset | None, summary: dict,
               num_proc: int | None = None) -> Path:
    """Write an entry under a temporary name and rename it into place. A failure (a full disk, an unwritable
    folder) removes the temporary folder and is one line naming the cache folder."""
    from adapt.data.sources import DataError

    tmp = None
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_dir))
        train.save_to_disk(str(tmp / "train"), num_proc=num_proc if num_proc and len(train) >= num_proc else None)
        if held_out is not None:
            held_out.save_to_disk(str(tmp / "eval"))
        # summary.json last: its presence is what marks the entry complete
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, cache_dir / key)
    except OSError as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if not (cache_dir / key / "summary.json").is_file():  # unless another process finished the same entry
            raise DataError(f"data.cache_dir {cache_dir}: cannot write the tokenized mixture ({e.strerror or e}). Fix: "
                            f"free space there, point data.cache_dir elsewhere, or set data.cache: false") from None
    return cache_dir / key
