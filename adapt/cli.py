"""The `adapt` command: one subcommand per stage, each a thin front for a module that `accelerate launch -m` also
runs (`adapt sft ...` == `accelerate launch -m adapt.stages.sft ...` on one process)."""

from __future__ import annotations

import os
import sys

USAGE = """usage: adapt <command> [options]

commands:
  sft     --config RECIPE [--overwrite] [key=value ...]   supervised fine-tuning
  dpo     --config RECIPE [--overwrite] [key=value ...]   preference tuning (DPO) with the router losses on
  check   --config RECIPE [--skip-path-checks] [k=v ...]  validate a recipe without loading anything
  data    --config RECIPE [key=value ...]                 build the training mixture only; print its summary
  eval    --model PATH [--suite olmoe-paper] [--tasks ..] [--limit N] [--data-dir D]   benchmark a model
  eval score --task T --predictions FILE                  re-score stored completions without a model
  report  RESULTS.json ... [--names a,b] [--output DIR]   compare runs beside the paper (md, html, png)
  demo    [--output runs/demo] [--overwrite]              the offline base -> SFT -> DPO pipeline with a report
  push    RUN_DIR --repo-id ORG/NAME [--private] [--revision B] [--dry-run OUT] [--force]   publish to the Hub

`adapt <command> --help` for a command's options.
"""


def _check(argv) -> None:
    from adapt.config import RecipeError, load_recipe
    from adapt.stages.common import stage_parser

    parser = stage_parser("check")
    parser.add_argument("--skip-path-checks", action="store_true",
                        help="do not require local inputs to exist (e.g. a DPO recipe before its SFT run)")
    args = parser.parse_args(argv)
    try:
        config = load_recipe(args.config, args.overrides, check_hardware=False,
                             check_paths=not args.skip_path_checks)
    except RecipeError as e:
        sys.exit(f"error: {e}")
    print(f"ok: {args.config} is a valid {config.stage} recipe (output_dir={config.output_dir})")


def _data(argv) -> None:
    """Build a recipe's training mixture without training and print its summary (JSON, stable across runs)."""
    import json

    from adapt.config import RecipeError, load_recipe
    from adapt.data.prepare import prepare_data
    from adapt.data.sources import DataError
    from adapt.data.tokenizer import load_tokenizer
    from adapt.stages.common import stage_parser

    args = stage_parser("data").parse_args(argv)
    try:
        config = load_recipe(args.config, args.overrides, check_hardware=False, check_output=False)
        prepared = prepare_data(config, load_tokenizer(config.model))
    except (RecipeError, DataError, ValueError) as e:
        sys.exit(f"error: {e}")
    where = "loaded from" if prepared.from_cache else "written to"
    if prepared.cache_entry is not None:
        print(f"tokenized mixture {where} {prepared.cache_entry}", file=sys.stderr)
    print(json.dumps(prepared.summary, indent=2, sort_keys=True))


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    command, rest = argv[0], argv[1:]
    if command == "sft":
        from adapt.stages.sft import main as run
    elif command == "dpo":
        from adapt.stages.dpo import main as run
    elif command == "demo":
        from adapt.stages.demo import main as run
    elif command == "eval":
        from adapt_eval.cli import run_eval as run
    elif command == "report":
        from adapt_eval.cli import run_report as run
    elif command == "push":
        from adapt.hub.push import main as run
    elif command == "check":
        run = _check
    elif command == "data":
        run = _data
    else:
        sys.exit(f"error: unknown command {command!r}\n\n{USAGE}")
    run(rest)


if __name__ == "__main__":
    main()
