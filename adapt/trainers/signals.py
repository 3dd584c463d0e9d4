"""SIGTERM and SIGINT: a preempted or interrupted run stops at a step boundary with a checkpoint it can resume from.

Slurm and Kubernetes send SIGTERM seconds before SIGKILL (Slurm's KillWait and Kubernetes' grace period are 30 s by
default; torchrun waits 30 s before it kills its workers); Ctrl-C sends SIGINT. Killed outright, a run loses every step
since its last periodic checkpoint. Here the first signal only raises a flag:

- The rank that received it finishes its current optimizer step. At every step's end all ranks exchange their flags (one
  gather of one integer; a per-step synchronisation that costs microseconds beside a step), so they stop at the *same*
  step even when only one of them was signalled, and save one complete checkpoint together (the Trainer's own
  `_save_checkpoint`, the one `resume_from_checkpoint: latest` picks up).
- The stage then marks the folder stopped (`stopped.json`: "stopped by SIGTERM at step N; resume with ...") and exits
  with 128 + the signal number (143, 130), the convention shells and schedulers read.
- A timer bounds all of it by `training.stop_grace_seconds` (default 25 s, under the 30 s above): past it the process
  exits without finishing the save rather than be killed in the middle of a write. A checkpoint cut short has no
  `trainer_state.json` (the Trainer writes it last) and is passed over by `latest`, so the previous one stays usable.
- A second signal stops at once. Except within `DUPLICATE_WINDOW_S` of the first: launchers forward what they receive
  (Ctrl-C reaches torchrun and its workers, which torchrun then sends SIGTERM; `scancel` signals every process of the
  step), so one request can arrive twice in a few milliseconds.

Before training starts (data, model load) and in the other commands, adapt/interrupts.py turns both signals into an
exception, so clean-up code runs (a data build's temporary folder is removed) and the command ends in one line.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import torch
from transformers import TrainerCallback

from adapt.interrupts import STOP_SIGNALS, exit_code

DUPLICATE_WINDOW_S = 2.0


class GracefulStop(TrainerCallback):
    """The training loop's side: install around `trainer.train()` (and the final save), then read `signum`."""

    def __init__(self, accelerator, grace_seconds: float, on_timeout=None):
        self.accelerator = accelerator
        self.grace_seconds = grace_seconds
        self.on_timeout = on_timeout  # called with (signal number, step) before the process exits unsaved
        self.received: int | None = None  # the signal this process received
        self.received_at = 0.0
        self.signum: int | None = None  # the signal that stopped the run (any rank's), once agreed at a step end
        self.step: int | None = None
        self._previous: dict = {}
        self._timer: threading.Timer | None = None

    # ------------------------------------------------------------------------------------------ process signals
    def install(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        return self

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        if self._timer is not None:
            self._timer.cancel()

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            self.received, self.received_at = signum, time.monotonic()
            self._timer = threading.Timer(self.grace_seconds, self._give_up)
            self._timer.daemon = True
            self._timer.start()
            print(f"{name} received: finishing the current step and saving a checkpoint (at most "
                  f"{self.grace_seconds:g} s; a second signal stops at once)", file=sys.stderr, flush=True)
        elif time.monotonic() - self.received_at > DUPLICATE_WINDOW_S:
            print(f"{name} received again: stopping now, without saving", file=sys.stderr, flush=True)
            os._exit(exit_code(signum))

    def _give_up(self) -> None:
        signum = self.signum or self.received
        if self.on_timeout is not None:
            self.on_timeout(signum, self.step)
        os._exit(exit_code(signum))

    # --------------------------------------------------------------------------------------------- the Trainer
    def on_step_end(self, args, state, control, **kwargs):
        # every rank takes part at every step: the gather is a collective
        local = torch.tensor([self.received or 0], device=self.accelerator.device)
        signum = int(self.accelerator.gather(local).max().item())
        if signum and self.signum is None:
            self.signum, self.step = signum, state.global_step
            control.should_save, control.should_training_stop = True, True
        return control

    def reason(self, resume_hint: str) -> str:
        name = signal.Signals(self.signum).name
        who = "" if self.received else " (received by another process of the run)"
        return f"stopped by {name}{who} at step {self.step}; resume with {resume_hint}"
