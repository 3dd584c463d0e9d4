"""Triton kernels for the fused experts path (adapt/model/fused_experts.py).

Written by hand because no maintained library offers them for transformers' expert layout: liger-kernel's SwiGLU
has no routing weight, and the maintained fused-MoE kernels (SonicMoE, DeepGEMM) are whole-layer CUDA kernels fetched
from the Hub at run time, Hopper-only, with no CPU path to test against. The GEMMs stay torch's grouped_mm.

Two memory-bound steps, each one pass over the rows instead of PyTorch's several kernels and temporaries:
- `swiglu_weighted`: a_SI = silu(gate) * up * weight from the grouped up-projection h_S2I ([gate | up] per row), and
  its backward, which also reduces the routing weight's gradient over the row.
- `gather_rows_sum`: out_TH[t] = sum_k src_RH[index_TK[t, k]], accumulated in float32. It un-permutes the experts'
  rows back to tokens (and, in the backward, sums the k copies of each token's gradient).

Every program owns one row and walks its columns in BLOCK-wide chunks; offsets are int64 so that S x H beyond 2^31
elements stays correct. Tested on the CPU with TRITON_INTERPRET=1 in float32 (tests/test_fused_experts.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _swiglu_weighted_fwd(h_ptr, w_ptr, a_ptr, inner, stride_h, stride_a, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    w = tl.load(w_ptr + row).to(tl.float32)
    for start in range(0, inner, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < inner
        g = tl.load(h_ptr + row * stride_h + cols, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(h_ptr + row * stride_h + inner + cols, mask=mask, other=0.0).to(tl.float32)
        a = g * tl.sigmoid(g) * u * w
        tl.store(a_ptr + row * stride_a + cols, a.to(a_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_weighted_bwd(h_ptr, w_ptr, grad_a_ptr, grad_h_ptr, grad_w_ptr, inner, stride_h, stride_ga, stride_gh,
                         BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    w = tl.load(w_ptr + row).to(tl.float32)
    grad_w = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, inner, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < inner
        g = tl.load(h_ptr + row * stride_h + cols, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(h_ptr + row * stride_h + inner + cols, mask=mask, other=0.0).to(tl.float32)
        ga = tl.load(grad_a_ptr + row * stride_ga + cols, mask=mask, other=0.0).to(tl.float32)
        sig = tl.sigmoid(g)
        silu = g * sig
        grad_w += ga * silu * u
        grad_g = ga * w * u * sig * (1.0 + g * (1.0 - sig))
        grad_u = ga * w * silu
        tl.store(grad_h_ptr + row * stride_gh + cols, grad_g.to(grad_h_ptr.dtype.element_ty), mask=mask)
        tl.store(grad_h_ptr + row * stride_gh + inner + cols, grad_u.to(grad_h_ptr.dtype.element_ty), mask=mask)
    tl.store(grad_w_ptr + row, tl.sum(grad_w, axis=0))


@triton.jit
def _gather_rows_sum(src_ptr, index_ptr, out_ptr, H, stride_src, stride_out, K: tl.constexpr, BLOCK: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    for start in range(0, H, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < H
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for j in tl.static_range(K):
            r = tl.load(index_ptr + t * K + j).to(tl.int64)
            acc += tl.load(src_ptr + r * stride_src + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + t * stride_out + cols, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _block(width: int) -> int:
    return min(BLOCK, triton.next_power_of_2(width))


def swiglu_weighted(h_S2I: torch.Tensor, weight_S: torch.Tensor) -> torch.Tensor:
    h_S2I = h_S2I.contiguous()
    rows, width = h_S2I.shape
    a_SI = h_S2I.new_empty(rows, width // 2)
    if rows:
        _swiglu_weighted_fwd[(rows,)](h_S2I, weight_S.contiguous(), a_SI, width // 2, h_S2I.stride(0), a_SI.stride(0),
                                      BLOCK=_block(width // 2))
    return a_SI


def swiglu_weighted_backward(h_S2I: torch.Tensor, weight_S: torch.Tensor, grad_a_SI: torch.Tensor):
    h_S2I, grad_a_SI = h_S2I.contiguous(), grad_a_SI.contiguous()
    rows, width = h_S2I.shape
    grad_h_S2I = torch.empty_like(h_S2I)
    grad_w_S = torch.empty(rows, device=h_S2I.device, dtype=torch.float32)
    if rows:
        _swiglu_weighted_bwd[(rows,)](h_S2I, weight_S.contiguous(), grad_a_SI, grad_h_S2I, grad_w_S, width // 2,
                                      h_S2I.stride(0), grad_a_SI.stride(0), grad_h_S2I.stride(0),
                                      BLOCK=_block(width // 2))
    return grad_h_S2I, grad_w_S.to(weight_S.dtype)


def gather_rows_sum(src_RH: torch.Tensor, index_TK: torch.Tensor) -> torch.Tensor:
    src_RH, index_TK = src_RH.contiguous(), index_TK.contiguous()
    tokens, k = index_TK.shape
    out_TH = src_RH.new_empty(tokens, src_RH.size(1))
    if tokens:
        _gather_rows_sum[(tokens,)](src_RH, index_TK, out_TH, src_RH.size(1), src_RH.stride(0), out_TH.stride(0),
                                    K=k, BLOCK=_block(src_RH.size(1)))
    return out_TH
