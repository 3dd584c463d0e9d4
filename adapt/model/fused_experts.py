"""The toolkit's fused experts path, registered in transformers' `ExpertsInterface` as `adapt_fused`.

A recipe chooses it with `model.experts_implementation: adapt_fused`; the model, TRL's trainers, PEFT and DeepSpeed
ZeRO see the same modules and parameters as with transformers' `grouped_mm`, only the experts' forward differs.

Design note. Transformers' `grouped_mm_experts_forward` (per MoE layer, S = tokens x top_k rows, sorted by expert):

    x_SH = x_TH[perm // k]                      gather; backward: index_put with accumulate (atomics)
    h_S2I = grouped_mm(x_SH, gate_up)           grouped GEMM
    a_SI = silu(gate) * up                      3 kernels forward, more backward, 3 saved temporaries
    y_SH = grouped_mm(a_SI, down)               grouped GEMM
    y_SH = y_SH * weight_S                      S x H multiply, y_SH saved for its backward
    y_SH = y_SH[inv_perm]; out = y.view(T, k, H).sum(1)     S x H copy, then a reduction

Here the GEMMs are the same grouped_mm calls, and the rest is two memory-bound steps (adapt/model/moe_kernels.py):

    x_SH = rows of x_TH                         PermuteTokens: backward is gather_rows_sum, no atomics
    h_S2I = grouped_mm(x_SH, gate_up)
    a_SI = silu(gate) * up * weight_S           WeightedSwiGLU: one kernel each way, only h_S2I saved
    y_SH = grouped_mm(a_SI, down)
    out_TH = gather_rows_sum(y_SH, rows_TK)     UnpermuteSum: one pass, float32 accumulation

The routing weight moves in front of the down projection: down(a * w) = w * down(a) because the experts have no
bias, and the weight then scales I values per row instead of H (1024 vs 2048 for OLMoE). Permute and un-permute are
each other's adjoints, so one gather kernel serves both directions.

Triton runs the two steps on CUDA tensors (and on the CPU under TRITON_INTERPRET=1, which is how the tests check the
kernels); elsewhere the same autograd functions run the PyTorch reference below, so CPU training uses the same math.
`ADAPT_FUSED_KERNELS=torch` runs the reference on a GPU too, to tell a kernel problem from anything else. Expert
layouts this path does not cover (biases, post-expert norms, non-SiLU or custom gates, interleaved gate/up weights,
expert-parallel sentinels) fall back to transformers' grouped_mm, with one warning.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS, _grouped_linear, grouped_mm_experts_forward
from transformers.utils import logging

NAME = "adapt_fused"
logger = logging.get_logger(__name__)
_HAVE_TRITON = importlib.util.find_spec("triton") is not None


def _kernels_for(tensor: torch.Tensor):
    """The Triton kernels module when it can run on `tensor`, else None (PyTorch reference)."""
    if not _HAVE_TRITON or os.environ.get("ADAPT_FUSED_KERNELS") == "torch":
        return None
    if tensor.is_cuda or (tensor.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"):
        from adapt.model import moe_kernels  # needs triton, an optional dependency, and a GPU (or its interpreter)

        return moe_kernels
    return None


# --- PyTorch reference of the two kernels (the CPU path, and what the kernels are tested against) ---------------

def _wide(t: torch.Tensor) -> torch.Tensor:
    """Computation dtype: at least float32, like the kernels (float64 stays float64, for gradcheck)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def swiglu_weighted_reference(h_S2I: torch.Tensor, weight_S: torch.Tensor) -> torch.Tensor:
    gate, up = _wide(h_S2I).chunk(2, dim=-1)
    return (F.silu(gate) * up * _wide(weight_S).unsqueeze(-1)).to(h_S2I.dtype)


def swiglu_weighted_backward_reference(h_S2I, weight_S, grad_a_SI):
    gate, up = _wide(h_S2I).chunk(2, dim=-1)
    grad_a, w = _wide(grad_a_SI), _wide(weight_S).unsqueeze(-1)
    sig = torch.sigmoid(gate)
    silu = gate * sig
    grad_gate = grad_a * w * up * sig * (1 + gate * (1 - sig))
    grad_up = grad_a * w * silu
    grad_w_S = (grad_a * silu * up).sum(-1)
    return torch.cat([grad_gate, grad_up], dim=-1).to(h_S2I.dtype), grad_w_S.to(weight_S.dtype)


def gather_rows_sum_reference(src_RH: torch.Tensor, index_TK: torch.Tensor) -> torch.Tensor:
    tokens, k = index_TK.shape
    summed_dtype = torch.promote_types(src_RH.dtype, torch.float32)
    return src_RH[index_TK.reshape(-1)].view(tokens, k, -1).to(summed_dtype).sum(1).to(src_RH.dtype)


def swiglu_weighted(h_S2I, weight_S):
    kernels = _kernels_for(h_S2I)
    return kernels.swiglu_weighted(h_S2I, weight_S) if kernels else swiglu_weighted_reference(h_S2I, weight_S)


def swiglu_weighted_backward(h_S2I, weight_S, grad_a_SI):
    kernels = _kernels_for(h_S2I)
    if kernels:
        return kernels.swiglu_weighted_backward(h_S2I, weight_S, grad_a_SI)
    return swiglu_weighted_backward_reference(h_S2I, weight_S, grad_a_SI)


def gather_rows_sum(src_RH, index_TK):
    kernels = _kernels_for(src_RH)
    return kernels.gather_rows_sum(src_RH, index_TK) if kernels else gather_rows_sum_reference(src_RH, index_TK)


# --- Autograd functions ---------------------------------------------------------------------------------------------

class PermuteTokens(torch.autograd.Function):
    """x_SH = x_TH[token_of_row_S]; each token appears k times, and its gradient is the sum of its k rows."""

    @staticmethod
    def forward(ctx, x_TH, token_of_row_S, row_of_slot_TK):
        ctx.save_for_backward(row_of_slot_TK)
        return x_TH.index_select(0, token_of_row_S)

    @staticmethod
    def backward(ctx, grad_x_SH):
        (row_of_slot_TK,) = ctx.saved_tensors
        return gather_rows_sum(grad_x_SH, row_of_slot_TK), None, None


class UnpermuteSum(torch.autograd.Function):
    """out_TH[t] = sum over t's k slots of y_SH[row]; the adjoint of PermuteTokens."""

    @staticmethod
    def forward(ctx, y_SH, row_of_slot_TK, token_of_row_S):
        ctx.save_for_backward(token_of_row_S)
        return gather_rows_sum(y_SH, row_of_slot_TK)

    @staticmethod
    def backward(ctx, grad_out_TH):
        (token_of_row_S,) = ctx.saved_tensors
        return grad_out_TH.index_select(0, token_of_row_S), None, None


class WeightedSwiGLU(torch.autograd.Function):
    """a_SI = silu(gate) * up * weight_S, with h_S2I = [gate | up]; saves only its inputs."""

    @staticmethod
    def forward(ctx, h_S2I, weight_S):
        ctx.save_for_backward(h_S2I, weight_S)
        return swiglu_weighted(h_S2I, weight_S)

    @staticmethod
    def backward(ctx, grad_a_SI):
        h_S2I, weight_S = ctx.saved_tensors
        return swiglu_weighted_backward(h_S2I, weight_S, grad_a_SI)


# --- The experts forward ---------------------------------------------------------------------------------------------

@dataclass
class RoutePlan:
    """Where each (token, slot) pair goes once rows are sorted by expert. Integer bookkeeping only, no gradient."""

    perm_S: torch.Tensor  # sorted row -> flat slot (token * k + j)
    token_of_row_S: torch.Tensor  # sorted row -> source token
    row_of_slot_TK: torch.Tensor  # (token, j) -> sorted row
    offsets_E: torch.Tensor  # int32 end row of each expert's group (grouped_mm `offs`)


def plan_routes(top_k_index_TK: torch.Tensor, num_experts: int) -> RoutePlan:
    tokens, k = top_k_index_TK.shape
    expert_of_slot_S = top_k_index_TK.reshape(-1)
    _, perm_S = torch.sort(expert_of_slot_S, stable=True)
    row_of_slot_S = torch.empty_like(perm_S)
    row_of_slot_S[perm_S] = torch.arange(perm_S.numel(), device=perm_S.device)
    # histc, not bincount: bincount sizes its output from the data, which costs a GPU sync in every layer. histc counts
    # floats on the CPU and ints on CUDA (transformers' grouped_mm does the same).
    counted = expert_of_slot_S.float() if expert_of_slot_S.device.type in ("cpu", "mps") else expert_of_slot_S.int()
    tokens_per_expert_E = torch.histc(counted, bins=num_experts, min=0, max=num_experts - 1)
    return RoutePlan(perm_S=perm_S, token_of_row_S=perm_S // k, row_of_slot_TK=row_of_slot_S.view(tokens, k),
                     offsets_E=torch.cumsum(tokens_per_expert_E, 0, dtype=torch.int32))


def unsupported_reason(experts: torch.nn.Module) -> str | None:
    """Why this experts module needs transformers' grouped_mm instead, or None."""
    act = getattr(experts.config, "hidden_act", "silu")
    checks = [(experts.has_gate, "experts without a gate projection"), (not experts.has_bias, "expert biases"),
              (not experts.has_post_expert_norm, "a post-expert norm"), (act == "silu", f"the {act!r} activation"),
              (experts.is_concatenated, "interleaved gate/up weights"),
              (not experts._is_expert_parallel, "expert-parallel sentinels"),
              (type(experts)._apply_gate.__qualname__ == "_default_apply_gate", "a custom gate function")]
    reasons = [why for ok, why in checks if not ok]
    return ", ".join(reasons) or None


def fused_experts_forward(self, hidden_states_TH, top_k_index_TK, top_k_weights_TK):
    reason = unsupported_reason(self)
    if reason:
        logger.warning_once(f"{NAME}: {type(self).__name__} has {reason}; using transformers' grouped_mm instead.")
        return grouped_mm_experts_forward(self, hidden_states_TH, top_k_index_TK, top_k_weights_TK)
    plan = plan_routes(top_k_index_TK, self.num_experts)
    weight_S = top_k_weights_TK.reshape(-1)[plan.perm_S]
    x_SH = PermuteTokens.apply(hidden_states_TH, plan.token_of_row_S, plan.row_of_slot_TK)
    h_S2I = _grouped_linear(x_SH, self.gate_up_proj, plan.offsets_E, is_transposed=self.is_transposed)
    a_SI = WeightedSwiGLU.apply(h_S2I, weight_S.to(h_S2I.dtype))
    y_SH = _grouped_linear(a_SI, self.down_proj, plan.offsets_E, is_transposed=self.is_transposed)
    return UnpermuteSum.apply(y_SH, plan.row_of_slot_TK, plan.token_of_row_S).to(hidden_states_TH.dtype)


ALL_EXPERTS_FUNCTIONS.register(NAME, fused_experts_forward)
