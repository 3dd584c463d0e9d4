"""What every training stage does around its trainer once it is built: the parallel layout checked against the
model, the run folder claimed, training (resumed when asked), the save, and the push."""

from __future__ import annotations

import errno
import os
import shlex
import signal
import sys
from contextlib import contextmanager

from safetensors import SafetensorError

from adapt.config.families import check_combination, expert_parallel_config_problems, family
from adapt.config.recipe import model_reference
from adapt.hub.push import check_recipe_push, push_from_recipe
from adapt.interrupts import exit_code
from adapt.model.expert_slices import unwrap
from adapt.model.loading import load_model
from adapt.model.lora import LoraSetupError, apply_lora
from adapt.model.shape import model_problems, recipe_config
from adapt.parallel import check_layout
from adapt.parallel.autoep import register_presets
from adapt.runfolder import RunFolderError, claim, resume_checkpoint, write_stopped
from adapt.stages.entry import end_processes
from adapt.stages.experts import write_record
from adapt.stages.save import save_run
from adapt.trainers.console import use_console
from adapt.trainers.guards import SignalStopped, TrainingStopped
from adapt.trainers.signals import GracefulStop

# A full disk, a quota, a read-only or unwritable folder: said in one line instead of a traceback.
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)


def check_family(config, *, required: bool = True, tokenizer=None) -> None:
    """Before any weights load: the model's family is supported and supports what the recipe asks, and the model its
    config describes can be built and run on this launch (adapt/model/shape.py). The recipe check already did the
    family part when the family was known offline; a Hub model's config.json is fetched here (a few KB).
    Exits with one line on a problem; when the config cannot be read and `required` is off (`adapt check`
    offline), says so on stderr and leaves the check to the stage."""
    section = config.model
    try:
        loaded, where = _model_config(section, tokenizer)
    except OSError as e:
        if not required:
            print(f"note: {section.name_or_path}'s family is not checked (its config.json is not available: "
                  f"{str(e).splitlines()[0]}); the stage checks it before loading weights", file=sys.stderr)
            return
        sys.exit(f"error: {config.recipe_path}: model.name_or_path: cannot read {section.name_or_path}'s "
                 f"config.json ({str(e).splitlines()[0]}). Fix: check the name, your network or HF_HUB_OFFLINE")
    except Exception as e:  # the family's config class refuses the values (its own exception types)
        sys.exit(f"error: {config.recipe_path}: {where}: {' '.join(str(e).split())[:300]}. Fix: the field it names")
    model_type = loaded.get_text_config().model_type
    problem = check_combination(model_type, section, config.router, config.parallel, loaded)
    if problem:
        key, why, fix = problem
        sys.exit(f"error: {config.recipe_path}: {key}: {why}. Fix: {fix}")
    problems, note = model_problems(section, loaded, f"{where}.", enforce_memory=required)
    for key, why, fix in problems[:1]:
        sys.exit(f"error: {config.recipe_path}: {key}: {why}. Fix: {fix}")
    if note:
        print(f"note: {config.recipe_path}: {where}: {note}", file=sys.stderr)


def _model_config(section, tokenizer):
    """The transformers config of the model a `model:` section names, and where its values come from."""
    if section.config is not None:
        return recipe_config(section, tokenizer), "model.config"
    from transformers import AutoConfig

    ref = model_reference(section.name_or_path)
    where = "model.name_or_path" if ref == section.name_or_path else f"model.name_or_path (its base {ref})"
    return AutoConfig.from_pretrained(ref, revision=section.revision, trust_remote_code=section.trust_remote_code), \
        f"{where} config.json"


def load_policy(config, tokenizer):
    """The model the stage trains (adapt.model.loading.load_model); a LoRA adapter folder whose merge is not what
    base + adapter computes (adapt.model.lora.merge_proven), or that cannot be continued, stops in one line."""
    try:
        return load_model(config.model, tokenizer, seed=config.seed, peft=config.peft)
    except LoraSetupError as e:
        sys.exit(f"error: {config.recipe_path}: model.name_or_path: {e}")


def prepare_model(model, config) -> None:
    """Before the trainer wraps the model: check the parallel layout against it, set up expert parallelism."""
    ep = config.parallel.expert_parallel_size
    text_config = model.config.get_text_config()
    experts_attr = getattr(family(text_config.model_type), "experts_attr", "num_experts")
    problem = check_layout(getattr(text_config, experts_attr, None), ep,
                           int(os.environ.get("WORLD_SIZE", ep)))
    if problem:
        sys.exit(f"error: {config.recipe_path}: parallel.expert_parallel_size: {problem}")
    if ep > 1:  # AutoEP converts the model inside `deepspeed.initialize`, with the toolkit's preset for its family
        for key, why, fix in expert_parallel_config_problems(text_config)[:1]:  # a local folder's or Hub config
            sys.exit(f"error: {config.recipe_path}: {key}: {why}. Fix: {fix}")

        register_presets()


def add_adapters(model, config):
    """The model with LoRA adapters when the recipe says `peft.method: lora` (adapt/model/lora.py), else as it is."""
    from peft import PeftModel

    if config.peft.method != "lora" or isinstance(model, PeftModel):  # an adapter folder continued as it is
        return model
    try:
        return apply_lora(model, config.peft, family(model.config.get_text_config().model_type))
    except LoraSetupError as e:
        sys.exit(f"error: {config.recipe_path}: {e}")


def train_and_save(trainer, config, tokenizer, started: float, data_summary: dict | None = None,
                   experts: dict | None = None):
    """The part every stage shares once its trainer is built: claim the run folder, train, save, push. `experts`:
    the ESFT selection (adapt/stages/experts.py), written to the folder before training. SIGTERM and SIGINT stop
    the run at a step boundary with a checkpoint (adapt/trainers/signals.py)."""
    is_main = trainer.accelerator.is_main_process
    if config.hub.push and is_main:  # a bad repo id or a missing token must not wait for the end of training
        check_recipe_push(config.hub)
    try:
        lock = claim(config, is_main)
    except RunFolderError as e:
        sys.exit(f"error: {e}")
    write_record(experts, config.output_dir, is_main)
    trainer.accelerator.wait_for_everyone()
    stop = _graceful_stop(trainer, config, is_main)
    trainer.add_callback(stop)
    use_console(trainer)  # one readable line per logging step (adapt/trainers/console.py)
    try:
        with _installed(stop):
            trainer.train(resume_from_checkpoint=resume_checkpoint(config))
            if stop.signum is not None:
                raise SignalStopped(stop.reason(resume_hint(config)), exit_code(stop.signum))
            if experts is not None:  # the trained slices back into the fused tensors: the family's plain model
                unwrap(trainer.model)
            out = save_run(trainer, config, tokenizer, started, data_summary)
    except TrainingStopped as e:  # a stop signal, a non-finite loss, a failed router audit, a collapse under `stop`
        if is_main:
            write_stopped(config.output_dir, str(e), trainer.state.global_step)
        if isinstance(e, SignalStopped):  # every rank stopped at the same step: close the process group cleanly
            print(str(e), file=sys.stderr)
            end_processes()
            sys.exit(e.exit_code)
        sys.exit(f"error: {e}")
    except RunFolderError as e:
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
        push_from_recipe(out, config.hub)
    return trainer


def resume_hint(config) -> str:
    """The command that continues a stopped run from its newest checkpoint: this one's arguments (the resume refuses
    a changed recipe, so its overrides must come again), without --overwrite, plus the resume."""
    args = sys.argv[1:]
    args = args[1:] if args[:1] == [config.stage] else args  # `adapt sft ...` or `python -m adapt.stages.sft ...`
    args = [a for a in args if a != "--overwrite" and not a.startswith("training.resume_from_checkpoint=")]
    if "--config" not in args:  # called in-process (a notebook, a test): the recipe alone
        args = ["--config", str(config.recipe_path)]
    return f"`adapt {config.stage} {shlex.join(args)} training.resume_from_checkpoint=latest`"


def _graceful_stop(trainer, config, is_main: bool) -> GracefulStop:
    def timed_out(signum, step):  # the timer's thread: the process exits right after this
        step = trainer.state.global_step if step is None else step
        name = signal.Signals(signum).name
        reason = (f"stopped by {name} at step {step}: the {config.stop_grace_seconds:g} s grace period "
                  f"(training.stop_grace_seconds) ended before the checkpoint was written; resume from the last "
                  f"complete checkpoint with {resume_hint(config)}")
        if is_main:
            write_stopped(config.output_dir, reason, step)
        print(reason, file=sys.stderr, flush=True)

    return GracefulStop(trainer.accelerator, config.stop_grace_seconds, on_timeout=timed_out)


@contextmanager
def _installed(stop: GracefulStop):
    stop.install()
    try:
        yield
    finally:
        stop.uninstall()  # back to the handlers before (adapt/stages/entry.py's, in a stage's process)
