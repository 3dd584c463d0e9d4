"""A whole router analysis (`adapt analyze --models ... --data ...`, or `analyze(...)` from Python): several models,
the same tokens, one model loaded at a time, forward passes only.

Runs on CPU or GPU, and under `accelerate launch` (or torchrun): each process takes every N-th batch and the counts
are gathered at the end, so N processes give the numbers one process gives. A model too large for one device loads
with `device_map="auto"` (accelerate's big-model placement) in one process. Adapter folders (LoRA runs) are analysed
as their base with the adapter merged in.
"""

from __future__ import annotations

import hashlib
import time

import torch

from adapt.config.families import family, unsupported
from adapt.model.loading import load_run_model
from adapt.model.lora import is_adapter_folder, root_base
from adapt.model.routing import RoutingRecorder, find_backbone
from adapt_eval.routing.data import domain_texts
from adapt_eval.routing.metrics import RoutingTotals, saturation
from adapt_eval.suite import model_fingerprint


def tokenize_domains(tokenizer, texts: dict[str, list[str]], batch_size: int, max_length: int,
                     tokens_per_domain: int | None = None) -> list[tuple]:
    """(domain, input_ids, attention_mask) batches, right-padded, each domain's texts sorted by length (less
    padding)."""
    batches = []
    for domain, domain_texts_ in texts.items():
        encoded = tokenizer(domain_texts_, truncation=True, max_length=max_length)["input_ids"]
        if tokens_per_domain is not None:  # the texts in order until the budget; the last one cut to fit it
            kept, left = [], tokens_per_domain
            for ids in encoded:
                if left <= 0:
                    break
                kept.append(ids[:left])
                left -= len(kept[-1])
            encoded = kept
        encoded.sort(key=len)
        for start in range(0, len(encoded), batch_size):
            rows = encoded[start:start + batch_size]
            width = max(len(r) for r in rows)
            ids = torch.tensor([r + [tokenizer.pad_token_id or 0] * (width - len(r)) for r in rows])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
            batches.append((domain, ids, mask))
    return batches


def data_fingerprints(batches: list[tuple]) -> dict[str, dict]:
    """Each domain's sha256 of its token ids, texts and tokens: two analyses can tell they ran on the same tokens."""
    out: dict[str, dict] = {}
    for domain, ids, mask in batches:
        entry = out.setdefault(domain, {"hash": hashlib.sha256(), "texts": 0, "tokens": 0})
        for row, m in zip(ids.tolist(), mask.tolist()):
            entry["hash"].update(str(row[:sum(m)]).encode())
        entry["texts"] += len(ids)
        entry["tokens"] += int(mask.sum())
    return {d: {"sha256": e["hash"].hexdigest(), "texts": e["texts"], "tokens": e["tokens"]} for d, e in out.items()}


def load_model(ref: str, dtype: torch.dtype, device, device_map: str | None):
    """A model folder, Hub id or adapter folder (merged into its base), in eval mode on `device`."""
    model = load_run_model(ref, dtype, **({"device_map": device_map} if device_map else {}))
    return (model if device_map else model.to(device)).eval()


def check_model(name: str, ref: str, highest_id: int) -> int:
    """The model's number of routed experts, read from its config (an adapter folder's base config) before any
    weights load; an unsupported family, or a vocabulary the sample's token ids do not fit, is refused."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(root_base(ref) if is_adapter_folder(ref) else ref).get_text_config()
    f = family(config.model_type)
    if f is None:
        raise ValueError(f"--models {name}={ref}: {unsupported(config.model_type)}")
    if highest_id >= config.vocab_size:
        raise ValueError(f"--models {name}={ref}: the sample has token id {highest_id} (tokenized by the first "
                         f"model's tokenizer) but this model's vocabulary is {config.vocab_size}; analyse models "
                         "that share a tokenizer")
    return getattr(config, f.experts_attr)


def analyze(models: dict[str, str], domains: dict[str, str], texts_per_domain: int = 64, batch_size: int = 8,
            max_length: int = 512, data_dir: str | None = None, dtype: str = "auto", device_map: str | None = None,
            tokens_per_domain: int | None = None,
            top_tokens: int = 5, log=print) -> dict:
    """Routing of each model (name -> folder, Hub id or adapter folder) on the same tokens of each domain (name ->
    spec, see adapt_eval.routing.data), and the router saturation between consecutive models and between the first
    and last."""
    from transformers import AutoTokenizer

    state = analysis_state()
    if device_map and state.num_processes > 1:
        raise ValueError(f"--device-map {device_map} spreads one model over the devices of one process; run it "
                         f"without accelerate launch (this run has {state.num_processes} processes)")
    torch_dtype = _dtype(dtype, state.device)
    names = list(models)
    tokenizer = AutoTokenizer.from_pretrained(models[names[0]])
    batches = tokenize_domains(tokenizer, domain_texts(domains, texts_per_domain, data_dir), batch_size, max_length,
                               tokens_per_domain)
    highest_id = max(int(ids.max()) for _, ids, _ in batches)
    experts = {name: check_model(name, ref, highest_id) for name, ref in models.items()}  # all, before any load
    mine = list(range(state.process_index, len(batches), state.num_processes))
    pairs = list(zip(names, names[1:])) + ([(names[0], names[-1])] if len(names) > 2 else [])
    totals, sums, first, previous, seconds = {}, {f"{a}->{b}": {} for a, b in pairs}, None, None, {}
    for position, name in enumerate(names):
        model = load_model(models[name], torch_dtype, state.device, device_map)
        totals[name] = RoutingTotals(num_experts=experts[name], vocab_size=highest_id + 1)
        small = torch.uint8 if experts[name] <= 256 else torch.int16  # expert ids, kept for the saturation
        backbone = find_backbone(model)
        recorder = RoutingRecorder(backbone)
        current, started = [], time.perf_counter()
        for i in mine:
            domain, ids, mask = batches[i]
            recorder.start()
            with torch.no_grad():  # the decoder only: no LM head, no logits
                backbone(input_ids=ids.to(model.device), attention_mask=mask.to(model.device))
            choices = recorder.stop().choices()
            totals[name].add(choices, mask, domain, ids)
            current.append({layer: c.to(small).cpu() for layer, c in choices.items()})
        recorder.remove()
        if position:  # against the previous model and the first (a dict: the same pair once)
            for pair, kept in {f"{names[position - 1]}->{name}": previous, f"{names[0]}->{name}": first}.items():
                if pair in sums:
                    _add_saturation(sums[pair], kept, current, [batches[i][2] for i in mine])
        first, previous = (current if position == 0 else first), current
        seconds[name] = time.perf_counter() - started
        log(f"routing of {name}: {totals[name].tokens} tokens in {seconds[name]:.1f} s"
            + (f" (process {state.process_index})" if state.num_processes > 1 else ""))
        del model
    totals, sums = _gather(state, totals, sums)
    per_model = {name: {"fingerprint": model_fingerprint(models[name]), "tokens": t.tokens,
                        "forward_seconds": seconds[name], "layers": _with_text(t.summary(top_tokens), tokenizer)}
                 for name, t in totals.items()}
    return {"models": models, "domains": domains, "texts_per_domain": texts_per_domain, "max_length": max_length,
            "tokens_per_domain": tokens_per_domain,
            "data": data_fingerprints(batches), "processes": state.num_processes, "dtype": str(torch_dtype),
            "per_model": per_model,
            "saturation": {pair: {layer: total / max(n, 1) for layer, (total, n) in sorted(layers.items())}
                           for pair, layers in sums.items()}}


def analysis_state():
    """accelerate's process state; on a machine without an accelerator it must be told to use CPU processes
    (gloo), or torchrun's processes would each think they are alone."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def _dtype(dtype: str, device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def _add_saturation(acc: dict, a: list[dict], b: list[dict], masks: list[torch.Tensor]) -> None:
    for ca, cb, mask in zip(a, b, masks):
        for layer, (total, n) in saturation(ca, cb, mask).items():
            old = acc.get(layer, (0.0, 0))
            acc[layer] = (old[0] + total, old[1] + n)


def _gather(state, totals: dict, sums: dict) -> tuple[dict, dict]:
    """Every process's counts added together (the same on every process afterwards)."""
    if state.num_processes == 1:
        return totals, sums
    import torch.distributed as dist

    everyone = [None] * state.num_processes
    dist.all_gather_object(everyone, (totals, sums))
    totals, sums = everyone[0]
    for other_totals, other_sums in everyone[1:]:
        for name, t in other_totals.items():
            totals[name].merge(t)
        for pair, layers in other_sums.items():
            for layer, (total, n) in layers.items():
                old = sums[pair].get(layer, (0.0, 0))
                sums[pair][layer] = (old[0] + total, old[1] + n)
    return totals, sums


def _with_text(layers: dict[int, dict], tokenizer) -> dict[int, dict]:
    for layer in layers.values():
        for expert in layer["vocabulary"]:
            for entry in expert:
                entry["token"] = tokenizer.decode([entry["id"]])
    return layers
