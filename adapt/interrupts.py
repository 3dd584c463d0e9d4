"""SIGTERM and SIGINT outside the training loop: an exception, so that clean-up runs and the command ends in one line.

Every command runs inside `interrupt_on_signals` (adapt/cli.py, and a stage's own entry for `accelerate launch -m
adapt.stages.sft`): a data build interrupted there removes its temporary folder (its `finally`), and the command exits
with 128 + the signal number after one `stopped:` line instead of a KeyboardInterrupt traceback or a silent kill. The
training loop replaces these handlers with its own, which finish the step and save a checkpoint first
(adapt/trainers/signals.py). Standard library only: `adapt --help` stays fast.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """A stop signal outside the training loop. A BaseException, like KeyboardInterrupt, so that `except Exception`
    recovery code does not swallow it while `finally` clean-up still runs."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


@contextmanager
def interrupt_on_signals():
    """Within: SIGTERM and SIGINT raise `Interrupted` (the main thread only: Python runs signal handlers there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _raise_interrupted) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def exit_code(signum: int) -> int:
    return 128 + signum
