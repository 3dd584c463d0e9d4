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

from collections import Counter
from typing import Any

from datasets import Dataset
from trl.data_utils import common_prefix_length, pack_dataset

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
    trained = sum(t != -100 for t in labels)
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


def percentiles(lengths: list[int]) -> dict[str, int]:
    """Nearest-rank percentiles (integers, so the summary is stable byte for byte)."""
    if not lengths:
        return {}
    s = sorted(lengths)
    def pick(q):  # the ceil(q*n/100)-th value
        return s[min(len(s) - 1, max(0, -(-q * len(s) // 100) - 1))]
    return {"p50": pick(50), "p90": pick(90), "p99": pick(99), "max": s[-1]}


def tokenize_mixture(ds: Dataset, tokenizer, stage: str, *, max_length: int | None, over_length: str,
                     assistant_only_loss: bool = False, chat_template: str | None = None, strip: bool = False,
                     train_assistant_newline: bool = False,
                     num_proc: int | None = None) -> tuple[Dataset, list[dict]]:
    """Tokenized rows (with `source_id` kept for splitting) and per-source token statistics, in source order.

    The stats list has one dict per source id: rows kept, drops by reason, truncated rows, tokens, trained tokens and
    length percentiles of the untruncated rows.
    """
    columns = [c for c in ds.column_names if c != SOURCE_COLUMN]
    policy = {"max_length": max_length, "over_length": over_length, "strip": strip}
    if stage == "sft":
        fn, kwargs = _sft_example, {"assistant_only_loss": assistant_only_loss, "chat_template": chat_template,
                                    "train_assistant_newline": train_assistant_newline}
    else:
        fn, kwargs = _dpo_example, {}
    ds = ds.map(fn, fn_kwargs={"tokenizer": tokenizer, **kwargs, **policy}, remove_columns=columns,
                num_proc=num_proc, desc="Tokenizing")
    stats = _source_stats(ds)
    kept = ds.filter(lambda v: v in ("kept", "truncated"), input_columns="verdict", num_proc=num_proc)
    return kept.remove_columns(["verdict", "length", "n_tokens", "n_trained"]), stats


def _source_stats(ds: Dataset) -> list[dict]:
    columns = ds.select_columns([SOURCE_COLUMN, "verdict", "length", "n_tokens", "n_trained"]).to_dict()
    stats: dict[int, dict] = {}
    for sid, verdict, length, n_tokens, n_trained in zip(*columns.values()):
        s = stats.setdefault(sid, {"verdicts": Counter(), "lengths": [], "tokens": 0, "trained_tokens": 0})
        s["verdicts"][verdict] += 1
        s["lengths"].append(length)
        if verdict in ("kept", "truncated"):
            s["tokens"] += n_tokens
            s["trained_tokens"] += n_trained
    out = []
    for sid in sorted(stats):
        s = stats[sid]
        drops = {k: v for k, v in s["verdicts"].items() if k not in ("kept", "truncated")}
        out.append({"source_id": sid, "rows": s["verdicts"]["kept"] + s["verdicts"]["truncated"],
                    "truncated": s["verdicts"]["truncated"], "dropped": drops, "tokens": s["tokens"],
                    "trained_tokens": s["trained_tokens"], "length_percentiles": percentiles(s["lengths"])})
    return out


def pack(ds: Dataset, max_length: int, strategy: str, num_proc: int | None = None) -> Dataset:
    """TRL's padding-free packing (what SFTTrainer does with `packing: true`), on the already-tokenized rows."""
    return pack_dataset(ds.select_columns(["input_ids", "labels"]), max_length, strategy,
                        {"num_proc": num_proc, "desc": "Packing"})
