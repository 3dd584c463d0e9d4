"""What adaptation did to the router: routing statistics of one or more models on the same tokens, streamed.

The metrics are the OLMoE paper's analysis (arXiv 2409.02060, section 5), per MoE layer:
- load: tokens routed to each expert (each token counts once for each of its k experts), the max/min ratio, and the
  dead experts (none of the tokens);
- domain specialization: the share of a domain's tokens routed to each expert; the shares sum to k, and a router
  that ignores the domain gives k/E to every expert;
- co-activation: P(j | i), the share of the tokens routed to expert i that were also routed to expert j;
- router saturation between two models on the same tokens: the mean over tokens of |top-k(A) ∩ top-k(B)| / k, which
  is 1.0 for a model against itself.

The routing is the model's own: the experts each router module returned (`adapt.trainers.router.router_modules`),
recorded by forward hooks, under the model's own layer numbers. Nothing is kept but counts: a batch's choices are
folded into the totals and dropped, so the memory does not grow with the number of tokens.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch

from adapt.trainers.router import find_backbone, router_modules


class RoutingRecorder:
    """`with RoutingRecorder(model) as rec: model(...)`; then `rec.choices` maps each MoE layer number to the top-k
    indices [T, K] of the last forward."""

    def __init__(self, model):
        self.model, self.choices, self._handles = model, {}, []

    def __enter__(self):
        for layer, module in router_modules(find_backbone(self.model)):
            self._handles.append(module.register_forward_hook(
                lambda m, args, out, layer=layer: self.choices.__setitem__(layer, out[2].detach())))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()


@dataclass
class RoutingTotals:
    """Counts of one model's routing, accumulated over batches (real tokens only)."""

    num_experts: int
    tokens: int = 0
    load: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [E] assignments
    coactivation: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [E, E] tokens routed to both
    domain_load: dict[str, dict[int, torch.Tensor]] = field(default_factory=lambda: defaultdict(dict))
    domain_tokens: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, choices: dict[int, torch.Tensor], mask_T: torch.Tensor, domain: str) -> None:
        """Fold one forward's choices (layer -> [T, K] indices over the flattened batch) into the totals."""
        real = mask_T.reshape(-1).bool()
        count = int(real.sum())
        self.tokens += count
        self.domain_tokens[domain] += count
        for layer, index_TK in choices.items():
            index_TK = index_TK.reshape(real.shape[0], -1)[real.to(index_TK.device)].cpu()
            onehot_TE = torch.zeros(index_TK.shape[0], self.num_experts, dtype=torch.int64)
            onehot_TE.scatter_(1, index_TK, 1)
            per_expert = onehot_TE.sum(0)
            self.load[layer] = self.load.get(layer, 0) + per_expert
            self.coactivation[layer] = self.coactivation.get(layer, 0) + onehot_TE.T @ onehot_TE
            self.domain_load[domain][layer] = self.domain_load[domain].get(layer, 0) + per_expert

    def summary(self) -> dict[int, dict]:
        out = {}
        for layer in sorted(self.load):
            load_E = self.load[layer].double()
            co_EE = self.coactivation[layer].double()
            out[layer] = {
                "load": self.load[layer].tolist(),
                "load_ratio": (load_E.max() / load_E.min().clamp(min=1)).item(),
                "dead_experts": [e for e in range(self.num_experts) if self.load[layer][e] == 0],
                "coactivation": (co_EE / load_E.clamp(min=1)[:, None]).tolist(),  # row i: P(j | i)
                "domains": {d: (loads[layer].double() / max(self.domain_tokens[d], 1)).tolist()
                            for d, loads in sorted(self.domain_load.items())},
            }
        return out


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


# ---- a whole analysis: several models, the same tokens ----------------------------------------------------------

def domain_texts(spec: str, limit: int) -> list[str]:
    """The user prompts of a domain sample: `task:NAME` (a built-in task's held-out prompts) or a JSONL file whose
    rows carry `prompt`, `text`, `instruction` or `messages` (its user turns)."""
    import json
    from pathlib import Path

    if spec.startswith("task:"):
        from adapt.tasks import get_task

        return [item.prompt for item in get_task(spec[5:]).items("test", limit)]
    texts = []
    for n, line in enumerate(Path(spec).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        text = row.get("prompt") or row.get("text") or row.get("instruction") or " ".join(
            m.get("content", "") for m in row.get("messages", []) if m.get("role") == "user")
        if not isinstance(text, str) or not text:
            raise ValueError(f"{spec}: line {n}: no prompt, text, instruction or user message")
        texts.append(text)
        if len(texts) >= limit:
            break
    return texts


def analyze(models: dict[str, str], domains: dict[str, str], texts_per_domain: int = 64, batch_size: int = 8,
            max_length: int = 256) -> dict:
    """Routing of each model (name -> folder or Hub id) on the same tokens of each domain (name -> spec), and the
    router saturation between consecutive models and between the first and the last. One model is loaded at a time;
    its choices are kept as small integers (layers x tokens x k) for the saturation, never its logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapt.config.families import family, unsupported

    names = list(models)
    tokenizer = AutoTokenizer.from_pretrained(models[names[0]])
    tokenizer.padding_side = "right"
    batches = []  # (domain, input_ids, attention_mask)
    for domain, spec in domains.items():
        texts = domain_texts(spec, texts_per_domain)
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                            max_length=max_length)
            batches.append((domain, enc["input_ids"], enc["attention_mask"]))
    results, kept = {}, {}
    for name in names:
        model = AutoModelForCausalLM.from_pretrained(models[name]).eval()
        text_config = model.config.get_text_config()
        f = family(text_config.model_type)
        if f is None:
            raise ValueError(f"--models {name}={models[name]}: {unsupported(text_config.model_type)}")
        totals = RoutingTotals(num_experts=getattr(text_config, f.experts_attr))
        kept[name] = []
        for domain, ids, mask in batches:
            with RoutingRecorder(model) as recorder, torch.no_grad():
                model(input_ids=ids, attention_mask=mask)
            totals.add(recorder.choices, mask, domain)
            kept[name].append({layer: c.to(torch.int16) for layer, c in recorder.choices.items()})
        results[name] = {"tokens": totals.tokens, "layers": totals.summary()}
        del model
    pairs = list(zip(names, names[1:])) + ([(names[0], names[-1])] if len(names) > 2 else [])
    saturations = {}
    for a, b in pairs:
        sums: dict[int, list[float]] = {}
        for (_, _, mask), ca, cb in zip(batches, kept[a], kept[b]):
            for layer, (total, n) in saturation(ca, cb, mask).items():
                acc = sums.setdefault(layer, [0.0, 0])
                acc[0] += total
                acc[1] += n
        saturations[f"{a}->{b}"] = {layer: total / max(n, 1) for layer, (total, n) in sorted(sums.items())}
    return {"models": models, "domains": domains, "texts_per_domain": texts_per_domain, "per_model": results,
            "saturation": saturations}
