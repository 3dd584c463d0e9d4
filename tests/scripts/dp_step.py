"""Run a stage's module as users launch it, then write what each rank holds after training.

    <launcher> tests/scripts/dp_step.py OUT_DIR STAGE --config RECIPE [overrides...]     (STAGE: sft or dpo)

Each rank writes OUT_DIR/rank<r>.safetensors (its full model weights, gathered from ZeRO-3 partitions; not under
expert parallelism, where each rank holds different experts by design and the run folder's export is compared) and
OUT_DIR/rank<r>.json (its distributed state). tests/test_data_parallel.py and tests/test_loss_reduction.py compare
these files with each other and with a hand-written one-process reference.
"""

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from adapt.stages import dpo, sft
from adapt.stages.entry import load_stage_config


def full_state(trainer) -> dict[str, torch.Tensor]:
    model = trainer.accelerator.unwrap_model(trainer.model)
    params = list(model.parameters())
    if trainer.is_deepspeed_enabled and any(hasattr(p, "ds_id") for p in params):  # ZeRO-3 partitions
        import deepspeed

        with deepspeed.zero.GatheredParameters(params):
            return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def main():
    out, stage = Path(sys.argv[1]), sys.argv[2]
    trainer = {"sft": sft, "dpo": dpo}[stage].run(load_stage_config(stage, sys.argv[3:]))
    from adapt.parallel.autoep import is_autoep

    rank = trainer.accelerator.process_index
    if not is_autoep(trainer.model):
        save_file(full_state(trainer), str(out / f"rank{rank}.safetensors"))
    info = {"rank": rank, "num_processes": trainer.accelerator.num_processes,
            "distributed_type": str(trainer.accelerator.distributed_type),
            "world_size_env": int(os.environ.get("WORLD_SIZE", "1"))}
    (out / f"rank{rank}.json").write_text(json.dumps(info))
    trainer.accelerator.wait_for_everyone()  # both ranks done before either tears down gloo
    trainer.accelerator.state.destroy_process_group()


if __name__ == "__main__":
    main()
