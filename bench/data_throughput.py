"""Data-pipeline throughput: rows/s and tokens/s to convert, template, tokenize (with assistant masks and the length
policy) and pack CodeAlpaca rows with OLMoE's tokenizer, and TRL's own SFT preparation of the same rows for scale.

    python bench/data_throughput.py --data code_alpaca_2k.json --tokenizer olmoe-gpt-neox-20b-pii-special.json
        [--max-length 4096] [--repeats 3] [--json OUT.json]

Each stage is timed on its own (best of --repeats, single process, `datasets` caching off) and the table is printed
last, with the device and library versions above it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")



def best_of(repeats: int, fn):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="an alpaca-format JSON file (e.g. CodeAlpaca's 2k rows)")
    parser.add_argument("--tokenizer", required=True, help="OLMoE's tokenizer.json")
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    for p in (args.data, args.tokenizer):
        if not Path(p).is_file():
            sys.exit(f"error: {p} not found (pass --data/--tokenizer; the defaults live in a developer checkout)")

    import datasets
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from report import finish  # bench/report.py
    from report import record as run_record
    from transformers import PreTrainedTokenizerFast

    from adapt.data.formats import converter
    from adapt.data.tokenize import SOURCE_COLUMN, pack, tokenize_mixture
    from adapt.data.tokenizer import tulu_template

    datasets.disable_caching()
    datasets.disable_progress_bars()
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=args.tokenizer, eos_token="<|endoftext|>",
                                        bos_token="<|endoftext|>", pad_token="<|padding|>")
    tokenizer.chat_template = tulu_template(add_bos=True)
    raw = [r for r in json.loads(Path(args.data).read_text()) if r.get("output", "").strip()][: args.rows]
    convert = converter("alpaca", "sft")

    results = []

    def record(stage, seconds, rows, tokens):
        results.append({"stage": stage, "seconds": round(seconds, 4), "rows": rows, "tokens": tokens,
                        "rows_per_s": round(rows / seconds, 1), "tokens_per_s": round(tokens / seconds, 1)})

    t, converted = best_of(args.repeats, lambda: [convert(r) for r in raw])
    rows = Dataset.from_list(converted).add_column(SOURCE_COLUMN, [0] * len(converted))
    t_template, texts = best_of(args.repeats, lambda: [tokenizer.apply_chat_template(r["messages"], tokenize=False)
                                                       for r in converted])
    t_tok, (tokenized, stats) = best_of(args.repeats, lambda: tokenize_mixture(
        rows, tokenizer, "sft", max_length=args.max_length, over_length="truncate", assistant_only_loss=True))
    tokens = stats[0]["tokens"]
    record("convert (alpaca -> messages)", t, len(raw), tokens)
    record("template (chat template to text)", t_template, len(texts), tokens)
    record("tokenize + masks + length policy", t_tok, len(tokenized), tokens)
    unmarked = tokenized.remove_columns(SOURCE_COLUMN)
    t_pack, packed = best_of(args.repeats, lambda: pack(unmarked, args.max_length, "bfd"))
    record(f"pack (bfd, {args.max_length})", t_pack, len(tokenized), tokens)
    record("adapt total (convert+tokenize+pack)", t + t_tok + t_pack, len(tokenized), tokens)
    t_trl = trl_prepare_seconds(converted, tokenizer, args)
    record("TRL SFTTrainer._prepare_dataset (same rows)", t_trl, len(tokenized), tokens)

    header = run_record(device=platform.processor() or platform.machine(), cpus=os.cpu_count(),
                        torch_threads=torch.get_num_threads(),
                    versions={"transformers": transformers.__version__, "trl": trl.__version__,
                              "datasets": datasets.__version__, "tokenizers": __import__("tokenizers").__version__},
                    data=args.data, packed_sequences=len(packed))
    finish(header, results, [("stage", "stage", ""), ("seconds", "seconds", ".3f"), ("rows", "rows", "d"),
                             ("tokens", "tokens", "d"), ("rows_per_s", "rows/s", ".1f"),
                             ("tokens_per_s", "tokens/s", ".0f")], args.json)


def trl_prepare_seconds(converted, tokenizer, args) -> float:
    """TRL's own preparation (tokenize, labels, pack) of the same conversations, timed the same way."""
    from datasets import Dataset
    from transformers import OlmoeConfig, OlmoeForCausalLM
    from trl import SFTConfig, SFTTrainer

    model = OlmoeForCausalLM(OlmoeConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=16,
                                         num_hidden_layers=1, num_attention_heads=2, num_experts=2,
                                         num_experts_per_tok=1))
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(output_dir=out, max_length=args.max_length, packing=True, padding_free=True,
                           assistant_only_loss=True, bf16=False, report_to=[])
        trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(converted[:4]),
                             processing_class=tokenizer)
        ds = Dataset.from_list(converted)
        seconds, _ = best_of(args.repeats, lambda: trainer._prepare_dataset(ds, tokenizer, config, True, None, "bench"))
    return seconds


if __name__ == "__main__":
    main()
