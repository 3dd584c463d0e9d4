"""The `adapt` command: one table of subcommands, each naming the function that parses its arguments and the one
that runs it. A stage's module is also runnable on its own (`accelerate launch -m adapt.stages.sft ...` is
`adapt sft ...` on every process).

Nothing heavy is imported until a command runs: `adapt --help`, `adapt --version` and `adapt <command> --help`
answer without loading torch, transformers or lm-eval.
"""

from __future__ import annotations

import importlib
import signal
import sys
from dataclasses import dataclass

from adapt.console import quiet_console
from adapt.interrupts import Interrupted, exit_code, interrupt_on_signals


@dataclass(frozen=True)
class Command:
    name: str  # one word, or two for a subcommand (`eval score`)
    synopsis: str  # the arguments, for the overview
    summary: str
    parser: str  # "module:function" returning the command's ArgumentParser (a light module)
    run: str  # "module:function" taking the command's argv


COMMANDS = (
    Command("sft", "--config RECIPE [--overwrite] [--allow-changed KEY] [key=value ...]", "supervised fine-tuning",
            "adapt.stages.entry:sft_parser", "adapt.stages.sft:main"),
    Command("dpo", "--config RECIPE [--overwrite] [--allow-changed KEY] [key=value ...]",
            "preference tuning (DPO), router losses on",
            "adapt.stages.entry:dpo_parser", "adapt.stages.dpo:main"),
    Command("check", "--config RECIPE [--skip-path-checks] [key=value ...]", "validate a recipe, load nothing",
            "adapt.stages.preflight:check_parser", "adapt.stages.preflight:check"),
    Command("data", "--config RECIPE [key=value ...]", "build the training mixture only; print its summary",
            "adapt.stages.preflight:data_parser", "adapt.stages.preflight:data"),
    Command("eval", "--model PATH [--suite S] [--tasks ..] [--limit N] [--data-dir D]", "benchmark a model",
            "adapt_eval.cli:eval_parser", "adapt_eval.cli:run_eval"),
    Command("eval score", "--task T --predictions FILE [--per-item OUT]", "re-score stored completions, no model",
            "adapt_eval.cli:score_parser", "adapt_eval.cli:run_score"),
    Command("report", "RESULTS ... [--names a,b] [--output DIR]", "compare runs beside the paper (md, html, png)",
            "adapt_eval.cli:report_parser", "adapt_eval.cli:run_report"),
    Command("analyze", "--models base=P sft=P ... [--data D=SPEC ...] [--run DIR] --output DIR",
            "what adaptation did to the router",
            "adapt_eval.cli:analyze_parser", "adapt_eval.cli:run_analyze"),
    Command("demo", "[--output runs/demo] [--overwrite]", "the offline base -> SFT -> DPO pipeline and its report",
            "adapt.stages.demo:parser", "adapt.stages.demo:main"),
    Command("push", "RUN_DIR --repo-id ORG/NAME [--dry-run OUT] [--force]", "publish a run folder to the Hub",
            "adapt.hub.push:parser", "adapt.hub.push:main"),
    Command("export gguf", "RUN_DIR --outfile F.gguf [--type auto|f32|f16|bf16|q8_0]", "one GGUF file for llama.cpp",
            "adapt.export.cli:gguf_parser", "adapt.export.cli:export_gguf_main"),
    Command("export ollama", "RUN_DIR --output DIR [--type ...]", "a GGUF and a Modelfile for Ollama",
            "adapt.export.cli:ollama_parser", "adapt.export.cli:export_ollama_main"),
)


def usage() -> str:
    name, summary = max(len(c.name) for c in COMMANDS), max(len(c.summary) for c in COMMANDS)
    lines = ["usage: adapt <command> [options]", "", "commands:"]
    lines += [f"  {c.name:<{name}}  {c.summary:<{summary}}  {c.synopsis}" for c in COMMANDS]
    lines += ["", "`adapt <command> --help` for a command's options; `adapt --version` for the version."]
    return "\n".join(lines)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("adapt")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown (not installed)"


def find(argv: list[str]) -> tuple[Command | None, list[str]]:
    """The command named by argv's first words (the longest match: `eval score` before `eval`), and its argv."""
    for command in sorted(COMMANDS, key=lambda c: -len(c.name.split())):
        words = command.name.split()
        if argv[:len(words)] == words:
            return command, argv[len(words):]
    return None, argv


def _load(target: str):
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    if argv[0] == "--version":
        print(f"adapt {version()}")
        return
    command, rest = find(argv)
    if command is None:
        sys.exit(f"error: unknown command {argv[0]!r}; one of: {', '.join(sorted({c.name for c in COMMANDS}))}")
    if "-h" in rest or "--help" in rest:  # answered from the light parser module, before the command's imports
        _load(command.parser)().print_help()
        return
    quiet_console()
    try:
        with interrupt_on_signals():  # a stage's training loop saves a checkpoint first (adapt/trainers/signals.py)
            _load(command.run)(rest)
    except (Interrupted, KeyboardInterrupt) as e:  # one line, and the shell's exit status for the signal
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"stopped: {signal.Signals(signum).name} during `adapt {command.name}`", file=sys.stderr)
        sys.exit(exit_code(signum))


if __name__ == "__main__":
    main()
