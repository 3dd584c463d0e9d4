"""Run under `torchrun --nproc_per_node 2`: a tiny model of one family under DeepSpeed ZeRO with expert parallelism
2 (the toolkit's presets and router recording) against the same model trained in one process on the same global
batch; then the export back to the transformers layout. Writes `<out>/<family>-<zero>/rank<r>.json`
(tests/test_expert_parallel.py reads it).

    torchrun --nproc_per_node 2 tests/scripts/ep_parity.py FAMILY:ZERO[,FAMILY:ZERO...] OUT_DIR [STEPS]

ZERO: a DeepSpeed preset (zero2, zero3, zero3-offload). The runs go one after the other in one launch, each with
its own model, engine and seeds, so that the launch's start-up (two processes importing DeepSpeed and
transformers, the process group) is paid once.

What is compared, per rank (its own batch) and per step: logits, the LM loss, the load-balancing loss and z-loss
(the toolkit's formulas on the recorded routing), the routing statistics (tokens per expert, summed over ranks as the
trainer logs them, and router entropy), every gradient after the first backward (DeepSpeed's full gradient of each
parameter, the expert slices this rank owns), and the logits after every optimizer step (AdamW with weight decay and
gradient clipping, so a gradient counted twice or a norm over the wrong experts would show).
"""

import copy
import json
import sys
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
import transformers
from deepspeed.utils import safe_get_full_grad

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the tiny family configs

from adapt.config.families import FAMILIES  # noqa: E402
from adapt.losses.router import load_balancing_loss, router_stats, router_z_loss  # noqa: E402
from adapt.model.routing import RoutingRecorder, find_backbone  # noqa: E402
from adapt.parallel import deepspeed_config  # noqa: E402
from adapt.parallel.autoep import hf_state_dict, match_router_precision, register_presets, to_transformers_names  # noqa: E402
from tiny_families import TINY  # noqa: E402

RUNS, OUT_ROOT = [run.split(":") for run in sys.argv[1].split(",")], Path(sys.argv[2])
STEPS = int(sys.argv[3]) if len(sys.argv) > 3 else 3
LR, WEIGHT_DECAY, CLIP, LB, Z = 1e-2, 0.1, 0.5, 0.01, 0.001
VOCAB, SEQ = 96, 12

deepspeed.init_distributed(dist_backend="gloo")
rank, world = dist.get_rank(), dist.get_world_size()


def tiny_model(family):
    f = FAMILIES[family]
    config = getattr(transformers, f.config_class)(vocab_size=VOCAB, pad_token_id=0, eos_token_id=1, bos_token_id=1,
                                                   **TINY[family])
    torch.manual_seed(0)
    model = getattr(transformers, f.model_class)(config).float()
    with torch.no_grad():  # decisive routers (a rounding difference must not flip a near-tie) and, where the family
        for name, p in model.named_parameters():  # has one, a non-zero score-correction bias that changes the choice
            if name.endswith(f".{f.router_module}.weight"):
                p.normal_(0, 1.0, generator=torch.Generator().manual_seed(3))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(torch.randn(b.shape, generator=torch.Generator().manual_seed(4)) * 0.3)
    return config, model


def batch(r, step):
    """Rank r's batch at `step`: 2 rows, the second padded at the end (padding must not count in any loss)."""
    ids = torch.randint(2, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(100 * step + r))
    mask = torch.ones_like(ids)
    mask[1, SEQ - 4:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask, ids.masked_fill(mask == 0, -100)


def step_outputs(f, config, net, recorder, r, step):
    """Loss with the router terms (softmax families), and what is compared, for rank r's batch."""
    ids, mask, labels = batch(r, step)
    recorder.start()
    out = net(input_ids=ids, attention_mask=mask, labels=labels)
    captured = recorder.stop()
    lb = load_balancing_loss(captured.logits, getattr(config, f.experts_attr), getattr(config, f.top_k_attr),
                             captured.token_mask_T)
    z = router_z_loss(captured.logits, captured.token_mask_T)
    loss = out.loss + (LB * lb + Z * z if f.router_losses else 0)
    stats = router_stats(captured, getattr(config, f.top_k_attr), f.scoring)
    return loss, {"logits": out.logits.detach(), "lm_loss": out.loss.item(), "lb": lb.item(), "z": z.item(),
                  "counts": stats.tokens_per_expert_LE, "entropy": stats.entropy_sum_L, "layers": stats.layer_ids}


def parity(family: str, zero: str, out_dir: Path) -> None:
    f = FAMILIES[family]
    config, model = tiny_model(family)
    reference = copy.deepcopy(model)

    # -------------------------------------------------------------------------------------- the one-process run
    ref_recorder = RoutingRecorder(find_backbone(reference))
    ref_optimizer = torch.optim.AdamW(reference.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    ref_steps, ref_grads, ref_norms = [], None, []
    for step in range(STEPS):
        outputs = [step_outputs(f, config, reference, ref_recorder, r, step) for r in range(world)]
        total = torch.stack([loss for loss, _ in outputs]).mean()  # data parallelism: the mean of the ranks' losses
        total.backward()
        ref_norms.append(torch.nn.utils.clip_grad_norm_(reference.parameters(), float("inf")).item())
        if step == 0:
            ref_grads = {n: p.grad.clone() for n, p in reference.named_parameters()}
        torch.nn.utils.clip_grad_norm_(reference.parameters(), CLIP)
        ref_optimizer.step()
        ref_optimizer.zero_grad()
        ref_steps.append([o for _, o in outputs])
    reference.eval()

    # -------------------------------------------------------------------------------------- the expert-parallel run
    register_presets()
    ds = deepspeed_config(zero, 2)
    ds.update(train_micro_batch_size_per_gpu=2, gradient_accumulation_steps=1, gradient_clipping=CLIP,
              bf16={"enabled": False})
    ds["optimizer"]["params"] = {"lr": LR, "weight_decay": WEIGHT_DECAY, "torch_adam": True}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
    match_router_precision(engine.module)  # what the trainer does once AutoEP has converted the model
    recorder = RoutingRecorder(find_backbone(engine.module))
    result = {"rank": rank, "autoep": type(engine.module.model.layers[-1].get_submodule(f.moe_block)).__name__,
              "steps": []}
    for step in range(STEPS):
        loss, got = step_outputs(f, config, engine, recorder, rank, step)
        want = ref_steps[step][rank]
        counts = got["counts"].clone()
        dist.all_reduce(counts)  # the trainer logs the counts summed over ranks
        result["steps"].append({
            "logits": (got["logits"] - want["logits"]).abs().max().item(),
            "lm_loss": abs(got["lm_loss"] - want["lm_loss"]), "lb": abs(got["lb"] - want["lb"]),
            "z": abs(got["z"] - want["z"]), "layers": got["layers"] == want["layers"],
            "own_counts_equal": torch.equal(got["counts"], want["counts"]),
            "summed_counts_equal": torch.equal(counts, sum(o["counts"] for o in ref_steps[step])),
            "entropy": (got["entropy"] - want["entropy"]).abs().max().item(),
            "lb_value": got["lb"], "z_value": got["z"]})
        engine.backward(loss)
        if step == 0:  # every gradient, against the one-process gradient of the mean loss (experts: this rank's)
            full = {n: safe_get_full_grad(p) for n, p in engine.module.named_parameters()}
            local = to_transformers_names(full, f)
            diffs = {}
            for name, grad in local.items():
                expected = ref_grads[name]
                if grad.shape != expected.shape:  # this rank's experts: a contiguous slice of the experts dimension
                    per_rank = expected.shape[0] // 2
                    expected = expected[rank * per_rank:(rank + 1) * per_rank]
                diffs[name] = ((grad - expected).norm() / expected.norm().clamp(min=1e-12)).item()
            result["grad_rel_diff"] = max(diffs.values())
            result["grad_worst"] = max(diffs, key=diffs.get)
            result["grads_compared"] = len(diffs)
            result["grads_expected"] = len(ref_grads)
        engine.step()
        norm = float(engine.get_global_grad_norm())
        result["steps"][-1]["grad_norm"] = abs(norm - ref_norms[step]) / ref_norms[step]

    engine.eval()
    ids, mask, _ = batch(rank, 0)
    with torch.no_grad():
        trained = engine(input_ids=ids, attention_mask=mask).logits
        expected_logits = reference(input_ids=ids, attention_mask=mask).logits
        result["trajectory_logits"] = (trained - expected_logits).abs().max().item()

    # -------------------------------------------------------------------------------------- back to transformers
    state = hf_state_dict(engine.module)  # collective; the state on rank 0
    folder = out_dir / "saved"
    if rank == 0:
        engine.module.save_pretrained(str(folder), state_dict=state)  # what the stage's save does
    else:
        assert state is None
    dist.barrier()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        result["reloaded_logits"] = (reloaded(input_ids=ids, attention_mask=mask).logits - trained).abs().max().item()
    expected = reference.state_dict()
    got = reloaded.state_dict()
    result["reloaded_keys_equal"] = sorted(got) == sorted(expected)
    tensor_diffs = {k: (got[k].float() - expected[k].float()).abs().max().item() for k in expected}
    result["reloaded_max_tensor_diff"] = max(tensor_diffs.values())
    result["reloaded_worst_tensor"] = max(tensor_diffs, key=tensor_diffs.get)
    (out_dir / f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()


for family, zero in RUNS:
    print(f"rank {rank}: {family} {zero}", flush=True)  # a failure's traceback comes after the run it belongs to
    (OUT_ROOT / f"{family}-{zero}").mkdir(parents=True, exist_ok=True)
    parity(family, zero, OUT_ROOT / f"{family}-{zero}")
