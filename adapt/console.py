"""The console every command prints to: the library warnings that tell the user nothing are filtered here, in one
place, each with the reason; progress bars of datasets and transformers are drawn only on a terminal.

Filtered (nothing the user can change, and the behaviour is right):
- transformers' FutureWarning on `is_gradient_checkpointing`: TRL 1.16 reads the deprecated property itself.
- torch's UserWarning that `pin_memory` has no accelerator: the Trainer asks for pinned memory on every machine; a CPU
  run ignores it.
- DeepSpeed's "Setting accelerator to CPU" on import, on a machine without a GPU: the CPU is what the run uses.
Not filtered: a warning about the user's own recipe (e.g. transformers' deprecation of `gradient_checkpointing` in
favour of `activation_checkpointing`) stays visible.

Standard library only at import: `adapt --help` stays fast.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

IGNORED = (  # (category, message regex): see the module note for why each
    (FutureWarning, r".*is_gradient_checkpointing.* is deprecated"),
    (UserWarning, r".*'pin_memory' argument is set as true but no accelerator is found"),
)


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def quiet_console() -> None:
    """Apply the module note's filters, and turn the libraries' progress bars off when stderr is not a terminal (in
    a log file each redraw is a new fragment of text)."""
    for category, message in IGNORED:
        warnings.filterwarnings("ignore", message=message, category=category)
    logging.getLogger("DeepSpeed").addFilter(_DropMessage("Setting accelerator to CPU"))
    if not sys.stderr.isatty():
        # read when the libraries load; the calls cover a process that imported them already
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # huggingface_hub's and transformers' bars
        if "datasets" in sys.modules:
            sys.modules["datasets"].disable_progress_bars()
        if "transformers" in sys.modules:
            sys.modules["transformers"].utils.logging.disable_progress_bar()
