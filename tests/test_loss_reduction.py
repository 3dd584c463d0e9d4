"""`training.loss_reduction` and the router terms against a hand-written reference (tests/gradient_reference.py):
open-instruct's summed loss, TRL's token mean, and what share of the gradient the router weights take.

One process here; tests/test_data_parallel.py runs the same step under 2-process launchers (DDP, ZeRO, expert
parallelism) and holds it against the same reference.
"""

import pytest
import torch

from adapt.config import load_recipe
from gradient_reference import logged, max_difference, recipe, reference_step, tokenized_rows, write_fixture


def train_one_step(recipe_path, monkeypatch):
    """Run the SFT stage as `adapt sft` does; return its weights and the gradient the optimizer stepped with."""
    from adapt.stages import sft
    from adapt.trainers import MetricsJSONLCallback

    stepped = {}

    class CaptureGradients(MetricsJSONLCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):  # after clipping
            stepped.update({n: p.grad.detach().clone() for n, p in model.named_parameters()})

    monkeypatch.setattr(sft, "MetricsJSONLCallback", CaptureGradients)
    trainer = sft.run(load_recipe(recipe_path))
    monkeypatch.undo()
    weights = {k: v.detach() for k, v in trainer.model.state_dict().items()}
    return weights, stepped


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_one_step_equals_the_reference(tmp_path, monkeypatch, reduction):
    init, _ = write_fixture(tmp_path)
    # Large router weights so that a wrongly scaled router term could not hide inside the tolerance.
    path = recipe(tmp_path, reduction=reduction, lb=0.5, z=0.05, accumulation=4)
    weights, stepped = train_one_step(path, monkeypatch)
    after, grads, norm = reference_step(init, tokenized_rows(path), reduction=reduction, lb=0.5, z=0.05,
                                        accum_x_procs=4, max_norm=1.0, lr=0.05)
    assert logged(tmp_path / "run", "grad_norm") == pytest.approx(norm, rel=1e-5)  # the pre-clip gradient's norm
    scale = min(1.0, 1.0 / (norm + 1e-6))
    assert max_difference(stepped, {k: g * scale for k, g in grads.items()}) < 1e-6  # the post-clip gradient
    assert max_difference(weights, after) < 1e-6
    if reduction == "sum":
        # open-instruct's summed gradient is tens of times over the clip: the update is clipped, as in the real run
        assert norm > 10
    # The run's recipe.yaml says what the router weights multiply, and reloads to the same recipe
    saved = (tmp_path / "run" / "recipe.yaml").read_text()
    header = " ".join(line[2:] for line in saved.splitlines() if line.startswith("# "))
    assert header.startswith("router.load_balancing_weight 0.5 multiplies each micro-batch's load-balancing loss")
    assert ("summed token cross-entropy" if reduction == "sum" else "token-mean cross-entropy") in header
    reloaded = load_recipe(tmp_path / "run" / "recipe.yaml", check_output=False).resolved_recipe()
    original = load_recipe(path, check_output=False).resolved_recipe()
    assert reloaded == original


def test_summed_loss_is_logged_per_micro_batch_like_open_instruct(tmp_path, monkeypatch):
    init, _ = write_fixture(tmp_path)
    path = recipe(tmp_path, reduction="sum", lb=0.0, z=0.0, accumulation=4)
    train_one_step(path, monkeypatch)
    rows = tokenized_rows(path)
    from transformers import OlmoeForCausalLM

    model = OlmoeForCausalLM.from_pretrained(init, dtype=torch.float32)
    with torch.no_grad():
        sums = []
        for input_ids, labels in rows:
            logits = model(input_ids=input_ids[None]).logits[0, :-1]
            keep = labels[1:] != -100
            sums.append(float(torch.nn.functional.cross_entropy(logits[keep], labels[1:][keep], reduction="sum")))
    # open-instruct logs the mean over micro-batches of each micro-batch's summed loss (its step 1: 810.4)
    assert logged(tmp_path / "run", "loss") == pytest.approx(sum(sums) / len(sums), rel=1e-5)


@pytest.mark.parametrize("reduction, lb, z", [("sum", 0.001, 0.0001), ("mean", 0.01, 0.001)])
def test_router_terms_take_the_share_of_the_gradient_the_recipe_says(tmp_path, monkeypatch, reduction, lb, z):
    # The gradient with the router weights minus the gradient without them is the router terms' share. Under `sum`
    # with 0.001 it must be the ablation's formula: 0.001 x aux_loss added to each micro-batch's summed loss. That
    # share is ~1e-5 of the summed gradient, below float32's rounding of it: this runs in float64.
    init, _ = write_fixture(tmp_path, dtype=torch.float64)
    eager = {"experts_implementation": "eager"}  # grouped_mm has no float64 kernel
    with_router = recipe(tmp_path, reduction=reduction, lb=lb, z=z, accumulation=4, max_norm=0.0, out="with",
                         model=eager)
    without = recipe(tmp_path, reduction=reduction, lb=0.0, z=0.0, accumulation=4, max_norm=0.0, out="without",
                     model=eager)
    _, grads_with = train_one_step(with_router, monkeypatch)
    _, grads_without = train_one_step(without, monkeypatch)
    share = {k: grads_with[k] - grads_without[k] for k in grads_with}

    rows = tokenized_rows(with_router)
    _, ref_with, _ = reference_step(init, rows, reduction=reduction, lb=lb, z=z, accum_x_procs=4, max_norm=0.0, lr=0)
    _, ref_without, _ = reference_step(init, rows, reduction=reduction, lb=0.0, z=0.0, accum_x_procs=4,
                                       max_norm=0.0, lr=0)
    ref_share = {k: ref_with[k] - ref_without[k] for k in ref_with}
    magnitude = max(float(g.abs().max()) for g in ref_share.values())
    assert magnitude > 0
    # The routers of the last layer get their share straight from the router logits: exact to 1e-6 in float64
    # (transformers' load-balancing function takes another path with an attention mask than without one).
    last_gate = max(k for k in ref_share if k.endswith("mlp.gate.weight"))
    assert max_difference({last_gate: share[last_gate]}, {last_gate: ref_share[last_gate]}) \
        < 1e-6 * float(ref_share[last_gate].abs().max())
    # Deeper down the share passes through TRL's fused LM-head backward, which rounds the whole gradient (~27 here,
    # the share ~5e-5) in float32: within 1% of the share. A share off by a factor (the process count, the
    # accumulation steps, a mean where a sum belongs) misses by 50% or more.
    assert max_difference(share, ref_share) < 0.01 * magnitude
    # The router terms never reach the LM head or the final norm
    assert float(share["lm_head.weight"].abs().max()) == 0 and float(share["model.norm.weight"].abs().max()) == 0
