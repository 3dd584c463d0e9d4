"""Resuming from a Trainer checkpoint without losing the experts.

transformers 5 saves OLMoE's fused experts in the Hub's per-expert layout (`experts.0.gate_proj.weight`, ...) and
converts them back in `from_pretrained`. The Trainer's resume path loads the checkpoint's raw state dict instead,
so the experts come back as "unexpected keys", are skipped with a warning, and the run silently continues from the
wrong expert weights. Loading through `from_pretrained` applies the conversion. (DeepSpeed resumes from its own
engine checkpoint, which is unaffected.)
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class ConvertingCheckpointMixin:
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = self.model if model is None else model
        if self.is_deepspeed_enabled or self.is_fsdp_enabled or not hasattr(model, "from_pretrained"):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        dtype = next(model.parameters()).dtype
        saved = type(model).from_pretrained(resume_from_checkpoint, dtype=dtype).state_dict()
        missing, unexpected = model.load_state_dict(saved, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"{resume_from_checkpoint}: checkpoint does not match the model "
                               f"(missing {missing[:4]}, unexpected {unexpected[:4]})")
        log.info("resumed weights from %s", resume_from_checkpoint)
