"""Tokenize a mixture the way TRL's trainers would, apply the recipe's over-length policy, count tokens per source.

Why we tokenize before the trainer instead of letting TRL do it: the data summary must say how many tokens each
source contributed and how many rows were too long, and the result must be cacheable (`adapt.data.cache`). The
output columns are exactly what TRL's own preparation produces, so the trainers take them as they are:

- SFT: `input_ids` and `labels` (-100 outside assistant turns when `assistant_only_loss`), packed with TRL's
  `pack_dataset` when `packing` (adds `seq_lengths`). Same tokens as `SFTTrainer._prepare_dataset`.
- DPO: `prompt_ids`, `chosen_ids`, `rejected_ids`, split where TRL splits them (`common_prefix_length`).
  Same tokens as `DPOTrainer._prepare_dataset`.
tests/test_tokenize.py checks both equalities token by token against TRL.

Over-length policy (`data.over_length`, the limit is `training.max_length`):
- `truncate` (open-instruct's and TRL's behaviour): SFT rows are cut to max_length; a row left with no assistant
  token is dropped. DPO pairs are cut by TRL's collator at train time; a pair whose prompt alone fills max_length is
  dropped (TRL would drop it too, silently).
- `drop`: a row (SFT) or pair (DPO: prompt + the longer answer) over max_length is dropped.
Every drop and truncation is counted per source in the summary.

Open-instruct's encoding, which the published OLMoE recipes reproduce (tests/test_fidelity.py checks it token by
token against a reference encoder written from its description):
- `strip`: every message's content is stripped before rendering (open-instruct strips each message and the whole
  text; with the tulu template the text starts with a role tag and ends with EOS, so the latter changes nothing).
- `train_assistant_newline`: the token before each assistant turn's content (the `\n` closing `<|assistant|>\n`)
  is trained too. Open-instruct computes its label mask on prefixes tokenized without the BOS it prepends, so every
  mask boundary lands one token early: that token is trained, and the `\n` after an assistant's EOS is not (the
  template leaves it out of the generation marks already).
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, Features, List, Value
from trl.data_utils import common_prefix_length, pack_dataset

from adapt.config.stages import STAGES

SOURCE_COLUMN = "source_id"


def stripped(messages: list[dict]) -> list[dict]:
    return [{**m, "content": m["content"].strip()} for m in messages]


def _sft_example(row: dict, tokenizer, assistant_only_loss: bool, chat_template: str | None, max_length: int | None,
                 over_length: str, strip: bool = False, train_assistant_newline: bool = False) -> dict[str, Any]:
    messages = stripped(row["messages"]) if strip else row["messages"]
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=assistant_only_loss, chat_template=chat_template)
    ids = list(out["input_ids"])
    mask = list(out["assistant_masks"]) if assistant_only_loss else None
    if mask is not None and train_assistant_newline:  # the token before each assistant span starts it one early
        starts = [i for i in range(1, len(mask)) if mask[i] and not mask[i - 1]]
        for i in starts:
            mask[i - 1] = 1
    labels = ids if mask is None else [t if m else -100 for t, m in zip(ids, mask)]
    length, verdict = len(ids), "kept"
    if max_length is not None and length > max_length:
        if over_length == "drop":
            verdict = "longer than max_length"
        else:
            ids, labels, verdict = ids[:max_length], labels[:max_length], "truncated"
    trained = len(labels) - labels.count(-100)
    if trained == 0 and verdict != "longer than max_length":
        verdict = "no assistant tokens within max_length"
    return {"input_ids": ids, "labels": labels, "length": length, "verdict": verdict, "n_tokens": len(ids),
            "n_trained": trained}


def _dpo_example(row: dict, tokenizer, max_length: int | None, over_length: str, strip: bool = False) -> dict[str, Any]:
    def ids(messages, **kwargs):
        messages = stripped(messages) if strip else messages
        return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"])

    prompt = ids(row["prompt"], add_generation_prompt=True)
    with_chosen = ids(row["prompt"] + row["chosen"])
    with_rejected = ids(row["prompt"] + row["rejected"])
    # Where TRL puts the boundary: some templates render the prompt alone differently (see common_prefix_length).
    n = min(common_prefix_length(prompt, with_chosen), common_prefix_length(prompt, with_rejected))
    chosen, rejected = with_chosen[n:], with_rejected[n:]
    length, verdict = n + max(len(chosen), len(rejected)), "kept"
    if max_length is not None and length > max_length:
        if over_length == "drop":
            verdict = "longer than max_length"
        elif n >= max_length:
            verdict = "prompt fills max_length"
        else:
            verdict = "truncated"  # cut to max_length by TRL's collator when batched
    return {"prompt_ids": prompt[:n], "chosen_ids": chosen, "rejected_ids": rejected, "length": length,
            "verdict": verdict, "n_tokens": n + len(chosen) + len(rejected), "n_trained": len(chosen) + len(rejected)}


def percentiles(lengths) -> dict[str, int]:
    """Nearest-rank percentiles (integers, so the summary is stable byte for byte)."""
    if not len(lengths):
        return {}
    s = np.sort(np.asarray(lengths))
    def pick(q):  # the ceil(q*n/100)-th value
        return int(s[min(len(s) - 1, max(0, -(-q * len(s) // 100) - 1))])
    return {"p50": pick(50), "p90": pick(90), "p99": pick(99), "max": int(s[-1])}


TOKENS = List(Value("int32"))  # half of the int64 that Python ints would become: 608k rows are ~0.5 B tokens
VERDICTS = ("kept", "truncated", "longer than max_length", "no assistant tokens within max_length",
            "prompt fills max_length")


def _features(stage: str) -> Features:
    return Features({**{c: TOKENS for c in STAGES[stage].tokenized_columns}, SOURCE_COLUMN: Value("int32"),
                     "length": Value("int64"), "verdict": Value("string"), "n_tokens": Value("int64"),
                     "n_trained": Value("int64")})


def tokenize_mixture(ds: Dataset, tokenizer, stage: str, *, max_length: int | None, over_length: str,
                     assistant_only_loss: bool = False, chat_template: str | None = None, strip: bool = False,
                     train_assistant_newline: bool = False, num_proc: int | None = None,
                     cache_file_name: str | None = None) -> tuple[Dataset, list[dict]]:
    """Tokenized rows (with `source_id` kept for splitting) and per-source token statistics, in source order.

    The stats list has one dict per source id: rows kept, drops by reason, truncated rows, tokens, trained tokens and
    length percentiles of the untruncated rows. With `cache_file_name` the tokenized rows are written there (the
    build folder) as they come, instead of accumulating in memory.
    """
    columns = [c for c in ds.column_names if c != SOURCE_COLUMN]
    policy = {"max_length": max_length, "over_length": over_length, "strip": strip}
    if STAGES[stage].token_labels:  # adapt/config/stages.py
        fn, kwargs = _sft_example, {"assistant_only_loss": assistant_only_loss, "chat_template": chat_template,
                                    "train_assistant_newline": train_assistant_newline}
    else:
        fn, kwargs = _dpo_example, {}
    ds = ds.map(fn, fn_kwargs={"tokenizer": tokenizer, **kwargs, **policy}, remove_columns=columns,
                features=_features(stage), num_proc=num_proc if num_proc and len(ds) >= 2 * num_proc else None,
                cache_file_name=cache_file_name, load_from_cache_file=False, new_fingerprint=uuid.uuid4().hex,
                desc="Tokenizing")
    stats, kept = _source_stats(ds)
    return ds.select(kept).remove_columns(["verdict", "length", "n_tokens", "n_trained"]), stats


def _source_stats(ds: Dataset) -> tuple[list[dict], np.ndarray]:
    """Per-source statistics, and the indices of the rows kept, from whole columns (no Python list per row)."""
    table = ds.data  # the map's output: no indices mapping
    sources = table.column(SOURCE_COLUMN).to_numpy()
    lengths, n_tokens, n_trained = (table.column(c).to_numpy() for c in ("length", "n_tokens", "n_trained"))
    verdict_codes = pc.index_in(table.column("verdict"), value_set=pa.array(VERDICTS)).to_numpy(zero_copy_only=False)
    kept_mask = verdict_codes <= 1  # kept or truncated
    out = []
    for sid in np.unique(sources):
        mask = sources == sid
        counts = np.bincount(verdict_codes[mask], minlength=len(VERDICTS))
        source_kept = mask & kept_mask
        out.append({"source_id": int(sid), "rows": int(counts[0] + counts[1]), "truncated": int(counts[1]),
                    "dropped": {VERDICTS[v]: int(c) for v, c in enumerate(counts) if v > 1 and c},
                    "tokens": int(n_tokens[source_kept].sum()), "trained_tokens": int(n_trained[source_kept].sum()),
                    "length_percentiles": percentiles(lengths[mask])})
    return out, np.flatnonzero(kept_mask)


def pack(ds: Dataset, max_length: int, strategy: str, cache_file_name: str | None = None) -> Dataset:
    """TRL's padding-free packing (what SFTTrainer does with `packing: true`), on the already-tokenized rows.

    One process on purpose: TRL packs each batch of 1,000 rows on its own, and `num_proc` workers would start their
    batches at other rows, so the packed sequences would depend on the worker count (which the cache key leaves
    out). Packing is a few seconds for 608k rows."""
    return pack_dataset(ds.select_columns(["input_ids", "labels"]), max_length, strategy,
                        {"desc": "Packing", "cache_file_name": cache_file_name, "load_from_cache_file": False})
