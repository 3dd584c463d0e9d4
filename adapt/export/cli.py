"""`adapt export gguf` and `adapt export ollama`: thin command lines over gguf_file and ollama."""

from __future__ import annotations

import argparse
import sys

from adapt.export.architectures import ExportError
from adapt.export.gguf_file import export_gguf
from adapt.export.ollama import export_ollama

TYPE_HELP = ("auto (the weights' own dtype: lossless), f32, f16, bf16, q8_0, or the K-quants q6_k, q5_k_m, q4_k_m "
             "(made by llama.cpp's own quantizer from the float file); norms and the router stay f32, as in llama.cpp")


def gguf_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adapt export gguf", description="Write a run folder as one GGUF file for "
                                "llama.cpp (a LoRA run is merged into its base first).")
    p.add_argument("run_dir", help="a folder written by `adapt sft|dpo`")
    p.add_argument("--outfile", required=True, help="the .gguf file to write")
    p.add_argument("--type", default="auto", help=TYPE_HELP)
    p.add_argument("--force", action="store_true", help="replace an existing --outfile")
    p.add_argument("--check", action="store_true", help="load the file in llama.cpp (llama-cpp-python) and compare "
                   "tokenization, logits, a greedy continuation and the chat prompt with transformers; fails past "
                   "the type's measured tolerance (adapt/export/DESIGN.md)")
    return p


def ollama_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adapt export ollama", description="Write a run folder as an Ollama model: "
                                "model.gguf and a Modelfile with the run's chat template and EOS.")
    p.add_argument("run_dir", help="a folder written by `adapt sft|dpo`")
    p.add_argument("--output", required=True, help="a new (or empty) folder")
    p.add_argument("--type", default="auto", help=TYPE_HELP)
    p.add_argument("--name", help="the name in the printed `ollama create` command (default: the run folder's)")
    return p


def export_gguf_main(argv=None) -> None:
    args = gguf_parser().parse_args(argv)
    import importlib.util

    if args.check and importlib.util.find_spec("llama_cpp") is None:
        sys.exit("error: --check needs llama-cpp-python: pip install -e '.[gguf]' (it builds llama.cpp from source)")
    try:
        done = export_gguf(args.run_dir, args.outfile, args.type, force=args.force)
    except ExportError as e:
        sys.exit(f"error: {e}")
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(done.kinds.items(), key=lambda item: -item[1]))
    print(f"wrote {done.path} ({done.type}, {done.tensors} tensors: {kinds}; {done.bytes / 2**20:.1f} MiB) in "
          f"{done.seconds:.1f} s")
    if args.check:
        from adapt.export.check import check_gguf  # imports torch: keep `adapt export gguf --help` light

        result = check_gguf(args.run_dir, done.path, done.type)
        for line in result.lines():
            print(f"  {line}")
        if not result.passed():
            sys.exit("error: llama.cpp does not compute what transformers computes on this file (above)")


def export_ollama_main(argv=None) -> None:
    args = ollama_parser().parse_args(argv)
    try:
        done = export_ollama(args.run_dir, args.output, args.type, args.name)
    except ExportError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {done.gguf} and {done.modelfile}; then:\n  {done.command}")
