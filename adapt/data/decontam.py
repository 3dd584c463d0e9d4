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
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

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


READERS = {
    "gsm8k": lambda p: _jsonl_field(p, "question"),
    "mmlu": _mmlu,
    "bbh": _bbh,
    "humaneval": lambda p: _jsonl_field(p, "prompt"),
    "mbpp": lambda p: _jsonl_field(p, "text"),
    "ifeval": lambda p: _jsonl_field(p, "prompt"),
    "alpaca_eval": lambda p: _jsonl_field(p, "instruction"),
    "xstest": _xstest,
}


# Where each benchmark lives on the Hub (`decontaminate: {gsm8k: hub}` or `hub:ORG/NAME@REVISION`):
# dataset, config, split, prompt field. BBH has one config per subtask; all of them are read.
HUB_BENCHMARKS = {
    "gsm8k": ("openai/gsm8k", "main", "test", "question"),
    "mmlu": ("cais/mmlu", "all", "test", "question"),
    "bbh": ("SaylorTwift/bbh", None, "test", "input"),  # lm-eval's copy, the one `adapt eval` scores
    "humaneval": ("openai/openai_humaneval", None, "test", "prompt"),
    "mbpp": ("google-research-datasets/mbpp", "full", "test", "text"),
    "ifeval": ("google/IFEval", None, "train", "prompt"),
    "alpaca_eval": ("tatsu-lab/alpaca_eval", "alpaca_eval", "eval", "instruction"),
    "xstest": ("Paul/XSTest", None, "train", "prompt"),
}


def parse_hub_ref(name: str, ref: str) -> tuple[str, str | None] | None:
    """(dataset, revision) when `ref` names the Hub (`hub`, `hub:ORG/NAME`, `hub:ORG/NAME@REV`), else None."""
    if ref != "hub" and not ref.startswith("hub:"):
        return None
    dataset, _, revision = ref[4:].partition("@")
    return dataset or HUB_BENCHMARKS[name][0], revision or None


def _hub_datasets(name: str, ref: str) -> list:
    from datasets import get_dataset_config_names, load_dataset

    dataset, revision = parse_hub_ref(name, ref)
    _, config, split, _ = HUB_BENCHMARKS[name]
    configs = [config] if name != "bbh" else get_dataset_config_names(dataset, revision=revision)
    return [(c, load_dataset(dataset, c, split=split, revision=revision)) for c in configs]


def read_benchmark(name: str, ref: str) -> list[tuple[str, str]]:
    """(item id, prompt text) for each item of a benchmark: at `ref` (a file or the benchmark's folder) or on the
    Hub (`hub`, `hub:ORG/NAME[@REVISION]`)."""
    if name not in READERS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(sorted(READERS))}")
    if parse_hub_ref(name, ref):
        field = HUB_BENCHMARKS[name][3]
        return [(f"{config or name}-{i}", row[field]) for config, ds in _hub_datasets(name, ref)
                for i, row in enumerate(ds)]
    p = Path(ref).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"benchmark {name}: {ref} not found")
    return READERS[name](p)


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


class NgramIndex:
    def __init__(self, benchmarks: dict[str, list[tuple[str, str]]], n: int = 8, threshold: float = 0.5):
        self.n, self.threshold = n, threshold
        self.index: dict[tuple[str, ...], list[int]] = defaultdict(list)
        self.items: list[tuple[str, str, int]] = []  # (benchmark, item id, n-gram count)
        self.lengths: set[int] = set()
        self.too_short: Counter = Counter()  # benchmark -> items left out of the index
        for bench, items in benchmarks.items():
            for item_id, text in items:
                tokens = words(text)
                if len(tokens) < MIN_WORDS:
                    self.too_short[bench] += 1
                    continue
                grams = self._grams(tokens, min(n, len(tokens)))
                key = len(self.items)
                self.items.append((bench, item_id, len(grams)))
                for gram in grams:
                    self.index[gram].append(key)
                self.lengths.add(len(next(iter(grams))))

    @staticmethod
    def _grams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
        return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)} if n > 0 else set()

    def match(self, text: str) -> Match | None:
        """The benchmark item this text overlaps most, if the overlap reaches the threshold."""
        tokens = words(text)
        hits: Counter = Counter()
        for n in self.lengths:
            for gram in self._grams(tokens, n):
                for key in self.index.get(gram, ()):
                    hits[key] += 1
        best = None
        for key, count in hits.items():
            bench, item_id, total = self.items[key]
            share = count / total
            if share >= self.threshold and (best is None or share > best.overlap):
                best = Match(bench, item_id, round(share, 4))
        return best


def prompt_text(row: dict) -> str:
    """The user side of a converted row (SFT `messages` or DPO `prompt`): what a benchmark prompt could leak into."""
    turns = row.get("messages") or row.get("prompt") or []
    return "\n".join(t["content"] for t in turns if t.get("role") in ("user", "system"))
