"""What every training stage does around its trainer: arguments, the run folder, and what is saved into it."""

from __future__ import annotations

import argparse
import errno
import json
import os
import platform
import sys
import textwrap
import time
from pathlib import Path

import yaml
from safetensors import SafetensorError

from adapt.runfolder import RunFolderError, RunLock, clear, holds_run, write_marker
from adapt.trainers.guards import NonFiniteLossError


# A full disk, a quota, a read-only or unwritable folder: said in one line instead of a traceback.
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)


def stage_parser(stage: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"adapt {stage}", description=f"Run the {stage.upper()} stage of a recipe.",
        epilog="Overrides: `section.key=value`, e.g. training.learning_rate=1e-4 router.z_loss_weight=0")
    parser.add_argument("--config", required=True, help="recipe YAML (recipes/...)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run folder at output_dir")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides on top of the file")
    return parser


def load_stage_config(stage: str, argv=None):
    """Parse the command line and load the validated recipe; exits with one line on a bad recipe."""
    from adapt.config import RecipeError, load_recipe
    from adapt.config.recipe import read_recipe
    from adapt.parallel.launch import launch_overrides

    args = stage_parser(stage).parse_args(argv)
    overrides = list(args.overrides) + (["overwrite=true"] if args.overwrite else [])
    try:
        uses_deepspeed = bool((read_recipe(args.config, overrides).get("parallel") or {}).get("deepspeed"))
        return load_recipe(args.config, overrides + launch_overrides(uses_deepspeed, overrides), stage=stage)
    except RecipeError as e:
        sys.exit(f"error: {e}")


def start_run_dir(config, is_main: bool) -> RunLock | None:
    """Claim the run folder: lock it (a second run to the same folder is refused while this one lives), then replace
    an existing run only when the recipe says `overwrite` (checked again here because the folder may have appeared
    since the recipe was validated); a resumed run keeps it. The main process holds the lock until the run ends."""
    out = Path(config.output_dir)
    if not is_main:
        out.mkdir(parents=True, exist_ok=True)
        return None
    try:
        lock = RunLock(out).acquire()
    except RunFolderError as e:
        sys.exit(f"error: {e}")
    if holds_run(out) and not config.resume_from_checkpoint:
        if not config.overwrite:
            lock.release()
            sys.exit(f"error: {out} already holds a run; choose another training.output_dir or pass --overwrite")
        clear(out)
    return lock


def last_complete_checkpoint(out: Path) -> Path | None:
    """The newest `checkpoint-N` whose `trainer_state.json` exists. The Trainer writes that file last, so a
    checkpoint interrupted while being written has none and is passed over: it never replaces the last good one."""
    candidates = [p for p in out.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    complete = [p for p in candidates if (p / "trainer_state.json").is_file()]
    return max(complete, key=lambda p: int(p.name.split("-")[-1]), default=None)


def resume_checkpoint(config) -> str | None:
    """`training.resume_from_checkpoint`: `latest` (the newest complete checkpoint in output_dir) or a folder."""
    ref = config.resume_from_checkpoint
    if not ref:
        return None
    path = last_complete_checkpoint(Path(config.output_dir)) if ref in ("latest", "true", "True") else Path(ref)
    if path is None or not (path / "trainer_state.json").is_file():
        sys.exit(f"error: {config.recipe_path}: training.resume_from_checkpoint: no complete checkpoint "
                 f"{'in ' + config.output_dir if path is None else 'at ' + str(path)}; drop the field to start over")
    return str(path)


def save_run(trainer, config, tokenizer, started: float, data_summary: dict | None = None) -> Path:
    """Write the model folder the next stage (and `from_pretrained`) loads: weights, config, tokenizer with chat
    template, the fully resolved recipe, and a run record. `metrics.jsonl` is already there from the callback."""
    out = Path(config.output_dir)
    # TRL turns `output_router_logits` on in the model config for training; saved that way, every later forward
    # (generation included) would compute the aux loss, which breaks with padded generation batches.
    text_config = trainer.model.config.get_text_config()
    if hasattr(text_config, "output_router_logits"):
        text_config.output_router_logits = False
    _save_weights(trainer, config, out)
    if not trainer.accelerator.is_main_process:
        return out
    tokenizer.save_pretrained(str(out))
    with open(out / "recipe.yaml", "w", encoding="utf-8") as f:
        f.write("".join(f"# {line}\n" for line in textwrap.wrap(config.router_loss_scale(), 116)))
        yaml.safe_dump(config.resolved_recipe(), f, sort_keys=False)
    import torch
    import transformers
    import trl

    record = {
        "stage": config.stage, "recipe": config.recipe_path, "wall_time_s": round(time.time() - started, 2),
        "global_step": trainer.state.global_step, "world_size": trainer.accelerator.num_processes,
        "device": str(trainer.accelerator.device), "python": platform.python_version(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
    }
    if data_summary is not None:
        (out / "data_summary.json").write_text(json.dumps(data_summary, indent=2) + "\n", encoding="utf-8")
    bad = non_finite_tensors(out)
    if bad:  # the folder gets no run.json, so every reader refuses it
        sys.exit(f"error: {out}: the saved weights hold NaN or inf values ({', '.join(bad[:3])}"
                 f"{', ...' if len(bad) > 3 else ''}); the run is not marked complete")
    write_marker(out, record)  # last: its presence says the folder is complete (adapt/runfolder.py)
    return out


def non_finite_tensors(folder: Path) -> list[str]:
    """Names of the saved tensors (every safetensors file of the folder) holding NaN or inf."""
    import torch
    from safetensors import safe_open

    bad = []
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                tensor = f.get_tensor(name)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    bad.append(name)
    return bad


def _save_weights(trainer, config, out: Path) -> None:
    """The model in plain transformers layout. Under expert parallelism each rank holds only its experts in
    AutoEP's layout, so they are gathered and renamed first (adapt/parallel/autoep.py)."""
    from adapt.parallel.autoep import hf_state_dict, is_autoep

    if not is_autoep(trainer.model):
        trainer.save_model(str(out))
        return
    state = hf_state_dict(trainer.model, config.parallel.expert_parallel_size)  # collective: every rank
    if trainer.accelerator.is_main_process:
        trainer.model.save_pretrained(str(out), state_dict=state)
    trainer.accelerator.wait_for_everyone()


def prepare_model(model, config) -> None:
    """Before the trainer wraps the model: check the parallel layout against it, set up expert parallelism."""
    from adapt.parallel import check_layout

    ep = config.parallel.expert_parallel_size
    problem = check_layout(getattr(model.config.get_text_config(), "num_experts", None), ep,
                           int(os.environ.get("WORLD_SIZE", ep)))
    if problem:
        sys.exit(f"error: {config.recipe_path}: parallel.expert_parallel_size: {problem}")
    if ep > 1:
        from adapt.parallel.autoep import keep_router_logits, register_olmoe_preset

        register_olmoe_preset()
        keep_router_logits(model)


def train_and_save(trainer, config, tokenizer, started: float, data_summary: dict | None = None):
    """The part every stage shares once its trainer is built: claim the run folder, train, save, push."""
    is_main = trainer.accelerator.is_main_process
    if config.hub.push and is_main:  # a bad repo id or a missing token must not wait for the end of training
        from adapt.hub.push import check_recipe_push

        check_recipe_push(config.hub)
    lock = start_run_dir(config, is_main)
    trainer.accelerator.wait_for_everyone()
    try:
        trainer.train(resume_from_checkpoint=resume_checkpoint(config))
        out = save_run(trainer, config, tokenizer, started, data_summary)
    except NonFiniteLossError as e:
        sys.exit(f"error: {e}")
    except (OSError, SafetensorError) as e:
        if isinstance(e, OSError) and e.errno not in DISK_ERRORS:
            raise
        sys.exit(f"error: {config.output_dir}: writing the run failed ({getattr(e, 'strerror', None) or e}); the "
                 f"folder is not marked complete. Fix: free space there or choose another training.output_dir, then "
                 f"run again (resume from the last checkpoint with training.resume_from_checkpoint=latest)")
    finally:
        if lock is not None:
            lock.release()
    if config.hub.push and is_main:
        from adapt.hub.push import push_from_recipe

        push_from_recipe(out, config.hub)
    return trainer


def stage_main(stage: str, run, argv=None) -> None:
    """A stage module's `main`: the recipe from the command line, the run, one line on a data error, a clean end."""
    from adapt.data.sources import DataError

    config = load_stage_config(stage, argv)
    try:
        run(config)
    except DataError as e:
        sys.exit(f"error: {e}")
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
