"""GGUF export of a run folder in each type, each file checked in llama.cpp against transformers (float32): file size,
export time, the largest next-token logit difference over every position of the check texts, whether the greedy
16-token continuation and the tokenization are identical.

    python bench/gguf_export.py [RUN_DIR (default runs/demo/dpo)] [--types f32 f16 bf16 q8_0] [--json OUT]

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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import finish, record  # noqa: E402 (bench/report.py, after the path line above)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", nargs="?", default="runs/demo/dpo")
    p.add_argument("--types", nargs="+", default=list(TYPES), choices=list(TYPES))
    p.add_argument("--json")
    args = p.parse_args()
    model = load_weights(Path(args.run_dir)).float().eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for type_ in args.types:
            done = export_gguf(args.run_dir, Path(tmp) / f"{type_}.gguf", type_)
            result = check_gguf(args.run_dir, done.path, model=model)
            rows.append({"type": type_, "mib": done.bytes / 2**20, "export_s": done.seconds,
                         "max_logit_diff": result.max_logit_difference, "max_logit": result.max_logit,
                         "greedy_equal": result.greedy_equal, "tokens_equal": not result.tokenization_differences,
                         "chat_equal": result.chat_template_equal})
    header = record(device=f"CPU, {torch.get_num_threads()} threads", torch=torch.__version__, run=args.run_dir,
                    gguf=version("gguf"), llama_cpp_python=version("llama-cpp-python"))
    finish(header, rows, [("type", "type", ""), ("mib", "MiB", ">.2f"), ("export_s", "export s", ">.2f"),
                          ("max_logit_diff", "max |logit diff|", ">.2e"), ("max_logit", "max |logit|", ">.1f"),
                          ("greedy_equal", "greedy equal", ""), ("tokens_equal", "tokens equal", ""),
                          ("chat_equal", "chat equal", "")], args.json)


if __name__ == "__main__":
    main()
