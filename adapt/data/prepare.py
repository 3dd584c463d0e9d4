"""The training data a stage hands its trainer: read -> convert -> decontaminate -> tokenize -> length policy ->
split -> pack, or the same result from the cache. Also the data summary that `adapt data` prints and every run
writes as `data_summary.json`.

The summary is deterministic (no times, no cache hit/miss, no absolute cache path), so the same recipe and inputs
give the same bytes; whether the cache was used is logged instead.
"""

from __future__ import annotations

import logging
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset

from adapt.config.sections import DataSection, SequenceLayout
from adapt.config.stages import STAGES
from adapt.data import cache
from adapt.data.sources import DataError, build_folder, read_mixture, split_eval
from adapt.data.tokenize import SOURCE_COLUMN, pack, tokenize_mixture

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    train: Dataset
    eval: Dataset | None
    summary: dict[str, Any]
    cache_entry: Path | None = None  # the cache folder used or written (None with `data.cache: false`)
    from_cache: bool = False


def training_template(stage: str, data: DataSection, tokenizer) -> str | None:
    """The chat template that marks assistant turns for `data.assistant_only_loss`: None when the tokenizer's own has
    `{% generation %}` marks; else TRL's patched training template for known model families. Checked before
    tokenizing 600k rows, not after."""
    if not STAGES[stage].token_labels or not data.assistant_only_loss:
        return None
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if has_generation_markers(tokenizer.chat_template or ""):
        return None
    try:
        return get_training_chat_template(tokenizer)
    except Exception as e:  # TRL knows a fixed list of templates
        raise DataError(f"model.chat_template: the tokenizer's chat template has no {{% generation %}} marks, so "
                        f"data.assistant_only_loss cannot find the assistant tokens ({e}); use chat_template: "
                        f"tulu, or set data.assistant_only_loss: false") from None


def prepare_data(stage: str, data: DataSection, layout: SequenceLayout, tokenizer,
                 use_cache: bool | None = None) -> PreparedData:
    """The trainer-ready train/eval datasets of a stage's recipe, and the data summary. A stage calls it as
    `prepare_data(config.stage, config.data, config.sequence_layout(), tokenizer)`."""
    template = training_template(stage, data, tokenizer)
    use_cache = data.cache if use_cache is None else use_cache
    cache_dir = Path(data.cache_dir).expanduser() if data.cache_dir else cache.default_cache_dir()
    memo = cache.HashMemo(cache_dir) if use_cache else None
    with timed("cache key (hashing the inputs)"):
        key = cache.mixture_key(stage, data, layout, tokenizer, memo)
    if use_cache:
        with timed("cache lookup"):
            hit = cache.load_entry(cache_dir, key)
        if hit is not None:
            log.info("data: tokenized mixture %s loaded from the cache (%s)", key, cache_dir / key)
            return PreparedData(*hit, cache_entry=cache_dir / key, from_cache=True)
    # Every intermediate table is an Arrow file in this folder, written as it is computed: memory stays flat in the
    # row count. With the cache, the folder sits beside the entries (same disk, removed once the entry is written).
    workdir = _build_folder(cache_dir if use_cache else None)
    try:
        try:
            train, held_out, summary = _build(stage, data, layout, tokenizer, key, template, workdir)
        except OSError as e:  # a full disk while writing the build's Arrow files
            where = f"data.cache_dir {cache_dir}" if use_cache else f"the temporary folder {workdir.parent}"
            raise DataError(f"{where}: cannot write the tokenized mixture ({e.strerror or e}). Fix: free space "
                            f"there, " + ("point data.cache_dir elsewhere" if use_cache else "set TMPDIR") +
                            ", or use fewer rows") from None
        if not use_cache:
            return PreparedData(train, held_out, summary)
        with timed("write the cache entry"):
            entry = cache.save_entry(cache_dir, key, train, held_out, summary, num_proc=layout.num_proc)
        memo.save()
        log.info("data: tokenized mixture %s written to the cache (%s)", key, entry)
        written = cache.load_entry(cache_dir, key)  # memory-mapped from the entry
        if written is None:  # damaged between the write and the load: another process's doing; said on stderr
            raise DataError(f"data.cache_dir {cache_dir}: the mixture just written to {entry} could not be loaded "
                            f"back. Fix: run again, or point data.cache_dir at a folder no other process writes")
        return PreparedData(*written, cache_entry=entry)
    finally:
        if use_cache:
            shutil.rmtree(workdir, ignore_errors=True)


def _build_folder(cache_dir: Path | None) -> Path:
    try:
        return build_folder(cache_dir)
    except OSError as e:
        raise DataError(f"data.cache_dir {cache_dir}: cannot write the tokenized mixture ({e.strerror or e}). Fix: "
                        f"point data.cache_dir elsewhere, or set data.cache: false") from None


@contextmanager
def timed(phase: str):
    """Log how long a phase of the build took (`adapt.data` at INFO; bench/data_scale.py reads these lines)."""
    start = time.perf_counter()
    yield
    log.info("data: %s took %.1f s", phase, time.perf_counter() - start)


def _build(stage: str, data: DataSection, layout: SequenceLayout, tokenizer, key: str, template: str | None,
           workdir: Path) -> tuple[Dataset, Dataset | None, dict[str, Any]]:
    with timed("read, convert, decontaminate"):
        rows, sources = read_mixture(data, stage, num_proc=layout.num_proc, workdir=workdir)
    with timed("tokenize"):
        tokenized, token_stats = tokenize_mixture(
            rows, tokenizer, stage, max_length=layout.max_length, over_length=data.over_length,
            assistant_only_loss=bool(data.assistant_only_loss), chat_template=template, strip=bool(data.strip),
            train_assistant_newline=data.train_assistant_newline, num_proc=layout.num_proc,
            cache_file_name=str(workdir / "tokenized.arrow"))
    for summary, stats in zip(sources, token_stats):
        summary.dropped.update(stats["dropped"])
        summary.rows_kept = stats["rows"]
        if summary.rows_kept == 0:
            raise DataError(f"{summary.source}: no row left after the length policy "
                            f"({dict(stats['dropped'])}); raise training.max_length or use data.over_length: truncate")
    train, held_out = split_eval(tokenized.remove_columns(SOURCE_COLUMN), data.eval_rows, data.seed)
    train_rows, eval_rows = len(train), 0 if held_out is None else len(held_out)

    packing = layout.packing
    eval_packing = packing if layout.eval_packing is None else layout.eval_packing
    with timed("pack"):
        if packing:
            train = pack(train, layout.max_length, layout.packing_strategy, str(workdir / "packed-train.arrow"))
        if held_out is not None and eval_packing:
            held_out = pack(held_out, layout.max_length, layout.packing_strategy, str(workdir / "packed-eval.arrow"))

    summary = {
        "stage": stage, "mixture_key": key,
        "max_length": layout.max_length, "over_length": data.over_length, "packing": packing,
        "sources": [{**s.as_dict(), **{k: v for k, v in t.items() if k not in ("source_id", "rows", "dropped")}}
                    for s, t in zip(sources, token_stats)],
        "train_rows": train_rows, "eval_rows": eval_rows,
        "tokens": sum(t["tokens"] for t in token_stats),
        "trained_tokens": sum(t["trained_tokens"] for t in token_stats),
    }
    if packing:
        summary["packed_sequences"] = len(train)
    return train, held_out, summary
