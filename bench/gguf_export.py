"""GGUF export of a run folder in each type, each file checked in llama.cpp against transformers (float32): file size,
export time, the kinds the tensors were stored in, the largest next-token logit difference over every position of
the check texts and the mean one relative to the mean logit (what `--check` judges a rounded type on), how many of
the greedy 16 tokens agree, whether the tokenization is identical.

    python bench/gguf_export.py [RUN_DIR (default runs/demo/dpo)] [--types f32 ... q4_k_m] [--json OUT]

llama.cpp runs with a float32 K/V cache (its default f16 cache alone moves logits by about 1e-2, measured).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import torch

from adapt.export.check import check_gguf
from adapt.export.gguf_file import TYPES, export_gguf, load_weights
from adapt.export.quantize import KQUANTS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import finish, record  # noqa: E402 (bench/report.py, after the path line above)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", nargs="?", default="runs/demo/dpo")
    p.add_argument("--types", nargs="+", default=[*TYPES, *KQUANTS], choices=[*TYPES, *KQUANTS])
    p.add_argument("--json")
    args = p.parse_args()
    model = load_weights(Path(args.run_dir)).float().eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for type_ in args.types:
            done = export_gguf(args.run_dir, Path(tmp) / f"{type_}.gguf", type_)
            result = check_gguf(args.run_dir, done.path, done.type, model=model)
            rows.append({"type": type_, "mib": done.bytes / 2**20, "export_s": done.seconds,
                         "kinds": " ".join(f"{k}:{n}" for k, n in sorted(done.kinds.items())),
                         "max_logit_diff": result.max_logit_difference, "max_logit": result.max_logit,
                         "relative_diff": result.relative_difference, "greedy_agree": result.greedy_agreement,
                         "greedy_equal": result.greedy_equal, "tokens_equal": not result.tokenization_differences,
                         "chat_equal": result.chat_template_equal, "passed": result.passed()})
    header = record(device=f"CPU, {torch.get_num_threads()} threads", torch=torch.__version__, run=args.run_dir,
                    gguf=version("gguf"), llama_cpp_python=version("llama-cpp-python"))
    finish(header, rows, [("type", "type", ""), ("mib", "MiB", ">.2f"), ("export_s", "export s", ">.2f"),
                          ("kinds", "tensors stored as", ""), ("max_logit_diff", "max |logit diff|", ">.2e"),
                          ("max_logit", "max |logit|", ">.1f"), ("relative_diff", "mean diff / mean logit", ">.2e"),
                          ("greedy_agree", "greedy agree /16", ""), ("tokens_equal", "tokens equal", ""),
                          ("chat_equal", "chat equal", ""), ("passed", "--check", "")], args.json)


if __name__ == "__main__":
    main()
