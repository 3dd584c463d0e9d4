"""ESFT's expert selection (Wang et al., "Let the Expert Stick to His Last", DeepSeek 2024): route rows of the
stage's own training data through the base model, score every routed expert of every MoE layer, and keep per layer
the best-scoring experts until their share of the layer's score reaches the threshold p.

The two criteria, over the real tokens (padding excluded) of the routed rows, per layer and expert e:
- `gate_score`: the mean over tokens of e's routing weight, 0 where the token did not choose e. The weight is the
  one the router returns with its top-k choice, the weight the model multiplies e's output by, so it means the same
  in every family: a softmax probability (OLMoE, Qwen), renormalised over the top-k (Mixtral, Granite, gpt-oss) or,
  for the sigmoid routers of DeepSeek-V3 and GLM-4-MoE, the normalised sigmoid scores times `routed_scaling_factor`
  (a constant per model, which the per-layer normalisation below removes).
- `token_ratio`: the share of tokens whose top-k includes e (the layer's ratios sum to k).
Each criterion is normalised to sum to 1 over the layer's experts; experts are taken in decreasing order (ties: the
lower id first) while the share taken so far is below p, so the expert that crosses p is kept, as DeepSeek's
`generate_expert_config.py` does. (That script divides each expert's score by its sum over *layers*, `axis=0`; the
paper defines the share per layer, which is what is done here.)

Which experts the router chose and with what weight comes from a forward hook on each router module
(adapt/model/routing.py), as the trainers' router losses and `adapt analyze` read them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from adapt.config.families import family
from adapt.config.stages import STAGES
from adapt.model.routing import find_backbone, router_modules


class ExpertSelectionError(ValueError):
    """A selection this model cannot take; one line naming the recipe key and the fix."""


@dataclass
class ExpertScores:
    """Routing sums over the routed rows' real tokens, one row per MoE layer (`layers[i]` is the model's number)."""

    layers: list[int]
    weight_sum_LE: torch.Tensor | None  # sum of each expert's routing weight (float64); None when not recorded
    chosen_LE: torch.Tensor  # tokens whose top-k includes the expert (float64)
    tokens: int
    rows: int

    def criterion_LE(self, criterion: str) -> torch.Tensor:
        """The raw criterion per layer and expert: mean routing weight, or the share of tokens that chose it."""
        if criterion == "gate_score":
            if self.weight_sum_LE is None:
                raise ExpertSelectionError("experts.select: gate_score needs the routing weights, which these "
                                           "scores do not hold; use token_ratio")
            return self.weight_sum_LE / max(self.tokens, 1)
        return self.chosen_LE / max(self.tokens, 1)


def sample_sequences(dataset, stage: str, max_rows: int, seed: int) -> list[list[int]]:
    """Up to `max_rows` rows of the stage's tokenized training data (a seeded sample, so a mixture of sources is
    represented), as token-id sequences: an SFT row (each document of a packed row on its own), or a DPO pair's
    prompt + chosen and prompt + rejected."""
    n = len(dataset)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_rows].sort().values.tolist()
    rows = dataset.select(order)
    sequences: list[list[int]] = []
    for row in rows:
        if STAGES[stage].pairs:  # adapt/config/stages.py
            sequences += [list(row["prompt_ids"]) + list(row["chosen_ids"]),
                          list(row["prompt_ids"]) + list(row["rejected_ids"])]
            continue
        ids, start = list(row["input_ids"]), 0
        for length in row.get("seq_lengths") or [len(ids)]:  # a packed row: its documents one by one
            sequences.append(ids[start:start + length])
            start += length
    return [s for s in sequences if s]


@torch.no_grad()
def route(model, sequences: Sequence[list[int]], *, pad_id: int = 0, batch_size: int = 8,
          shard: tuple[int, int] = (0, 1),
          all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> ExpertScores:
    """Route the sequences through the model (eval mode, no gradient, right-padded batches) and sum, per MoE layer
    and expert, the routing weights and the tokens that chose it, over real tokens. `shard` (index, count) routes
    every count-th batch from index, and `all_reduce` adds the processes' sums, so every process ends with the same
    scores."""
    backbone = find_backbone(model)
    routers = router_modules(backbone)
    if not routers:
        raise ExpertSelectionError(f"{type(model).__name__} has no router the toolkit records, so it has no experts "
                                   "to select")
    text_config = model.config.get_text_config()
    num_experts = getattr(text_config, family(text_config.model_type).experts_attr)
    recorded: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = [module.register_forward_hook(  # output: (logits [T, E], top-k weights [T, K], top-k indices [T, K])
        lambda m, args, out, layer=layer: recorded.__setitem__(layer, (out[1], out[2])))
        for layer, module in routers]
    layers = [layer for layer, _ in routers]
    device = next(model.parameters()).device
    weight_sum_LE = torch.zeros(len(layers), num_experts, dtype=torch.float64, device=device)
    chosen_LE = torch.zeros_like(weight_sum_LE)
    tokens = torch.zeros((), dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    try:
        batches = [sequences[i:i + batch_size] for i in range(0, len(sequences), batch_size)]
        for batch in batches[shard[0]::shard[1]]:
            width = max(map(len, batch))
            ids_BS = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask_BS = torch.zeros((len(batch), width), dtype=torch.long)
            for i, seq in enumerate(batch):
                ids_BS[i, :len(seq)] = torch.tensor(seq)
                mask_BS[i, :len(seq)] = 1
            recorded.clear()
            backbone(input_ids=ids_BS.to(device), attention_mask=mask_BS.to(device))
            real_T = mask_BS.reshape(-1).bool().to(device)
            tokens += real_T.sum()
            for row, layer in enumerate(layers):
                weights_TK, index_TK = recorded[layer]
                weights_TK, index_TK = weights_TK[real_T].double(), index_TK[real_T].long()
                weight_sum_LE[row].index_add_(0, index_TK.reshape(-1), weights_TK.reshape(-1))
                chosen_LE[row].index_add_(0, index_TK.reshape(-1), torch.ones_like(weights_TK).reshape(-1))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if all_reduce is not None:
        weight_sum_LE, chosen_LE, tokens = all_reduce(weight_sum_LE), all_reduce(chosen_LE), all_reduce(tokens)
    return ExpertScores(layers, weight_sum_LE.cpu(), chosen_LE.cpu(), int(tokens.item()), len(sequences))


def scores_from_analysis(loads: dict[int, list[float]], tokens: int) -> ExpertScores:
    """Scores from an `adapt analyze` result (adapt/config/experts.py `analysis_loads`): it keeps the tokens routed to
    each expert, which is the token ratio; the routing weights are not kept."""
    layers = sorted(loads)
    return ExpertScores(layers, None, torch.tensor([loads[layer] for layer in layers], dtype=torch.float64), tokens,
                        rows=0)


def pick(share_E: torch.Tensor, threshold: float) -> list[int]:
    """The experts (ids, ascending) taken in decreasing share, ties by the lower id, while the share taken so far
    is below `threshold`: the expert that reaches it is kept, and none after it."""
    order = sorted(range(share_E.numel()), key=lambda e: (-float(share_E[e]), e))
    taken, total = [], 0.0
    for e in order:
        if total >= threshold - 1e-12 or float(share_E[e]) <= 0:  # never an expert no token used
            break
        taken.append(e)
        total += float(share_E[e])
    return sorted(taken)


def select(scores: ExpertScores, criterion: str, threshold: float) -> dict[int, list[int]]:
    """Per MoE layer, the experts ESFT trains (module note)."""
    raw_LE = scores.criterion_LE(criterion)
    share_LE = raw_LE / raw_LE.sum(dim=-1, keepdim=True).clamp(min=1e-300)
    return {layer: pick(share_LE[i], threshold) for i, layer in enumerate(scores.layers)}


def selection_record(selected: dict[int, list[int]], scores: ExpertScores | None, *, criterion: str,
                     threshold: float | None, source: str, also_trained: list[str] = ()) -> dict:
    """What `experts.json` holds: per layer the selected ids and every expert's score under both criteria (null
    where the source does not give it), the criterion, the threshold, what was routed, what else trained."""
    layers = {}
    for layer in sorted(selected):
        entry: dict = {"selected": selected[layer]}
        if scores is not None and layer in scores.layers:
            row = scores.layers.index(layer)
            gate = scores.criterion_LE("gate_score")[row].tolist() if scores.weight_sum_LE is not None else None
            entry.update(gate_score=gate, token_ratio=scores.criterion_LE("token_ratio")[row].tolist())
        layers[str(layer)] = entry
    return {"criterion": criterion, "threshold": threshold, "source": source, "also_trained": list(also_trained),
            "rows_routed": scores.rows if scores is not None else 0,
            "tokens_routed": scores.tokens if scores is not None else 0, "layers": layers}
