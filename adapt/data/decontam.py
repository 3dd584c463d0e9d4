"""Decontamination: drop training rows whose prompts overlap an evaluation set's prompts.

Method (the n-gram overlap check of open-instruct / Tulu 3, word level): lower-cased word n-grams of every benchmark
prompt go into an index; a training row is contaminated by a benchmark item when the share of that item's n-grams
found in the row's user turns reaches the threshold. A prompt shorter than n words is one n-gram of its own length;
prompts under MIN_WORDS words (e.g. MMLU's `−4 + ( −3 )=`, two "words") match too much ordinary text to mean
anything, so they are left out of the index and counted (`NgramIndex.too_short`).
Written here because no maintained library does this offline on local files (open-instruct's version needs an
Elasticsearch server).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adapt.config.benchmarks import BENCHMARKS

WORD = re.compile(r"\w+")
MIN_WORDS = 5


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


# ------------------------------------------------------------------------------------------- benchmark prompt readers

def _open_text(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return f.read()


def _jsonl_field(path: Path, fieldname: str) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in _open_text(path).splitlines() if line.strip()]
    return [(str(r.get("task_id", r.get("key", i))), r[fieldname]) for i, r in enumerate(rows)]


def _files(path: Path, pattern: str) -> list[Path]:
    return sorted(path.rglob(pattern)) if path.is_dir() else [path]


def _mmlu(path: Path) -> list[tuple[str, str]]:  # header-less csv: question, A, B, C, D, answer
    out = []
    for f in _files(path, "*_test.csv"):
        for i, row in enumerate(csv.reader(io.StringIO(_open_text(f)))):
            out.append((f"{f.stem}-{i}", row[0]))
    return out


def _bbh(path: Path) -> list[tuple[str, str]]:
    out = []
    for f in _files(path, "*.json"):
        for i, ex in enumerate(json.loads(_open_text(f)).get("examples", [])):
            out.append((f"{f.stem}-{i}", ex["input"]))
    return out


def _xstest(path: Path) -> list[tuple[str, str]]:
    return [(row["id"], row["prompt"]) for row in csv.DictReader(io.StringIO(_open_text(path)))]


# How each local layout (a record's `local_format`, adapt/config/benchmarks.py) is read; JSONL by the prompt field
READERS = {
    "jsonl": lambda path, record: _jsonl_field(path, record.prompt_field),
    "mmlu_csv": lambda path, record: _mmlu(path),
    "bbh_json": lambda path, record: _bbh(path),
    "xstest_csv": lambda path, record: _xstest(path),
}


def parse_hub_ref(name: str, ref: str) -> tuple[str, str | None] | None:
    """(dataset, revision) when `ref` names the Hub (`hub`, `hub:ORG/NAME`, `hub:ORG/NAME@REV`), else None: the
    benchmark's own Hub dataset (its record) unless the reference names another copy."""
    if ref != "hub" and not ref.startswith("hub:"):
        return None
    dataset, _, revision = ref[4:].partition("@")
    return dataset or BENCHMARKS[name].hub_dataset, revision or None


def _hub_datasets(name: str, ref: str) -> list:
    from datasets import get_dataset_config_names, load_dataset

    dataset, revision = parse_hub_ref(name, ref)
    record = BENCHMARKS[name]
    configs = ([record.hub_config] if record.hub_config != "*"
               else get_dataset_config_names(dataset, revision=revision))  # "*": every config (BBH: one a subtask)
    return [(c, load_dataset(dataset, c, split=record.hub_split, revision=revision)) for c in configs]


def read_benchmark(name: str, ref: str) -> list[tuple[str, str]]:
    """(item id, prompt text) for each item of a benchmark: at `ref` (a file or the benchmark's folder) or on the
    Hub (`hub`, `hub:ORG/NAME[@REVISION]`)."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    record = BENCHMARKS[name]
    if parse_hub_ref(name, ref):
        return [(f"{config or name}-{i}", row[record.prompt_field]) for config, ds in _hub_datasets(name, ref)
                for i, row in enumerate(ds)]
    p = Path(ref).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"benchmark {name}: {ref} not found")
    return READERS[record.local_format](p, record)


def benchmark_fingerprint(name: str, ref: str, hash_path) -> str:
    """What the decontamination cache key records for a benchmark: file contents, or the Hub data's fingerprints."""
    if parse_hub_ref(name, ref):
        return "datasets:" + ",".join(ds._fingerprint for _, ds in _hub_datasets(name, ref))
    return "sha256:" + hash_path(ref)


# ------------------------------------------------------------------------------------------------------- the index

@dataclass(frozen=True)
class Match:
    benchmark: str
    item: str
    overlap: float  # share of the item's n-grams found in the training row


_FNV_PRIME = np.uint64(0x100000001B3)
_SEED = 0xCBF29CE484222325  # FNV-1a's offset basis


def gram_hashes(ids_L: np.ndarray, lengths) -> dict[int, np.ndarray]:
    """For each k in `lengths`: 64-bit hashes of the k-grams of a word-id sequence that hold no unknown word (id -1).

    FNV-style over the ids, the k-grams extended from the (k-1)-grams (one pass per word of the longest gram), and
    finished with k so that grams of different lengths do not share a hash by construction. A hash says "maybe the
    same n-gram"; `NgramIndex.match` confirms a match on the words before reporting it.
    """
    out = {}
    unknown_L = np.concatenate(([0], np.cumsum(ids_L < 0)))
    ids_u = ids_L.astype(np.uint64)
    h_W = np.full(len(ids_L), _SEED, dtype=np.uint64)
    for k in range(1, max(lengths, default=0) + 1):
        n_windows = len(ids_L) - k + 1
        if n_windows <= 0:
            break
        h_W = (h_W[:n_windows] ^ ids_u[k - 1:k - 1 + n_windows]) * _FNV_PRIME  # uint64 arithmetic wraps: a hash
        if k in lengths:
            valid_W = unknown_L[k:] == unknown_L[:-k]
            out[k] = ((h_W ^ np.uint64(k)) * _FNV_PRIME)[valid_W]
    return out


class NgramIndex:
    """Word n-grams of benchmark prompts, held in flat arrays so one index serves every worker.

    Words become ids (a vocabulary of the benchmarks' words only: a training word outside it cannot be part of a
    matching n-gram) and each n-gram a 64-bit hash; `keys_G` is the sorted hashes, `items_H[offsets_G[g]:
    offsets_G[g + 1]]` the items holding gram g. `save` writes the arrays once and `load` memory-maps them, so the
    workers of a parallel build share one copy instead of each rebuilding or unpickling its own.
    """

    ARRAYS = ("keys_G", "offsets_G", "items_H", "totals_I", "word_offsets_I", "word_ids_W")

    def __init__(self, benchmarks: dict[str, list[tuple[str, str]]] | None = None, n: int = 8,
                 threshold: float = 0.5):
        self.n, self.threshold = n, threshold
        self.items: list[tuple[str, str]] = []  # (benchmark, item id)
        self.too_short: Counter = Counter()  # benchmark -> items left out of the index
        self.vocab: dict[str, int] = {}
        if benchmarks is not None:
            self._build(benchmarks)

    def _build(self, benchmarks: dict[str, list[tuple[str, str]]]) -> None:
        item_ids, lengths = [], set()
        for bench, items in benchmarks.items():
            for item_id, text in items:
                tokens = words(text)
                if len(tokens) < MIN_WORDS:
                    self.too_short[bench] += 1
                    continue
                self.items.append((bench, item_id))
                item_ids.append([self.vocab.setdefault(w, len(self.vocab)) for w in tokens])
        grams, owners, totals = [], [], []
        for key, ids in enumerate(item_ids):
            k = min(self.n, len(ids))
            lengths.add(k)
            hashes = np.unique(gram_hashes(np.array(ids, np.int64), {k})[k])
            grams.append(hashes)
            owners.append(np.full(len(hashes), key, np.int32))
            totals.append(len(set(zip(*(ids[j:] for j in range(k))))))  # distinct n-grams: exact, not hashed
        hashes_H = np.concatenate(grams) if grams else np.empty(0, np.uint64)
        owners_H = np.concatenate(owners) if owners else np.empty(0, np.int32)
        order = np.lexsort((owners_H, hashes_H))
        hashes_H, self.items_H = hashes_H[order], owners_H[order]
        self.keys_G, first = np.unique(hashes_H, return_index=True)
        self.offsets_G = np.append(first, len(hashes_H)).astype(np.int64)
        self.totals_I = np.array(totals, np.int64)
        self.word_offsets_I = np.cumsum([0] + [len(ids) for ids in item_ids]).astype(np.int64)
        self.word_ids_W = np.array([i for ids in item_ids for i in ids], np.int64)
        self.lengths = sorted(lengths)

    # -- sharing

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for name in self.ARRAYS:
            np.save(folder / f"{name}.npy", getattr(self, name))
        meta = {"n": self.n, "threshold": self.threshold, "items": self.items, "lengths": self.lengths,
                "too_short": dict(self.too_short), "vocab": self.vocab}
        (folder / "index.json").write_text(json.dumps(meta), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: Path) -> NgramIndex:
        meta = json.loads((folder / "index.json").read_text(encoding="utf-8"))
        index = cls(None, n=meta["n"], threshold=meta["threshold"])
        index.items = [tuple(item) for item in meta["items"]]
        index.lengths, index.too_short, index.vocab = meta["lengths"], Counter(meta["too_short"]), meta["vocab"]
        for name in cls.ARRAYS:
            setattr(index, name, np.load(folder / f"{name}.npy", mmap_mode="r"))
        return index

    # -- matching

    def _item_words(self, key: int) -> np.ndarray:
        return self.word_ids_W[self.word_offsets_I[key]:self.word_offsets_I[key + 1]]

    def _candidates(self, ids_L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Items sharing a hashed n-gram with the text, and how many they share."""
        found = []
        for hashes in gram_hashes(ids_L, set(self.lengths)).values():
            pos = np.searchsorted(self.keys_G, hashes)
            inside = pos < len(self.keys_G)
            pos = pos[inside]
            hit = np.unique(pos[self.keys_G[pos] == hashes[inside]])  # each distinct gram counts once
            if len(hit):
                starts, ends = self.offsets_G[hit], self.offsets_G[hit + 1]
                lens = ends - starts
                shift = np.repeat(starts - np.concatenate(([0], np.cumsum(lens)[:-1])), lens)
                found.append(self.items_H[shift + np.arange(lens.sum())])
        if not found:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return np.unique(np.concatenate(found), return_counts=True)

    def match(self, text: str) -> Match | None:
        """The benchmark item this text overlaps most (the first such item on a tie), if the overlap reaches the
        threshold. Candidates come from the hashed index; each is confirmed on the words themselves."""
        vocab = self.vocab
        ids_L = np.array([vocab.get(w, -1) for w in words(text)], dtype=np.int64)
        keys, counts = self._candidates(ids_L)
        if not len(keys):
            return None
        shares = counts / self.totals_I[keys]
        best = None
        for i in np.lexsort((keys, -shares)):  # highest share first, then the earliest item
            if shares[i] < self.threshold or (best is not None and shares[i] < best[0]):
                break
            key = int(keys[i])
            item = self._item_words(key)
            k = min(self.n, len(item))
            item_grams = {tuple(item[j:j + k]) for j in range(len(item) - k + 1)}
            text_grams = {tuple(ids_L[j:j + k]) for j in range(len(ids_L) - k + 1)}
            share = len(item_grams & text_grams) / int(self.totals_I[key])  # exact: words, not hashes
            if share >= self.threshold and (best is None or share > best[0]):
                best = (share, key)
        if best is None:
            return None
        bench, item_id = self.items[best[1]]
        return Match(bench, item_id, round(best[0], 4))


_LOADED: dict[str, NgramIndex] = {}


def shared_index(folder: str) -> NgramIndex:
    """The index saved in `folder`, memory-mapped once per process (a conversion worker's view of it)."""
    if folder not in _LOADED:
        _LOADED.clear()  # one build at a time; a new build's index replaces the last one
        _LOADED[folder] = NgramIndex.load(Path(folder))
    return _LOADED[folder]


def prompt_text(row: dict) -> str:
    """The user side of a converted row (SFT `messages` or DPO `prompt`): what a benchmark prompt could leak into."""
    turns = row.get("messages") or row.get("prompt") or []
    return "\n".join(t["content"] for t in turns if t.get("role") in ("user", "system"))
