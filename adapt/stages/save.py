"""What a finished stage writes into its run folder: the model in plain transformers layout, the tokenizer with its
chat template, the resolved recipe, the data summary, and last the run record that marks the folder complete."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import textwrap
import time
from pathlib import Path

import yaml

from adapt.parallel.autoep import describe, hf_state_dict, is_autoep
from adapt.runfolder import RunFolderError, follow_umask, non_finite_tensors, write_marker


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
    follow_umask(out)  # safetensors writes its files 0600
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
    layout = describe(trainer.model)
    if layout is not None:
        record["expert_parallel"] = layout
    if getattr(trainer, "router_audit", None) is not None:  # what the first micro-batch measured (router_audit.py)
        record["router_audit"] = trainer.router_audit
    if data_summary is not None:
        (out / "data_summary.json").write_text(json.dumps(data_summary, indent=2) + "\n", encoding="utf-8")
    bad = non_finite_tensors(out)
    if bad:  # the folder gets no run.json, so every reader refuses it
        sys.exit(f"error: {out}: the saved weights hold NaN or inf values ({', '.join(bad[:3])}"
                 f"{', ...' if len(bad) > 3 else ''}); the run is not marked complete")
    write_marker(out, record)  # last: its presence says the folder is complete (adapt/runfolder.py)
    return out


def _save_weights(trainer, config, out: Path) -> None:
    """The model in plain transformers layout. Under expert parallelism each rank holds only its experts in
    AutoEP's layout, so they are gathered and renamed first (adapt/parallel/autoep.py)."""
    if not is_autoep(trainer.model):
        trainer.save_model(str(out))
        if trainer.accelerator.is_main_process and (out / "ref" / "adapter_config.json").is_file():
            # TRL's DPO keeps a frozen copy of the adapter as its reference ("ref"), and PEFT saves every adapter:
            # the copy is the starting point, not part of the trained model
            shutil.rmtree(out / "ref")
        return
    try:
        state = hf_state_dict(trainer.model)  # collective: every rank; the state on rank 0
    except ValueError as e:  # never write a folder that lacks a tensor of the model
        raise RunFolderError(f"{out}: {e}; the run is not saved") from None
    if trainer.accelerator.is_main_process:
        trainer.model.save_pretrained(str(out), state_dict=state)
    trainer.accelerator.wait_for_everyone()
