"""MoE router losses and statistics.

Shapes: `router_logits_TE` is one layer's logits, T tokens (batch x sequence, flattened the way HF MoE blocks do)
by E experts; a model gives one per layer. `token_mask_T` is 1 for real tokens and 0 for padding (the flattened
2-D attention mask), or None when every token is real (padding-free batches).

The load-balancing loss is the model's own (transformers' `load_balancing_loss_func`, the one TRL weights with
`router_aux_loss_coef`). The router z-loss (ST-MoE, Zoph et al. 2022, eq. 5; used in OLMoE pretraining) exists in
none of transformers, TRL or DeepSpeed, so it is written here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from adapt.model.routing import RouterCapture, load_ratio


def _flat_mask(token_mask_T: torch.Tensor | None, device, dtype=torch.float32) -> torch.Tensor | None:
    return None if token_mask_T is None else token_mask_T.reshape(-1).to(device=device, dtype=dtype)


def router_z_loss(router_logits: Sequence[torch.Tensor], token_mask_T: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over layers of the mean over real tokens of logsumexp(router logits)^2.

    It keeps router logits small, which keeps the softmax (and bf16 routing) numerically stable. Computed in at least
    fp32 (bf16 logits are upcast; float64 ones stay float64).
    """
    per_layer = []
    for router_logits_TE in router_logits:
        dtype = torch.promote_types(router_logits_TE.dtype, torch.float32)
        z_T = torch.logsumexp(router_logits_TE.to(dtype), dim=-1).square()
        mask_T = _flat_mask(token_mask_T, z_T.device, z_T.dtype)
        if mask_T is None:
            per_layer.append(z_T.mean())
        else:
            per_layer.append((z_T * mask_T).sum() / mask_T.sum().clamp(min=1))
    return torch.stack(per_layer).mean()


def load_balancing_loss(router_logits: Sequence[torch.Tensor], num_experts: int, top_k: int,
                        attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The Switch-Transformer loss as transformers computes it for Mixtral/OLMoE (E * sum_e f_e * P_e, pooled over
    layers; about top_k when perfectly balanced). Thin wrapper so the toolkit names one function for both losses."""
    return load_balancing_loss_func(tuple(router_logits), num_experts, top_k, attention_mask)


@dataclass
class RouterStats:
    """Routing counts accumulated over micro-batches until the next logging step."""

    layer_ids: list[int]  # the model's layer number of each row (dense layers have no router and no row)
    tokens_per_expert_LE: torch.Tensor  # top-k assignments per MoE layer and expert (real tokens only)
    entropy_sum_L: torch.Tensor  # sum over real tokens of the entropy of the router's score distribution, per layer
    num_tokens: float

    def __add__(self, other: RouterStats) -> RouterStats:
        return RouterStats(self.layer_ids, self.tokens_per_expert_LE + other.tokens_per_expert_LE,
                           self.entropy_sum_L + other.entropy_sum_L, self.num_tokens + other.num_tokens)

    def summary(self) -> dict[str, list]:
        """Per MoE layer: its layer number, share of routed tokens per expert, the load ratio (busiest / idlest
        expert, the idlest counted as at least 1 token: adapt/model/routing.py), mean router entropy (nats)."""
        counts_LE = self.tokens_per_expert_LE.double()
        share_LE = counts_LE / counts_LE.sum(dim=-1, keepdim=True).clamp(min=1)
        ratio_L = load_ratio(counts_LE)
        entropy_L = self.entropy_sum_L.double() / max(self.num_tokens, 1)
        return {"layers": list(self.layer_ids), "expert_share": share_LE.tolist(), "load_ratio": ratio_L.tolist(),
                "entropy": entropy_L.tolist()}


def score_distribution(router_logits_TE: torch.Tensor, scoring: str) -> torch.Tensor:
    """The router's scores over all experts as a distribution: softmax, or sigmoid scores normalised to sum 1."""
    if scoring == "sigmoid":
        scores_TE = torch.sigmoid(router_logits_TE.float())
        return scores_TE / scores_TE.sum(dim=-1, keepdim=True)
    return torch.softmax(router_logits_TE.float(), dim=-1)


@torch.no_grad()
def router_stats(capture: RouterCapture, top_k: int, scoring: str = "softmax") -> RouterStats:
    """Count the experts each router chose (its own indices; the softmax top-k where only logits were recorded) and
    the entropy of its score distribution, over real tokens."""
    counts, entropies = [], []
    num_tokens = 0.0
    for i, router_logits_TE in enumerate(capture.logits):
        probs_TE = score_distribution(router_logits_TE, scoring)
        mask_T = _flat_mask(capture.token_mask_T, probs_TE.device)
        if mask_T is None:
            mask_T = torch.ones(probs_TE.shape[0], device=probs_TE.device)
        index_TK = capture.indices[i] if capture.indices is not None else probs_TE.topk(top_k, dim=-1).indices
        tokens_per_expert_E = torch.zeros(probs_TE.shape[-1], device=probs_TE.device).scatter_add_(
            0, index_TK.reshape(-1).to(probs_TE.device), mask_T.repeat_interleave(index_TK.shape[-1]))
        entropy_T = -(probs_TE * probs_TE.clamp(min=1e-30).log()).sum(dim=-1)
        counts.append(tokens_per_expert_E)
        entropies.append((entropy_T * mask_T).sum())
        num_tokens = float(mask_T.sum())
    return RouterStats(list(capture.layer_ids), torch.stack(counts).cpu(), torch.stack(entropies).cpu(), num_tokens)
