"""What a training run prints: one readable line per logging step, a progress bar only where one can be drawn.

transformers prints each log as a Python dict of 20+ keys (every router statistic per layer), written between the
redraws of its tqdm bar; in a log file or CI output, where `\\r` does not return, the bar's updates and the dicts run
together on the same lines. Here the console gets the numbers a person follows (loss, the router terms, learning rate,
gradient norm, the DPO reward margin and accuracy, the busiest expert's load), and `metrics.jsonl` keeps everything
(adapt/trainers/callbacks.py). The bar is drawn only on a terminal, and never with `training.disable_tqdm`.
"""

from __future__ import annotations

import sys

from transformers import PrinterCallback, ProgressCallback

# The keys of a log the console shows, in this order; the rest (per-layer router statistics, token counts) are in
# metrics.jsonl only.
SHOWN = ("loss", "aux_loss", "z_loss", "rewards/margins", "rewards/accuracies", "eval_loss", "learning_rate",
         "grad_norm", "router/load_ratio_max", "router/entropy_mean")
NAMES = {"learning_rate": "lr", "rewards/margins": "reward margin", "rewards/accuracies": "reward accuracy",
         "router/load_ratio_max": "max load ratio", "router/entropy_mean": "router entropy"}


def metrics_line(step: int, max_steps: int, logs: dict) -> str:
    shown = [f"{NAMES.get(key, key)} {_number(logs[key])}" for key in SHOWN if key in logs]
    epoch = f" (epoch {logs['epoch']:.2f})" if isinstance(logs.get("epoch"), (int, float)) else ""
    return f"step {step}/{max_steps}{epoch}  " + "  ".join(shown)


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class ConsoleProgress(ProgressCallback):
    def __init__(self, bars: bool):
        super().__init__()
        self.bars = bars

    def on_train_begin(self, args, state, control, **kwargs):
        if self.bars:
            super().on_train_begin(args, state, control, **kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bars:
            super().on_step_end(args, state, control, **kwargs)

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if self.bars:
            super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or not any(key in logs for key in SHOWN):
            return  # the end-of-training summary (train_runtime, ...) is in metrics.jsonl
        line = metrics_line(state.global_step, state.max_steps, logs)
        if self.training_bar is not None:
            self.training_bar.write(line)  # above the bar, which redraws below it
        else:
            print(line, flush=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            super().on_train_end(args, state, control, **kwargs)


def use_console(trainer) -> None:
    """Replace the Trainer's own printer or progress bar with `ConsoleProgress`."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(ConsoleProgress(bars=not trainer.args.disable_tqdm and sys.stderr.isatty()))
