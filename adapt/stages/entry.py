"""A stage's command line: `adapt sft|dpo ...` and `accelerate launch -m adapt.stages.sft|dpo ...` both end here.

The recipe is read once, the launch's process state is set (adapt/parallel/launch.py), the config is built and
validated, the stage runs, and the process group is closed cleanly.
"""

from __future__ import annotations

import argparse
import signal
import sys

from adapt.config import RecipeError
from adapt.config.recipe import build_config, read_recipe
from adapt.config.stages import STAGES
from adapt.console import quiet_console
from adapt.interrupts import Interrupted, exit_code, interrupt_on_signals
from adapt.parallel.launch import prepare_launch
from adapt.runfolder import RunFolderError, resume_checkpoint


def stage_parser(stage: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"adapt {stage}", description=f"Run the {stage.upper()} stage of a recipe.",
        epilog="Overrides: `section.key=value`, e.g. training.learning_rate=1e-4 router.z_loss_weight=0")
    parser.add_argument("--config", required=True, help="recipe YAML (recipes/...)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder at output_dir")
    if stage in STAGES:  # the training stages (adapt/config/stages.py), which resume
        parser.add_argument("--allow-changed", action="append", default=[], metavar="KEY",
                            help="resuming (training.resume_from_checkpoint): accept this recipe key differing from "
                                 "the checkpoint's, e.g. training.max_steps to train longer (repeatable; a section "
                                 "or list name covers the keys inside it)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides on top of the file")
    return parser


def sft_parser() -> argparse.ArgumentParser:
    return stage_parser("sft")


def dpo_parser() -> argparse.ArgumentParser:
    return stage_parser("dpo")


def load_stage_config(stage: str, argv=None):
    """Parse the command line and build the stage's config; exits with one line on a bad recipe."""
    args = stage_parser(stage).parse_intermixed_args(argv)  # `--allow-changed K` may come after the overrides
    overrides = list(args.overrides) + (["overwrite=true"] if args.overwrite else [])
    try:
        raw = read_recipe(args.config, overrides)
        parallel = raw.get("parallel") if isinstance(raw.get("parallel"), dict) else {}
        prepare_launch(uses_deepspeed=bool(parallel.get("deepspeed")))  # before TRL's config reads the process state
        config = build_config(raw, args.config, stage=stage)
    except RecipeError as e:
        sys.exit(f"error: {e}")
    _check_resume(config, args.allow_changed)
    return config


def _check_resume(config, allow_changed: list[str]) -> None:
    """A resumed run's recipe against its checkpoint's, before the data and the model load (the stage checks it
    again when it resumes)."""
    if allow_changed and not config.resume_from_checkpoint:
        sys.exit(f"error: --allow-changed {allow_changed[0]}: accepts a change from a checkpoint's recipe, and this "
                 f"run does not resume. Fix: drop it, or set training.resume_from_checkpoint")
    config.allow_changed = tuple(allow_changed)
    try:
        resume_checkpoint(config)
    except RunFolderError as e:
        sys.exit(f"error: {e}")


def stage_main(stage: str, run, argv=None) -> None:
    """A stage module's `main`: the recipe from the command line, the run, one line on a data error, a clean end."""
    from adapt.data.sources import DataError  # imports TRL and datasets: keep `adapt sft --help` light

    quiet_console()  # `accelerate launch -m adapt.stages.sft` does not pass through adapt/cli.py
    try:
        with interrupt_on_signals():  # the training loop has its own handling (adapt/trainers/signals.py)
            config = load_stage_config(stage, argv)
            run(config)
    except DataError as e:
        sys.exit(f"error: {e}")
    except (Interrupted, KeyboardInterrupt) as e:
        signum = getattr(e, "signum", 2)
        print(f"stopped: {signal.Signals(signum).name} outside the training loop (reading the data, loading the "
              f"model or publishing); nothing of this stage is marked complete", file=sys.stderr)
        sys.exit(exit_code(signum))
    end_processes()


def end_processes() -> None:
    """Wait for every rank, then close the process group. Left to interpreter shutdown, gloo's threads could abort a
    rank that finished later (`terminate called without an active exception`, exit -6) after a complete save."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        from accelerate import PartialState

        state = PartialState()
        state.wait_for_everyone()
        state.destroy_process_group()
