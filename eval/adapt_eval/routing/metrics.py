"""What adaptation did to the router: routing statistics of one or more models on the same tokens, streamed.

The metrics are the OLMoE paper's analysis (arXiv 2409.02060, section 5), per MoE layer:
- load: tokens routed to each expert (each token counts once for each of its k experts), the load ratio (busiest /
  idlest expert, the idlest counted as at least one token: training logs the same number, adapt/model/routing.py),
  the entropy of the load distribution over experts divided by log E (1.0: every expert equally loaded), and the dead
  experts (none of the tokens);
- domain specialization: the share of a domain's tokens routed to each expert; the shares sum to k, and a router
  that ignores the domain gives k/E to every expert;
- vocabulary specialization: for a token id x and expert e, the share of x's occurrences routed to e; per expert,
  the token ids with the highest share (among those seen at least `min_count` times);
- co-activation: P(j | i), the share of the tokens routed to expert i that were also routed to expert j;
- router saturation between two models on the same tokens: the mean over tokens of |top-k(A) ∩ top-k(B)| / k, which
  is 1.0 for a model against itself and k/E on average for two unrelated routers.

The routing is the model's own: the experts each router module returned, captured by the forward hooks training uses
too (`adapt.model.routing.RoutingRecorder`), under the model's own layer numbers. A batch's choices are folded into
counts and dropped; what grows with the tokens is what the saturation needs, the choices of the first and the
previous model (and the current one's while it runs): L x k bytes per token position (padding included; 2 bytes per
choice past 256 experts), and the vocabulary rows, one per distinct token id, bounded by the vocabulary.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch

from adapt.model.routing import load_ratio


@dataclass
class RoutingTotals:
    """Counts of one model's routing, accumulated over batches (real tokens only)."""

    num_experts: int
    vocab_size: int
    tokens: int = 0
    load: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [E] assignments
    coactivation: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [E, E] tokens routed to both
    domain_load: dict[str, dict[int, torch.Tensor]] = field(default_factory=lambda: defaultdict(dict))
    domain_tokens: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # Vocabulary counts only for the token ids seen: row r is token id row_tokens[r]. A sample uses a part of the
    # vocabulary; the bound, every id seen, is V x L x E x 4 bytes (OLMoE-1B-7B: 206 MB), whatever the tokens.
    row_tokens: list[int] = field(default_factory=list)
    token_counts_R: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    vocab_load: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [R, E] int32: occurrences to e

    def __post_init__(self):
        self._row_of = torch.full((self.vocab_size,), -1, dtype=torch.int64)

    def _rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Each token id's row, adding rows for ids not seen before."""
        seen = ids.unique()
        new = seen[self._row_of[seen] < 0]
        if len(new):
            self._row_of[new] = torch.arange(len(self.row_tokens), len(self.row_tokens) + len(new))
            self.row_tokens += new.tolist()
            self.token_counts_R = torch.cat([self.token_counts_R, torch.zeros(len(new), dtype=torch.int64)])
            for layer, counts in self.vocab_load.items():
                self.vocab_load[layer] = torch.cat([counts, torch.zeros(len(new), self.num_experts,
                                                                        dtype=torch.int32)])
        return self._row_of[ids]

    def _vocab(self, layer: int) -> torch.Tensor:
        """The layer's [R, E] vocabulary counts (created at the current number of rows)."""
        return self.vocab_load.setdefault(layer, torch.zeros(len(self.row_tokens), self.num_experts,
                                                             dtype=torch.int32))

    def _fold(self, layer: int, domain: str, per_expert_E: torch.Tensor, co_EE: torch.Tensor) -> None:
        self.load[layer] = self.load.get(layer, 0) + per_expert_E
        self.coactivation[layer] = self.coactivation.get(layer, 0) + co_EE
        self.domain_load[domain][layer] = self.domain_load[domain].get(layer, 0) + per_expert_E

    def add(self, choices: dict[int, torch.Tensor], mask_T: torch.Tensor, domain: str, ids_T: torch.Tensor) -> None:
        """Fold one forward's choices (layer -> [T, K] indices over the flattened batch) into the totals."""
        real = mask_T.reshape(-1).bool()
        rows_T = self._rows(ids_T.reshape(-1)[real].cpu())
        count = int(real.sum())
        self.tokens += count
        self.domain_tokens[domain] += count
        self.token_counts_R.index_add_(0, rows_T, torch.ones_like(rows_T))
        for layer, index_TK in choices.items():
            index_TK = index_TK.reshape(real.shape[0], -1)[real.to(index_TK.device)].cpu().long()
            onehot_TE = torch.zeros(index_TK.shape[0], self.num_experts, dtype=torch.int64)
            onehot_TE.scatter_(1, index_TK, 1)
            self._fold(layer, domain, onehot_TE.sum(0), onehot_TE.T @ onehot_TE)
            self._vocab(layer).index_add_(0, rows_T, onehot_TE.to(torch.int32))

    def merge(self, other: RoutingTotals) -> None:
        """Add another process's totals (the same model on other batches) into these."""
        rows_R = self._rows(torch.tensor(other.row_tokens, dtype=torch.int64))
        self.tokens += other.tokens
        self.token_counts_R.index_add_(0, rows_R, other.token_counts_R)
        for domain, n in other.domain_tokens.items():
            self.domain_tokens[domain] += n
        for layer in other.load:
            self.load[layer] = self.load.get(layer, 0) + other.load[layer]
            self.coactivation[layer] = self.coactivation.get(layer, 0) + other.coactivation[layer]
            self._vocab(layer).index_add_(0, rows_R, other.vocab_load[layer])
        for domain, layers in other.domain_load.items():
            for layer, per_expert_E in layers.items():
                self.domain_load[domain][layer] = self.domain_load[domain].get(layer, 0) + per_expert_E

    def summary(self, top_tokens: int = 5, min_count: int = 2) -> dict[int, dict]:
        out = {}
        for layer in sorted(self.load):
            load_E = self.load[layer].double()
            share_E = load_E / load_E.sum().clamp(min=1)
            entropy = -(share_E[share_E > 0] * share_E[share_E > 0].log()).sum() / torch.log(torch.tensor(
                float(self.num_experts)))
            co_EE = self.coactivation[layer].double()
            out[layer] = {
                "load": self.load[layer].tolist(),
                "load_ratio": load_ratio(load_E).item(),  # a dead expert counts as 1 token (adapt/model/routing.py)
                "load_entropy": entropy.item(),
                "dead_experts": [e for e in range(self.num_experts) if self.load[layer][e] == 0],
                "coactivation": (co_EE / load_E.clamp(min=1)[:, None]).tolist(),  # row i: P(j | i)
                "domains": {d: (loads[layer].double() / max(self.domain_tokens[d], 1)).tolist()
                            for d, loads in sorted(self.domain_load.items())},
                "vocabulary": self._top_tokens(layer, top_tokens, min_count),
            }
        return out

    def _top_tokens(self, layer: int, top: int, min_count: int) -> list[list[dict]]:
        """Per expert, the token ids with the highest share of their occurrences routed to it, ties broken by the
        count, then the id (so the order does not depend on the order rows were seen in); only ids seen at least
        `min_count` times, so one occurrence does not read as 100%."""
        frequent_R = (self.token_counts_R >= min_count).nonzero().reshape(-1)
        ids_R = torch.tensor(self.row_tokens, dtype=torch.int64)[frequent_R]
        by_id = ids_R.argsort()  # three stable sorts, least significant key first: id, count, share
        counts_RE = self.vocab_load[layer][frequent_R][by_id].double()
        share_RE = counts_RE / self.token_counts_R[frequent_R][by_id].double()[:, None]
        order_RE = torch.sort(-counts_RE, dim=0, stable=True).indices
        order_RE = order_RE.gather(0, torch.sort(-share_RE.gather(0, order_RE), dim=0, stable=True).indices)
        experts = []
        for e in range(self.num_experts):
            best = [int(r) for r in order_RE[:top, e] if counts_RE[r, e] > 0]
            experts.append([{"id": int(ids_R[by_id[r]]), "count": int(counts_RE[r, e]), "share": share_RE[r, e].item()}
                            for r in best])
        return experts


def saturation(choices_a: dict[int, torch.Tensor], choices_b: dict[int, torch.Tensor],
               mask_T: torch.Tensor) -> dict[int, tuple[float, int]]:
    """Per layer, (sum over real tokens of |top-k(A) ∩ top-k(B)| / k, number of real tokens) for one batch."""
    real = mask_T.reshape(-1).bool()
    out = {}
    for layer in sorted(set(choices_a) & set(choices_b)):
        a_TK = choices_a[layer].reshape(real.shape[0], -1)[real.to(choices_a[layer].device)].cpu()
        b_TK = choices_b[layer].reshape(real.shape[0], -1)[real.to(choices_b[layer].device)].cpu()
        shared_T = (a_TK[:, :, None] == b_TK[:, None, :]).any(-1).sum(-1)
        out[layer] = ((shared_T.double() / a_TK.shape[1]).sum().item(), int(a_TK.shape[0]))
    return out


def chance(result: dict) -> float | None:
    """k/E: what two unrelated routers share on average (from a model's loads: k assignments per token)."""
    for model in result["per_model"].values():
        for layer in model["layers"].values():
            if model["tokens"]:
                return sum(layer["load"]) / model["tokens"] / len(layer["load"])
    return None
