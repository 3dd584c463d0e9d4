"""The fused experts path (`model.experts_implementation: adapt_fused`) against transformers' grouped_mm: the same
loss, load-balancing loss and gradients, through the model, through the trainers, and kernel by kernel under
Triton's CPU interpreter."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import adapt.model  # noqa: F401  (registers adapt_fused)
from adapt.model import fused_experts as fx
from conftest import REPO, tiny_olmoe

SHAPE = dict(vocab_size=256, hidden_size=128, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, num_experts=8, num_experts_per_tok=3, output_router_logits=True)


def model_for(impl: str, dtype=torch.float32, **overrides):
    model = tiny_olmoe(seed=0, **{**SHAPE, **overrides})
    for layer in model.model.layers:
        # Decisive routing: at init every router logit is near zero, so a float32 rounding difference can flip a
        # near-tie in top-k and move gradients by 1e-4. Run-to-run noise in CPU kernels alone does that.
        layer.mlp.gate.weight.data.normal_(0, 1.0, generator=torch.Generator().manual_seed(3))
    model = model.to(dtype)
    model.set_experts_implementation(impl)
    return model


def step(impl: str, dtype=torch.float32, attention_mask=None, **overrides):
    """Loss, load-balancing loss and every gradient of one forward/backward of the same model and batch."""
    model = model_for(impl, dtype, **overrides)
    ids = torch.randint(2, 256, (2, 65), generator=torch.Generator().manual_seed(1))
    labels = ids if attention_mask is None else ids.masked_fill(attention_mask == 0, -100)
    out = model(input_ids=ids, labels=labels, attention_mask=attention_mask)
    out.loss.backward()
    return out.loss.double(), out.aux_loss.double(), {n: p.grad.double() for n, p in model.named_parameters()}


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


@pytest.mark.parametrize("padded", [False, True])
def test_float32_matches_grouped_mm_in_loss_aux_loss_and_every_gradient(padded):
    mask = None
    if padded:  # the load-balancing loss then excludes pads: routing of padded rows must not leak in
        mask = torch.ones(2, 65, dtype=torch.long)
        mask[1, 40:] = 0
    loss, aux, grads = step("adapt_fused", attention_mask=mask)
    ref_loss, ref_aux, ref_grads = step("grouped_mm", attention_mask=mask)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    assert aux.item() == pytest.approx(ref_aux.item(), rel=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        assert rel_err(grads[name], ref_grads[name]) < 1e-5, name
    assert grads["model.layers.0.mlp.gate.weight"].abs().sum() > 0  # the router learns through the fused weighting


def experts_step(impl: str, dtype, tokens=512):
    """Output and gradients of one experts layer (OLMoE-like ratios, routing held fixed), in float64 for float32."""
    experts = tiny_olmoe(seed=0, **SHAPE).model.layers[0].mlp.experts.to(dtype)
    experts.config._experts_implementation = impl
    g = torch.Generator().manual_seed(2)
    x = torch.randn(tokens, SHAPE["hidden_size"], generator=g).to(dtype).requires_grad_()
    index = torch.rand(tokens, SHAPE["num_experts"], generator=g).topk(SHAPE["num_experts_per_tok"], dim=-1).indices
    weights = torch.rand(tokens, SHAPE["num_experts_per_tok"], generator=g).to(dtype).requires_grad_()
    out = experts(x, index, weights)
    out.backward(torch.randn(out.shape, generator=g).to(dtype))
    return {"out": out.double(), "x": x.grad.double(), "weights": weights.grad.double(),
            **{n: p.grad.double() for n, p in experts.named_parameters()}}


def test_bfloat16_is_as_close_to_float32_as_grouped_mm_is():
    """bf16 changes rounding (the weight moves before the down projection, the SwiGLU runs in float32), so the check
    is against float32: the fused layer's error may not exceed stock bf16's by more than rounding noise. Routing is
    held fixed: through a whole model, a near-tie in top-k can flip either way and swamp what is measured here."""
    exact = experts_step("grouped_mm", torch.float32)
    fused, stock = experts_step("adapt_fused", torch.bfloat16), experts_step("grouped_mm", torch.bfloat16)
    for name in exact:
        assert rel_err(fused[name], exact[name]) <= 1.25 * rel_err(stock[name], exact[name]) + 1e-3, name


def test_reference_backward_matches_autograd():
    h = torch.randn(7, 10, dtype=torch.float64, requires_grad=True)
    w = torch.rand(7, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(fx.WeightedSwiGLU.apply, (h, w))
    plan = fx.plan_routes(torch.tensor([[2, 0], [1, 2], [0, 1]]), num_experts=3)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda t: fx.PermuteTokens.apply(t, plan.token_of_row_S, plan.row_of_slot_TK), (x,))
    y = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda t: fx.UnpermuteSum.apply(t, plan.row_of_slot_TK, plan.token_of_row_S), (y,))


def test_route_plan_groups_rows_by_expert():
    top_k_index_TK = torch.tensor([[3, 0], [0, 2], [3, 1], [0, 3]])
    plan = fx.plan_routes(top_k_index_TK, num_experts=5)
    assert plan.offsets_E.tolist() == [3, 4, 5, 8, 8]  # expert 0 has 3 rows, 1 and 2 one each, 3 three, 4 none
    experts_in_row_order = top_k_index_TK.reshape(-1)[plan.perm_S]
    assert experts_in_row_order.tolist() == sorted(experts_in_row_order.tolist())
    assert plan.token_of_row_S.tolist() == [0, 1, 3, 2, 1, 0, 2, 3]
    for t in range(4):  # every slot points at a row that holds its own token
        assert all(plan.token_of_row_S[plan.row_of_slot_TK[t, j]] == t for j in range(2))


def test_layouts_it_does_not_cover_fall_back_to_grouped_mm(monkeypatch):
    model = tiny_olmoe(seed=0, **{**SHAPE, "hidden_act": "gelu"})
    assert fx.unsupported_reason(model.model.layers[0].mlp.experts) == "the 'gelu' activation"
    calls = []
    stock = fx.grouped_mm_experts_forward
    monkeypatch.setattr(fx, "grouped_mm_experts_forward", lambda *a: calls.append(1) or stock(*a))
    loss, _, grads = step("adapt_fused", hidden_act="gelu")
    assert len(calls) == 2  # both layers
    ref_loss, _, ref_grads = step("grouped_mm", hidden_act="gelu")
    assert loss.item() == ref_loss.item()


def test_lora_on_the_experts_trains_the_same_adapters():
    """PEFT's LoRA on the fused expert weights (`target_parameters`) sees the same forward and gradients."""
    from peft import LoraConfig, get_peft_model

    grads = {}
    for impl in ("grouped_mm", "adapt_fused"):
        torch.manual_seed(5)  # the same random (non-zero) adapter weights for both
        model = get_peft_model(model_for(impl), LoraConfig(
            r=4, lora_alpha=8, init_lora_weights=False,
            target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]))
        ids = torch.randint(2, 256, (2, 33), generator=torch.Generator().manual_seed(1))
        model(input_ids=ids, labels=ids).loss.backward()
        grads[impl] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert len(grads["adapt_fused"]) == 8  # A and B of both expert weights in both layers
    assert all(rel_err(grads["adapt_fused"][n], grads["grouped_mm"][n]) < 1e-5 for n in grads["grouped_mm"])


def test_the_implementation_is_not_written_into_saved_configs(tmp_path):
    """A saved model must load where the toolkit is not installed."""
    model = tiny_olmoe(seed=0)
    model.set_experts_implementation("adapt_fused")
    model.save_pretrained(tmp_path)
    assert "adapt_fused" not in (tmp_path / "config.json").read_text()


def test_expert_parallelism_with_adapt_fused_is_refused_before_loading(tmp_path):
    from adapt.config import RecipeError, load_recipe
    from conftest import TINY_SFT, write_recipe

    text = TINY_SFT.format(rows=8, lb=0.01, z=0.001, out=tmp_path / "o", steps=1).replace(
        "  dtype: float32", "  dtype: float32\n  experts_implementation: adapt_fused") + \
        "parallel:\n  deepspeed: zero2\n  expert_parallel_size: 2\n"
    with pytest.raises(RecipeError, match="model.experts_implementation.*AutoEP"):
        load_recipe(write_recipe(tmp_path / "r.yaml", text))


def test_sft_then_dpo_follow_the_stock_trajectory(tmp_path):
    """Through the toolkit's trainers (router losses on): per-step losses equal those of grouped_mm."""
    from adapt.stages import dpo, sft
    from test_training import dpo_config, metrics, sft_config

    runs = {}
    for impl in ("grouped_mm", "adapt_fused"):
        config = sft_config(tmp_path, name=f"sft-{impl}")
        config.model.experts_implementation = impl
        sft.run(config)
        config = dpo_config(tmp_path, tmp_path / f"sft-{impl}", name=f"dpo-{impl}")
        config.model.experts_implementation = impl
        dpo.run(config)
        runs[impl] = [r[k] for stage in ("sft", "dpo") for r in metrics(tmp_path / f"{stage}-{impl}") if "loss" in r
                      for k in ("loss", "aux_loss", "z_loss")]
    assert len(runs["adapt_fused"]) == 3 * 7
    assert runs["adapt_fused"] == pytest.approx(runs["grouped_mm"], rel=1e-4)


# ----------------------------------------------------------------------- Triton kernels, on the CPU interpreter

KERNEL_CHECK = r"""
import torch
import adapt.model
from adapt.model import fused_experts as fx, moe_kernels as mk
g = torch.Generator().manual_seed(0)
for rows, inter in [(5, 48), (3, 1100)]:  # 1100 > BLOCK: the column loop runs twice, the second chunk masked
    h = torch.randn(rows, 2 * inter, generator=g)
    w = torch.rand(rows, generator=g)
    ga = torch.randn(rows, inter, generator=g)
    assert torch.allclose(mk.swiglu_weighted(h, w), fx.swiglu_weighted_reference(h, w), atol=1e-5)
    for got, want in zip(mk.swiglu_weighted_backward(h, w, ga), fx.swiglu_weighted_backward_reference(h, w, ga)):
        assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
src = torch.randn(12, 1030, generator=g)
index = torch.randperm(12, generator=g).view(4, 3)
assert torch.allclose(mk.gather_rows_sum(src, index), fx.gather_rows_sum_reference(src, index), atol=1e-5)
assert mk.gather_rows_sum(src, index[:0]).shape == (0, 1030)
# bf16 loads and stores: the interpreter's bf16 rounding differs from torch's, so agreement is to one bf16 step
close = dict(rtol=2 ** -7, atol=2 ** -7)
h, w, ga = h.bfloat16(), w.bfloat16(), ga.bfloat16()
torch.testing.assert_close(mk.swiglu_weighted(h, w).float(), fx.swiglu_weighted_reference(h, w).float(), **close)
for got, want in zip(mk.swiglu_weighted_backward(h, w, ga), fx.swiglu_weighted_backward_reference(h, w, ga)):
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), **close)
src = src.bfloat16()
torch.testing.assert_close(mk.gather_rows_sum(src, index).float(), fx.gather_rows_sum_reference(src, index).float(),
                           **close)
print("kernels ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernels_match_the_reference_on_the_cpu_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}  # must be set before triton is imported: a fresh process
    run = subprocess.run([sys.executable, "-c", KERNEL_CHECK], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0 and "kernels ok" in run.stdout, run.stderr[-3000:]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_model_with_triton_kernels_matches_grouped_mm_on_the_cpu_interpreter():
    script = Path(__file__).with_name("scripts") / "fused_model_check.py"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "triton kernels used" in run.stdout, run.stdout[-2000:] + run.stderr[-3000:]
