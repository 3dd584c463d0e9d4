"""Run under TRITON_INTERPRET=1: one forward/backward of a tiny OLMoE with adapt_fused's Triton kernels (on CPU
tensors) against transformers' grouped_mm. Prints `triton kernels used` when every check passed."""

import os
import sys

import torch

assert os.environ.get("TRITON_INTERPRET") == "1", "set TRITON_INTERPRET=1 before starting this script"
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # tests/, for conftest and test_fused_experts

import adapt.model  # noqa: E402,F401 (registers adapt_fused; after the sys.path line above)
from adapt.model import moe_kernels  # noqa: E402
from test_fused_experts import rel_err, step  # noqa: E402

calls = {}
for name in ("swiglu_weighted", "swiglu_weighted_backward", "gather_rows_sum"):
    original = getattr(moe_kernels, name)

    def counted(*a, _f=original, _n=name, **k):
        calls[_n] = calls.get(_n, 0) + 1
        return _f(*a, **k)

    setattr(moe_kernels, name, counted)

mask = torch.ones(2, 65, dtype=torch.long)
mask[1, 50:] = 0
loss, aux, grads = step("adapt_fused", attention_mask=mask)
ref_loss, ref_aux, ref_grads = step("grouped_mm", attention_mask=mask)
assert abs(loss - ref_loss) <= 1e-6 * abs(ref_loss), (loss, ref_loss)
assert abs(aux - ref_aux) <= 1e-6 * abs(ref_aux), (aux, ref_aux)
worst = max(rel_err(grads[n], ref_grads[n]) for n in grads)
assert worst < 1e-5, worst
# two layers: 2 x swiglu forward, 2 x backward, 2 x un-permute forward + 2 x permute backward
assert calls == {"swiglu_weighted": 2, "swiglu_weighted_backward": 2, "gather_rows_sum": 4}, calls
print(f"triton kernels used {calls}; loss {loss.item():.6f} vs {ref_loss.item():.6f}; worst gradient error {worst:.1e}")
