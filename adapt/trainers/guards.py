"""Stop a run at its first non-finite loss.

transformers' Trainer logs a NaN or inf loss as the mean of the steps before it (`logging_nan_inf_filter`) and keeps
training, so a diverged run used to finish with exit code 0 and save NaN weights. The check reads the loss of every
micro-batch; the Trainer already reads it back for that filter, so this adds no synchronisation.
"""

from __future__ import annotations

import torch


class TrainingStopped(RuntimeError):
    """The toolkit stops the run on purpose; the message is the one-line reason the stage prints and keeps in the
    run folder (`stopped.json`, adapt/runfolder.py)."""


class SignalStopped(TrainingStopped):
    """SIGTERM or SIGINT stopped the run at a step boundary, with a checkpoint (adapt/trainers/signals.py)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class NonFiniteLossError(TrainingStopped):
    """The loss of a micro-batch is NaN or infinite; the message names the optimizer step."""


class FiniteLossMixin:
    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not bool(torch.isfinite(loss.detach()).all()):
            raise NonFiniteLossError(
                f"training.output_dir {self.args.output_dir}: step {self.state.global_step + 1}: the loss is "
                f"{loss.detach().float().item()}; the run stops and saves nothing. Fix: lower training.learning_rate "
                f"or keep max_grad_norm on, and check the starting weights and the data")
        return loss
