"""Value checks a recipe must pass before anything loads: every number finite and in range, the model config's keys
known to its family, and settings that need each other present together (evaluation steps and evaluation data).

Without them a NaN weight (`nan < 0` is false), `num_train_epochs: -1` or a learning rate of 1e308 trained and
saved a broken model with exit code 0. Each failure is one `RecipeError` naming the file, the key and the fix.
"""

from __future__ import annotations

import math
from typing import Any

from adapt.config.checks import RecipeError, suggest
from adapt.config.families import FAMILIES, unsupported
from adapt.config.sections import Range, field_ranges

# More optimizer steps than any run takes (OLMoE's pretraining took about 1.2 million): a count beyond it is a typo or
# an overflow (`max_steps: 100000000000000000000` trained "forever" with exit code 0 at the end of the allocation).
MAX_STEPS = 10**9

# The ranges of TRL's and transformers' training keys, whose fields are theirs; the toolkit's own fields (its sections'
# and its `training:` keys) carry their range in their metadata (`Range` in adapt/config/sections.py).
TRAINING_RANGES = {
    "learning_rate": Range(0.0, False, 1.0, True),
    "num_train_epochs": Range(0.0, False, float(MAX_STEPS), True),  # at least one step per epoch: the same bound
    "per_device_train_batch_size": Range(1, True),
    "per_device_eval_batch_size": Range(1, True),
    "gradient_accumulation_steps": Range(1, True),
    "max_length": Range(1, True),
    "max_grad_norm": Range(0.0, True),
    "weight_decay": Range(0.0, True),
    "warmup_steps": Range(0.0, True),
    "adam_beta1": Range(0.0, True, 1.0, False),
    "adam_beta2": Range(0.0, True, 1.0, False),
    "adam_epsilon": Range(0.0, False, 1.0, True),
    "logging_steps": Range(0.0, False),
    "save_steps": Range(0.0, False),
    "eval_steps": Range(0.0, False),
    "beta": Range(0.0, False),
}


def non_finite(value: Any) -> bool:
    """Whether a recipe value is or holds NaN or an infinity (YAML `.nan`, `.inf`, or "nan" read as a float)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(map(non_finite, value))
    if isinstance(value, dict):
        return any(map(non_finite, value.values()))
    return False


def check_ranges(stage: str, sections: dict[str, Any], training: dict[str, Any], file: str | None) -> None:
    from adapt.config.configs import _AdaptSections  # imports TRL, which recipe.py loads only to build a recipe

    for key, bounds in {**TRAINING_RANGES, **field_ranges(_AdaptSections)}.items():
        _check_value(training.get(key), bounds, f"training.{key}", file)
    steps = training.get("max_steps", -1)
    if steps is not None and steps != -1 and not 1 <= steps <= MAX_STEPS:
        raise RecipeError(file, "training.max_steps", f"must be -1 (train for num_train_epochs) or from 1 to "
                          f"{MAX_STEPS:,}, got {steps}", "give a number of optimizer steps, or drop it")
    for name, section in sections.items():
        _check_fields(section, name, file)
    for i, source in enumerate(sections["data"].sources):
        _check_fields(source, f"data.sources[{i}]", file)
    _check_evaluation(sections["data"], training, file)
    _check_model_config(sections["model"], file)


def _check_fields(section: Any, where: str, file: str | None) -> None:
    """Each field of a section (or data source) that has a range in its metadata holds a value in it."""
    for key, bounds in field_ranges(type(section)).items():
        _check_value(getattr(section, key), bounds, f"{where}.{key}", file)


def _check_value(value: Any, bounds: Range, key: str, file: str | None) -> None:
    if value is not None and not bounds.admits(value):
        raise RecipeError(file, key, f"must be {bounds}, got {value!r}", bounds.fix)


def _check_evaluation(data, training: dict[str, Any], file: str | None) -> None:
    strategy = str(getattr(training.get("eval_strategy"), "value", training.get("eval_strategy") or "no"))
    if strategy != "no" and data.eval_rows == 0:
        raise RecipeError(file, "training.eval_strategy", f"`{strategy}` evaluation but the recipe holds out no "
                          "evaluation data", "set data.eval_rows (rows held out of the mixture), or eval_strategy: no")


def _check_model_config(model, file: str | None) -> None:
    """`model.config` builds a supported family, and its keys are fields of that family's config class (a typo would
    silently keep the default)."""
    if not model.config:
        return
    import transformers  # its config classes, imported only when a recipe builds a model from `config`

    f = FAMILIES.get(model.architecture)
    if f is None:
        raise RecipeError(file, "model.architecture", unsupported(model.architecture),
                          suggest(str(model.architecture), FAMILIES))
    config_cls = getattr(transformers, f.config_class)
    known = set(config_cls().to_dict()) | set(getattr(config_cls, "attribute_map", {}))
    for key, value in model.config.items():
        if not isinstance(key, str) or key not in known:
            raise RecipeError(file, f"model.config.{key}", f"not a field of {config_cls.__name__}",
                              suggest(str(key), known))
        if key.startswith("num_") and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise RecipeError(file, f"model.config.{key}", f"must be a positive integer, got {value!r}",
                              "give a count >= 1")
    try:
        built = config_cls(**model.config)
    except Exception as e:  # config classes raise their own types (huggingface_hub's strict-dataclass errors too)
        raise RecipeError(file, "model.config", f"{config_cls.__name__} refuses it: {' '.join(str(e).split())}",
                          "fix the field it names") from None
    top_k, experts = getattr(built, f.top_k_attr), getattr(built, f.experts_attr)
    if top_k > experts:
        raise RecipeError(file, f"model.config.{f.top_k_attr}", f"routes each token to {top_k} experts of "
                          f"{experts}", f"choose {f.top_k_attr} <= {f.experts_attr}")
