"""Value checks a recipe must pass before anything loads: every number finite and in range, the model config's keys
known to its family, and settings that need each other present together (evaluation steps and evaluation data).

Without them a NaN weight (`nan < 0` is false), `num_train_epochs: -1` or a learning rate of 1e308 trained and
saved a broken model with exit code 0. Each failure is one `RecipeError` naming the file, the key and the fix.
"""

from __future__ import annotations

import math
from typing import Any

from adapt.config.checks import RecipeError, suggest

# More optimizer steps than any run takes (OLMoE's pretraining took about 1.2 million): a count beyond it is a typo or
# an overflow (`max_steps: 100000000000000000000` trained "forever" with exit code 0 at the end of the allocation).
MAX_STEPS = 10**9

# training key -> (lowest, lowest allowed?, highest, highest allowed?): the range a value must fall in.
TRAINING_RANGES = {
    "learning_rate": (0.0, False, 1.0, True),
    "num_train_epochs": (0.0, False, float(MAX_STEPS), True),  # at least one step per epoch: the same bound
    "per_device_train_batch_size": (1, True, math.inf, False),
    "per_device_eval_batch_size": (1, True, math.inf, False),
    "gradient_accumulation_steps": (1, True, math.inf, False),
    "max_length": (1, True, math.inf, False),
    "max_grad_norm": (0.0, True, math.inf, False),
    "weight_decay": (0.0, True, math.inf, False),
    "warmup_steps": (0.0, True, math.inf, False),
    "adam_beta1": (0.0, True, 1.0, False),
    "adam_beta2": (0.0, True, 1.0, False),
    "adam_epsilon": (0.0, False, 1.0, True),
    "logging_steps": (0.0, False, math.inf, False),
    "save_steps": (0.0, False, math.inf, False),
    "eval_steps": (0.0, False, math.inf, False),
    "beta": (0.0, False, math.inf, False),
    "stop_grace_seconds": (0.0, False, 3600.0, True),
}
ROUTER_RANGES = {"load_balancing_weight": (0.0, True, 1e3, True), "z_loss_weight": (0.0, True, 1e3, True),
                 # collapse thresholds (adapt/trainers/router_health.py): fractions; 1 turns that warning off
                 "dead_expert_fraction": (0.0, True, 1.0, True), "entropy_drop": (0.0, False, 1.0, True),
                 "top_expert_share": (0.0, False, 1.0, True)}


def non_finite(value: Any) -> bool:
    """Whether a recipe value is or holds NaN or an infinity (YAML `.nan`, `.inf`, or "nan" read as a float)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(map(non_finite, value))
    if isinstance(value, dict):
        return any(map(non_finite, value.values()))
    return False


def _in_range(value, low, low_ok, high, high_ok) -> bool:
    return (value > low or (low_ok and value == low)) and (value < high or (high_ok and value == high))


def _describe(low, low_ok, high, high_ok) -> str:
    left = f">= {low:g}" if low_ok else f"> {low:g}"
    return left if high == math.inf else f"{left} and {'<=' if high_ok else '<'} {high:g}"


def check_ranges(stage: str, sections: dict[str, Any], training: dict[str, Any], file: str | None) -> None:
    for key, bounds in TRAINING_RANGES.items():
        value = training.get(key)
        if value is not None and not _in_range(value, *bounds):
            raise RecipeError(file, f"training.{key}", f"must be {_describe(*bounds)}, got {value!r}",
                              "give a value in range")
    steps = training.get("max_steps", -1)
    if steps is not None and steps != -1 and not 1 <= steps <= MAX_STEPS:
        raise RecipeError(file, "training.max_steps", f"must be -1 (train for num_train_epochs) or from 1 to "
                          f"{MAX_STEPS:,}, got {steps}", "give a number of optimizer steps, or drop it")
    router = sections["router"]
    for key, bounds in ROUTER_RANGES.items():
        value = getattr(router, key)
        if not _in_range(value, *bounds):
            raise RecipeError(file, f"router.{key}", f"must be {_describe(*bounds)}, got {value!r}",
                              "use 0 to switch the loss off" if key.endswith("_weight") else "give a fraction")
    if sections["data"].eval_rows < 0:
        raise RecipeError(file, "data.eval_rows", f"must be >= 0, got {sections['data'].eval_rows}",
                          "use 0 to hold out no rows")
    _check_evaluation(sections["data"], training, file)
    _check_model_config(sections["model"], file)


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

    from adapt.config.families import FAMILIES, unsupported

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
