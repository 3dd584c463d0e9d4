"""Checkpoints a run resumes from exactly.

Resuming without losing the experts: transformers 5 saves OLMoE's fused experts in the Hub's per-expert layout
(`experts.0.gate_proj.weight`, ...) and converts them back in `from_pretrained`. The Trainer's resume path loads the
checkpoint's raw state dict instead, so the experts come back as "unexpected keys", are skipped with a warning, and
the run silently continues from the wrong expert weights. Loading through `from_pretrained` applies the conversion.
(DeepSpeed resumes from its own engine checkpoint, which is unaffected.) A checkpoint of another model shape is one
line, not a `size mismatch` traceback.

Resuming with the same recipe: every checkpoint gets the resolved recipe it was trained with, before the Trainer's
own files (its `trainer_state.json`, written last, marks the checkpoint complete); the resume compares it with the
recipe given now (adapt/runfolder.py `check_same_recipe`).
"""

from __future__ import annotations

import logging
import os

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from adapt.runfolder import RunFolderError, follow_umask, write_checkpoint_recipe

log = logging.getLogger(__name__)


class ConvertingCheckpointMixin:
    def _save_checkpoint(self, model, trial) -> None:
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        resolved = getattr(self.args, "resolved_recipe", None)  # the toolkit's configs; a plain TRL config has none
        if self.args.should_save and resolved is not None:
            write_checkpoint_recipe(folder, resolved())
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            follow_umask(folder)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = self.model if model is None else model
        if self.is_deepspeed_enabled or self.is_fsdp_enabled or not hasattr(model, "from_pretrained"):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        dtype = next(model.parameters()).dtype
        saved = type(model).from_pretrained(resume_from_checkpoint, dtype=dtype).state_dict()
        problem = state_mismatch(model.state_dict(), saved)
        if problem:
            raise RunFolderError(f"{resume_from_checkpoint}: the checkpoint is not of the model this run trains "
                                 f"({problem}). Fix: resume with the model it was trained with, or start a new run")
        model.load_state_dict(saved, strict=False)  # every name and shape matched above
        log.info("resumed weights from %s", resume_from_checkpoint)


def state_mismatch(model_state: dict, saved: dict) -> str | None:
    """How a checkpoint's tensors differ from the model's (names, then shapes), in words; None when they match."""
    missing = [name for name in model_state if name not in saved]
    unexpected = [name for name in saved if name not in model_state]
    if missing or unexpected:
        return f"missing {missing[:3]}, unexpected {unexpected[:3]}"
    for name, tensor in model_state.items():
        if saved[name].shape != tensor.shape:
            return (f"{name} is {list(saved[name].shape)} in the checkpoint and {list(tensor.shape)} in the "
                    f"model")
    return None
