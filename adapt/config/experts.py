"""The recipe check of an `experts:` section (ESFT): one `RecipeError` line per problem, before anything loads.

What is refused, and why:
- `peft.method: lora`: ESFT and LoRA are two answers to "what trains"; LoRA on the fused experts would put a
  low-rank delta on every expert, selected or not, and a LoRA run saves only its adapter, where a selected expert's
  full slices have no place. Choose one.
- `parallel.expert_parallel_size > 1`: DeepSpeed AutoEP replaces the expert modules with its own inside
  `deepspeed.initialize`, after the selection has been wrapped around transformers' experts, so it could not be
  kept exact.
- ZeRO-3 (`zero3`, `zero3-offload`, or a JSON with stage 3): the frozen fused weight is partitioned over the ranks,
  and the selected slices are written into it at each forward (adapt/model/expert_slices.py); ZeRO-2 keeps whole
  weights on every rank and shards only what trains, which with ESFT is small.
- `from_analysis` with `gate_score`: `adapt analyze` keeps the experts each token chose, not their routing weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from adapt.config.checks import RecipeError, suggest
from adapt.config.families import family
from adapt.config.sections import ESFT_TRAINABLE, ExpertsSection
from adapt.parallel import preset_path


def check_experts(s: dict[str, Any], file: str | None, check_paths: bool = True, model_type: str | None = None,
                  model_folder: str | None = None) -> None:
    """`model_type`: the family when known offline; `model_folder`: where the model's config.json is (a local
    folder, the base of an adapter folder) or None."""
    experts: ExpertsSection = s["experts"]
    if experts.select == "all":
        _nothing_else_set(experts, file)
        return
    for i, name in enumerate(experts.train):
        if name not in ESFT_TRAINABLE:
            raise RecipeError(file, f"experts.train[{i}]", f"unknown part {name!r}", suggest(name, ESFT_TRAINABLE))
    _check_combinations(s, file, model_type)
    _check_list(experts, s["model"], file, model_type, model_folder)
    if experts.analysis_model and not experts.from_analysis:
        raise RecipeError(file, "experts.analysis_model", "names a model of an analysis, but from_analysis is unset",
                          "set experts.from_analysis to the analysis.json, or remove analysis_model")
    if experts.from_analysis:
        if experts.select != "token_ratio":
            why = ("an `adapt analyze` result keeps the experts each token chose, not their routing weights"
                   if experts.select == "gate_score" else "select: list names the experts itself")
            raise RecipeError(file, "experts.from_analysis", f"cannot serve select: {experts.select} ({why})",
                              "use select: token_ratio, or drop from_analysis to rank on the training data")
        path = Path(os.path.expanduser(experts.from_analysis))
        if check_paths and not path.is_file():
            raise RecipeError(file, "experts.from_analysis", f"{experts.from_analysis!r} not found",
                              "point it at an analysis.json written by `adapt analyze --output DIR`")
        if path.is_file():
            try:
                analysis_loads(path, experts.analysis_model)
            except ValueError as e:
                fix = ("give the analysis.json of `adapt analyze` (per_model.<name>.layers.<layer>.load) and, with "
                       "several models, experts.analysis_model")
                raise RecipeError(file, "experts.from_analysis", str(e), fix) from None


def _nothing_else_set(experts: ExpertsSection, file: str | None) -> None:
    default = ExpertsSection()
    for key in ("threshold", "experts", "from_analysis", "analysis_model", "max_rows", "train"):
        if getattr(experts, key) != getattr(default, key):
            raise RecipeError(file, f"experts.{key}", "has no effect with experts.select: all (every parameter "
                              "trains)", "set experts.select: gate_score, token_ratio or list, or remove it")


def _check_combinations(s: dict[str, Any], file: str | None, model_type: str | None) -> None:
    if s["peft"].method == "lora":
        raise RecipeError(file, "experts.select", "ESFT and LoRA both decide what trains: LoRA on the experts would "
                          "adapt every expert, and a LoRA run saves only its adapter, with no place for the selected "
                          "experts' weights", "remove the peft section, or set experts.select: all")
    if s["parallel"].expert_parallel_size > 1:
        raise RecipeError(file, "experts.select", "ESFT cannot run under expert parallelism: DeepSpeed AutoEP "
                          "replaces the expert modules, so the selection could not be kept exact",
                          "use parallel.expert_parallel_size: 1 (ZeRO-2 shards what trains)")
    if _zero_stage(s["parallel"].deepspeed) == 3:
        raise RecipeError(file, "parallel.deepspeed", "ESFT writes the selected experts into the frozen fused weight "
                          "at each forward, which ZeRO-3 partitions over the ranks",
                          "use parallel.deepspeed: zero2 (ESFT's optimizer state is small enough not to need ZeRO-3)")
    f = family(model_type)
    if f is not None and "shared_experts" in s["experts"].train and not f.shared_experts:
        raise RecipeError(file, "experts.train", f"{f.model_type} has no shared expert", "remove shared_experts")


def _zero_stage(deepspeed: str | None) -> int | None:
    if not deepspeed:
        return None
    path = preset_path(deepspeed)
    try:
        return int(json.loads(path.read_text(encoding="utf-8")).get("zero_optimization", {}).get("stage", 0))
    except (AttributeError, OSError, ValueError, TypeError):
        return None  # not a preset nor a readable JSON: the parallel check says so


def _check_list(experts: ExpertsSection, model, file: str | None, model_type: str | None,
                model_folder: str | None) -> None:
    if experts.select != "list":
        if experts.experts is not None:
            raise RecipeError(file, "experts.experts", f"names experts, but select is {experts.select}",
                              "use select: list, or remove experts.experts")
        return
    if not experts.experts or not any(experts.experts.values()):
        raise RecipeError(file, "experts.experts", "select: list needs the experts to train",
                          "e.g. experts: {1: [0, 5]} (MoE layer -> expert ids)")
    layers, routed = _model_shape(model, model_type, model_folder)
    for layer, ids in experts.experts.items():
        if layer < 0 or (layers is not None and layer >= layers):
            raise RecipeError(file, f"experts.experts.{layer}", f"unknown layer {layer} (the model has "
                              f"{layers} layers)" if layers else f"unknown layer {layer}",
                              f"use MoE layer numbers 0..{layers - 1 if layers else 'N-1'}")
        for e in ids:
            if e < 0 or (routed is not None and e >= routed):
                raise RecipeError(file, f"experts.experts.{layer}", f"unknown expert {e} (the model has {routed} "
                                  "routed experts)" if routed else f"unknown expert {e}", "use ids 0..E-1")
        if len(set(ids)) != len(ids):
            raise RecipeError(file, f"experts.experts.{layer}", "names an expert twice", "list each id once")


def _model_shape(model, model_type: str | None, model_folder: str | None) -> tuple[int | None, int | None]:
    """(layers, routed experts) when the recipe builds the model from `config` or names a local folder; else
    (None, None), and the stage checks the selection against the loaded model."""
    f = family(model_type)
    if f is None:
        return None, None
    fields = model.config
    if fields is None:
        config_json = Path(os.path.expanduser(model_folder or "")) / "config.json"
        try:
            fields = json.loads(config_json.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None, None
    import transformers

    try:
        config = getattr(transformers, f.config_class)(**{k: v for k, v in fields.items() if k != "model_type"})
    except Exception:  # a config the model check refuses with its own line
        return None, None
    return getattr(config, "num_hidden_layers", None), getattr(config, f.experts_attr, None)


def analysis_loads(path: Path, model_name: str | None) -> tuple[dict[int, list[float]], int]:
    """(MoE layer -> tokens routed to each expert, tokens) of one model of an `adapt analyze` analysis.json.
    Raises ValueError with the reason when the file does not carry them."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        models = result["per_model"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not an `adapt analyze` result ({type(e).__name__}: {e})") from None
    if not isinstance(models, dict) or not models:
        raise ValueError(f"{path} holds no analysed model")
    if model_name is None and len(models) > 1:
        raise ValueError(f"{path} analyses {len(models)} models ({', '.join(models)}); say which")
    name = model_name or next(iter(models))
    if name not in models:
        raise ValueError(f"{path} has no model {name!r} (it has {', '.join(models)})")
    try:
        loads = {int(layer): [float(x) for x in entry["load"]] for layer, entry in models[name]["layers"].items()}
        tokens = int(models[name]["tokens"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"{path}: model {name!r} has no per-layer expert loads ({type(e).__name__}: {e})") from None
    if not loads or tokens < 1:
        raise ValueError(f"{path}: model {name!r} routed no tokens")
    return loads, tokens
