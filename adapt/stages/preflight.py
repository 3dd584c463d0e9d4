"""The commands that read a recipe without training: `adapt check` (validate it) and `adapt data` (build its
training mixture and print the summary). Both load nothing heavy until their arguments are parsed."""

from __future__ import annotations

import argparse
import json
import sys

from adapt.config import RecipeError, load_recipe
from adapt.stages.entry import stage_parser


def check_parser() -> argparse.ArgumentParser:
    parser = stage_parser("check")
    parser.description = "Validate a recipe without loading a model or data."
    parser.add_argument("--skip-path-checks", action="store_true",
                        help="do not require local inputs to exist (e.g. a DPO recipe before its SFT run)")
    return parser


def check(argv) -> None:
    args = check_parser().parse_args(argv)
    try:
        config = load_recipe(args.config, args.overrides, check_hardware=False,
                             check_paths=not args.skip_path_checks)
    except RecipeError as e:
        sys.exit(f"error: {e}")
    if not args.skip_path_checks or config.model.config is not None:
        # the model a recipe builds, or a Hub model's family from its config.json (a few KB), before anything runs
        from adapt.stages.train import check_family  # imports torch and TRL: keep `adapt check --help` light

        check_family(config, required=False)
    print(f"ok: {args.config} is a valid {config.stage} recipe (output_dir={config.output_dir})")


def data_parser() -> argparse.ArgumentParser:
    parser = stage_parser("data")
    parser.description = "Build a recipe's training mixture (tokenized, cached) and print its summary as JSON."
    return parser


def data(argv) -> None:
    """Build a recipe's training mixture without training and print its summary (JSON, stable across runs)."""
    from adapt.data.prepare import prepare_data  # imports TRL and datasets: keep `adapt data --help` light
    from adapt.data.sources import DataError  # imports TRL and datasets: keep `adapt data --help` light
    from adapt.data.tokenizer import load_tokenizer  # imports transformers: keep `adapt data --help` light

    args = data_parser().parse_args(argv)
    try:
        config = load_recipe(args.config, args.overrides, check_hardware=False, check_output=False)
        prepared = prepare_data(config.stage, config.data, config.sequence_layout(), load_tokenizer(config.model))
    except (RecipeError, DataError, ValueError) as e:
        sys.exit(f"error: {e}")
    where = "loaded from" if prepared.from_cache else "written to"
    if prepared.cache_entry is not None:
        print(f"tokenized mixture {where} {prepared.cache_entry}", file=sys.stderr)
    print(json.dumps(prepared.summary, indent=2, sort_keys=True))
