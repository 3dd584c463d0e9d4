"""Trainer callbacks."""

from __future__ import annotations

import json
import math
import os

from transformers import TrainerCallback


class MetricsJSONLCallback(TrainerCallback):
    """Append every log (train and eval) to `<output_dir>/metrics.jsonl`, one JSON object per logging step."""

    def __init__(self, filename: str = "metrics.jsonl"):
        self.filename = filename

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        os.makedirs(args.output_dir, exist_ok=True)
        row = {"step": state.global_step, "epoch": state.epoch}
        row.update({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in logs.items()})
        with open(os.path.join(args.output_dir, self.filename), "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
