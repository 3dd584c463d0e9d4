"""LoRA through PEFT: a recipe's `peft:` section turned into PEFT's `LoraConfig` for the model's family, applied, and
checked; and a LoRA run's adapter folder loaded back as the model the next stage starts from.

What PEFT does and the toolkit relies on (PEFT 0.21.2): `target_parameters` puts LoRA on transformers 5's fused
3-D expert weights (`target_modules` would silently skip them); `modules_to_save` trains a full copy of a module and
saves it with the adapter. What is written here: the mapping from the recipe's selectors to each family's names
(adapt/config/families.py), the check that every selector adapts something in the loaded model (a name that matches
nothing would otherwise train nothing without a word), and the per-group parameter counts the run logs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"


class LoraSetupError(ValueError):
    """A `peft:` section this model cannot satisfy; one line naming the selector and the fix."""


def is_adapter_folder(ref: str | None) -> bool:
    return bool(ref) and (Path(ref).expanduser() / ADAPTER_CONFIG).is_file()


def adapter_base(ref: str) -> str | None:
    """The base model an adapter folder was trained on (its `base_model_name_or_path`)."""
    return json.loads((Path(ref).expanduser() / ADAPTER_CONFIG).read_text(encoding="utf-8")).get(
        "base_model_name_or_path")


def apply_lora(model, peft_section, family):
    """The model wrapped with LoRA adapters as the recipe asks; only the adapters (and the fully trained copies)
    require gradients."""
    from peft import LoraConfig, get_peft_model

    selected = family.lora_targets(peft_section.targets)
    names = {n for n, _ in model.named_modules()}
    parameters = {n for n, _ in model.named_parameters()}
    for selector, spec in selected.items():
        wanted = spec.get("target_modules", []) + spec.get("modules_to_save", [])
        found = any(n.split(".")[-1] in wanted for n in names) or any(
            n.endswith(tuple(spec.get("target_parameters", []))) for n in parameters if spec.get("target_parameters"))
        if not found:
            raise LoraSetupError(f"peft.targets: `{selector}` matches nothing in this {family.model_type} model "
                                 f"(looked for {', '.join(sum(spec.values(), []))}); remove it from peft.targets")
    merged = family.lora_kwargs(peft_section.targets)
    config = LoraConfig(r=peft_section.r, lora_alpha=peft_section.alpha, lora_dropout=peft_section.dropout,
                        target_modules=merged["target_modules"] or None,
                        target_parameters=merged["target_parameters"] or None,
                        modules_to_save=merged["modules_to_save"] or None, task_type="CAUSAL_LM")
    wrapped = get_peft_model(model, config)
    for line in parameter_counts(wrapped):
        log.warning(line)
    return wrapped


def parameter_counts(model) -> list[str]:
    """Trainable and total parameters, overall and per kind of trainable parameter (one line each)."""
    groups: dict[str, int] = {}
    total = trainable = 0
    for name, p in model.named_parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
            kind = "lora" if "lora_" in name else "full copy"
            groups[kind] = groups.get(kind, 0) + p.numel()
    lines = [f"LoRA: {trainable:,} of {total:,} parameters trainable ({100 * trainable / max(total, 1):.3f}%)"]
    lines += [f"  {kind}: {count:,}" for kind, count in sorted(groups.items())]
    return lines


def load_trainable_adapter(ref: str, peft_section, dtype, **kwargs):
    """An adapter folder as a PEFT model whose adapter keeps training (`peft.from_adapter: continue`). Its saved r
    and alpha must be the recipe's: a recipe that says otherwise is refused rather than silently overruled."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    saved = json.loads((Path(ref).expanduser() / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    if (saved.get("r"), saved.get("lora_alpha")) != (peft_section.r, peft_section.alpha):
        raise LoraSetupError(f"peft.from_adapter: continue keeps {ref}'s adapter (r={saved.get('r')}, alpha="
                             f"{saved.get('lora_alpha')}) but the recipe says r={peft_section.r}, alpha="
                             f"{peft_section.alpha}; make them equal, or use peft.from_adapter: merge")
    base = adapter_base(ref)
    if not base:
        raise LoraSetupError(f"{ref}/{ADAPTER_CONFIG}: no base_model_name_or_path, so there is no base to load")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, **kwargs)
    return PeftModel.from_pretrained(model, ref, is_trainable=True)


def root_base(ref: str) -> str | None:
    """The model at the bottom of a chain of adapters: an adapter's base may itself be an adapter folder (a LoRA DPO
    run started from a LoRA SFT run records the SFT run as its base, see load_merged_adapter)."""
    seen = {str(Path(ref).expanduser().resolve())}
    base = adapter_base(ref)
    while base and is_adapter_folder(base):
        key = str(Path(base).expanduser().resolve())
        if key in seen:
            raise LoraSetupError(f"{ref}/{ADAPTER_CONFIG}: the chain of base_model_name_or_path loops at {base}")
        seen.add(key)
        base = adapter_base(base)
    return base


def load_merged_adapter(ref: str, dtype, **kwargs):
    """An adapter folder as the model it describes: its base with the adapter merged in, so the next stage (DPO
    after a LoRA SFT) starts from exactly the SFT policy, and its reference model is that policy too. The merge is
    done and proven in float32 (merge_proven), then the model takes `dtype` (`auto`: the root base's saved dtype).
    A base that is itself an adapter folder is merged first, recursively; the merged model is named after `ref`, so
    an adapter trained on it (the DPO stage's) records `ref` as its base and loads back through this same chain
    (naming the bottom model would silently drop `ref`'s adapter)."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    base = adapter_base(ref)
    if not base:
        raise LoraSetupError(f"{ref}/{ADAPTER_CONFIG}: no base_model_name_or_path, so there is no base to load")
    if is_adapter_folder(base):
        model = load_merged_adapter(base, torch.float32, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, **kwargs)
    merged = merge_proven(PeftModel.from_pretrained(model, ref), where=ref)
    merged.config._name_or_path = merged.name_or_path = str(ref)  # PEFT records `name_or_path` as an adapter's base
    if dtype == "auto":
        saved = AutoConfig.from_pretrained(root_base(ref)).dtype
        dtype = getattr(torch, saved) if isinstance(saved, str) else saved
    return merged.to(dtype or torch.float32)


# The merge gate's tolerance: max |logit difference| relative to the largest logit. PEFT's merge in float32 measured
# at most 2e-6 of it on every family's tiny model (tests/test_lora_merge.py); a dropped or scrambled expert delta
# moves logits by the adapter's whole effect.
MERGE_TOLERANCE = 1e-4
PROBE_TOKENS = 48


class MergeMismatch(LoraSetupError):
    """PEFT's merged model does not compute what base + adapter computes; nothing was written."""


def merge_proven(peft_model, where: str):
    """PEFT's `merge_and_unload`, proven: the logits of base + adapter (PEFT's forward, unmerged) and of the merged
    model on the same probe tokens must agree to MERGE_TOLERANCE, in float32. Why a gate: PEFT merges the fused
    3-D expert weights of transformers 5 (`target_parameters`) through its own reshapes, and an upstream bug in
    that path dropped or scrambled per-expert deltas; whatever PEFT version is installed, a wrong merge stops here
    with the numbers instead of becoming a saved or exported model."""
    vocab = peft_model.get_base_model().config.get_text_config().vocab_size
    ids = torch.randint(0, vocab, (2, PROBE_TOKENS), generator=torch.Generator().manual_seed(0))
    peft_model = peft_model.float().eval()
    with torch.no_grad():
        adapted = peft_model(input_ids=ids).logits.float()
        merged = peft_model.merge_and_unload()
        after = merged(input_ids=ids).logits.float()
    difference, scale = float((adapted - after).abs().max()), float(adapted.abs().max())
    if not difference <= MERGE_TOLERANCE * max(scale, 1.0):
        raise MergeMismatch(f"{where}: merging the LoRA adapter into its base changes the logits by {difference:.3g} "
                            f"(logits up to {scale:.3g}; tolerance {MERGE_TOLERANCE:g} of that): PEFT's merge is "
                            "wrong for this model, so no merged model was made; use the adapter unmerged")
    return merged
