"""Load a recipe YAML (plus command-line overrides) into a validated `AdaptSFTConfig` / `AdaptDPOConfig`.

Everything here runs before any model or dataset is touched, so a bad recipe fails in seconds with one line naming
the file, the key and the fix. Order of checks: YAML syntax -> unknown keys and types -> contradictions between
fields -> files that must exist -> TRL's own `__post_init__` validation (re-raised with the file name).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import typing
from pathlib import Path
from typing import Any

import yaml

from adapt.config import yamlfile
from adapt.config.checks import RecipeError, coerce_scalar, describe, matches, suggest
from adapt.config.experts import check_experts
from adapt.config.families import check_combination, family
from adapt.config.limits import check_ranges, non_finite
from adapt.config.loss_scale import loss_scale
from adapt.config.sections import (
    BUILTIN_TOKENIZERS,
    DECONTAMINATION_BENCHMARKS,
    LORA_TARGETS,
    SECTION_TYPES,
    DataSource,
)
from adapt.config.stages import STAGES
from adapt.parallel import check_layout, deepspeed_config, preset_path
from adapt.parallel.launch import launch_settings
from adapt.runfolder import holds_run, incomplete_reason
from adapt.tasks import TASKS

SECTIONS = (*SECTION_TYPES, "training")
TOP_LEVEL_KEYS = ("stage", *SECTIONS, "overwrite")

# Keys that older recipes (open-instruct, transformers 4, TRL < 1) use and today's libraries renamed.
RENAMED_TRAINING_KEYS = {
    "warmup_ratio": "use `warmup_steps` with the same value (transformers 5 reads a float in [0, 1) as a ratio)",
    "evaluation_strategy": "use `eval_strategy`",
    "max_seq_length": "use `max_length`",
    "overwrite_output_dir": "use `overwrite: true` at the top level (or --overwrite)",
}


def load_recipe(path: str | os.PathLike, overrides: typing.Sequence[str] = (), *, check_paths: bool = True,
                check_hardware: bool = True, stage: str | None = None, check_output: bool = True):
    """Read, override, validate and build the typed config of one stage.

    overrides: `key.sub=value` strings (value parsed as YAML), applied on top of the file.
    check_paths: require local data files, model folders and tokenizers to exist (off only to validate a recipe
        whose inputs are produced by an earlier stage that has not run yet).
    check_hardware: let TRL reject settings this machine cannot run (e.g. bf16 without a GPU). Off to validate a GPU
        recipe on a CPU machine.
    stage: the stage the caller runs (`adapt sft` expects `stage: sft`).
    check_output: refuse an output_dir that already holds a run (off for commands that write none, `adapt data`).
    """
    file = str(path)
    raw = read_recipe(file, overrides)
    return build_config(raw, file, check_paths=check_paths, check_hardware=check_hardware, stage=stage,
                        check_output=check_output)


def read_recipe(path: str | os.PathLike, overrides: typing.Sequence[str] = ()) -> dict[str, Any]:
    """The recipe as a plain dict with the overrides applied and `${VAR}`s expanded, not yet validated."""
    raw = yamlfile.read(str(path))
    for item in overrides:
        _apply_override(raw, item, str(path))
    return _expand_env(raw, "", str(path))


ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(node: Any, where: str, file: str) -> Any:
    """`${NAME}` in a string value is the environment variable NAME, so a recipe can point at data wherever each
    machine keeps it (`path: ${ADAPT_DATA}/sft/train.jsonl`). An unset variable is an error naming the key, never an
    empty string. Only the `${...}` form is expanded; a lone `$` stays as written."""
    if isinstance(node, dict):
        return {k: _expand_env(v, f"{where}.{k}" if where else str(k), file) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_env(v, f"{where}[{i}]", file) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def value(match: re.Match) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise RecipeError(file, where, f"uses ${{{name}}}, which is not set in the environment",
                              f"export {name}=... (the folder or file it names), or write the path itself")
        return os.environ[name]

    return ENV_REFERENCE.sub(value, node)


def build_config(raw: dict[str, Any], file: str | None = None, *, check_paths: bool = True,
                 check_hardware: bool = True, stage: str | None = None, check_output: bool = True):
    from adapt.config.configs import STAGE_CONFIGS, TRL_CONFIGS  # imports TRL: keep `adapt --help` fast

    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise RecipeError(file, str(key), "unknown top-level key", suggest(str(key), TOP_LEVEL_KEYS))
    recipe_stage = raw.get("stage")
    if not isinstance(recipe_stage, str) or recipe_stage not in STAGE_CONFIGS:
        raise RecipeError(file, "stage", f"must be one of {sorted(STAGE_CONFIGS)}, got {recipe_stage!r}",
                          "add `stage: sft` or `stage: dpo` at the top of the recipe")
    if stage is not None and recipe_stage != stage:
        raise RecipeError(file, "stage", f"this is a `{recipe_stage}` recipe but `adapt {stage}` was run",
                          f"run `adapt {recipe_stage} --config {file}`")
    if not isinstance(raw.get("overwrite", False), bool):
        raise RecipeError(file, "overwrite", "must be true or false")

    # An absent or empty (`router:`) section takes the defaults; `router: false` or `router: []` is refused below,
    # never read as "no router section" (its defaults would train while the recipe seemed to turn the losses off).
    sections = {name: _section(_or_empty(raw.get(name)), cls, name, file) for name, cls in SECTION_TYPES.items()}
    training = _training(_or_empty(raw.get("training")), TRL_CONFIGS[recipe_stage], STAGE_CONFIGS[recipe_stage], file)
    check_ranges(recipe_stage, sections, training, file)
    _check_contradictions(recipe_stage, sections, training, file)
    _check_family(sections, file)
    _check_peft(sections, file, check_hardware)
    check_experts(sections, file, check_paths, known_model_type(sections["model"]),
                  model_reference(sections["model"].name_or_path))
    _check_loss_reduction(recipe_stage, training, file)
    if check_paths:
        _check_paths(sections, file)
    if check_paths and check_output and not training.get("resume_from_checkpoint"):
        _check_output_dir(training["output_dir"], raw.get("overwrite", False), file)

    return _construct(STAGE_CONFIGS[recipe_stage], _finished(recipe_stage, sections, training, raw, file), file,
                      check_hardware)


def _finished(stage: str, sections: dict[str, Any], training: dict[str, Any], raw: dict[str, Any],
              file: str | None) -> dict[str, Any]:
    """Every field the toolkit decides, set here, once, before TRL's config is built; nothing changes it later."""
    from adapt.config.configs import STAGE_CONFIGS  # imports TRL: keep `adapt --help` fast

    data = sections["data"]
    if data.strip is None:  # open-instruct strips every message it renders with the tulu template
        data.strip = sections["model"].chat_template == "tulu"
    record = STAGES[stage]
    if record.token_labels:
        # The loss on the assistant turns unless the recipe says otherwise (TRL's default is every token).
        data.assistant_only_loss = True if data.assistant_only_loss is None else data.assistant_only_loss
    training.update(copy.deepcopy(dict(record.trl_fields)))
    # How the loss is reduced and scaled, from the final settings (adapt/config/loss_scale.py): the config keeps it,
    # and the TRL field it decides is set from it.
    defaults = {f.name: f.default for f in dataclasses.fields(STAGE_CONFIGS[stage])}
    scale = loss_scale(record, training.get("loss_reduction", defaults["loss_reduction"]),
                       training.get("average_tokens_across_devices", defaults["average_tokens_across_devices"]))
    training["average_tokens_across_devices"] = scale.average_tokens_across_devices
    # The toolkit adds the load-balancing term itself, for every family (adapt/trainers/router.py); TRL's own path
    # (which reads `config.num_experts`, absent in several families) stays off.
    training["router_aux_loss_coef"] = 0.0
    training["deepspeed"] = _deepspeed_config(sections["parallel"], file)
    training.update(launch_settings(bool(sections["parallel"].deepspeed), training))  # distributed CPU: gloo
    return dict(training, stage=stage, overwrite=raw.get("overwrite", False), recipe_path=file, loss_scale=scale,
                **sections)


def _or_empty(section: Any) -> Any:
    return {} if section is None else section


# ----------------------------------------------------------------------------------------------------------- reading

def _apply_override(raw: dict[str, Any], item: str, file: str) -> None:
    if "=" not in item:
        raise RecipeError(file, item, "an override must look like `section.key=value`",
                          "e.g. `training.learning_rate=1e-4`")
    dotted, text = item.split("=", 1)
    try:
        value = yamlfile.parse(text) if text else None
    except (yaml.YAMLError, RecursionError):
        value = text
    node: Any = raw
    parts = dotted.strip().split(".")
    if len(parts) == 1 and parts[0] in SECTIONS:
        # `training={...}` would drop every key of the file's section that the value does not repeat
        raise RecipeError(file, dotted, "an override replaces one key; this one would replace the whole section",
                          f"override its keys one by one, e.g. `{parts[0]}.KEY=VALUE`")
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):  # `data.sources.0.rows=100` addresses the first source
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(file, dotted, f"`{part}` is not an index of a {len(node)}-item list",
                                  f"use 0..{len(node) - 1}")
            part = int(part)
        elif not isinstance(node, dict):
            raise RecipeError(file, dotted, f"`{parts[depth - 1]}` is not a section", "override a key inside a section")
        if last:
            node[part] = value
        else:
            node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]


# -------------------------------------------------------------------------------------------------------- validation

def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init and f.metadata.get("recipe_key", True)}


def _section(values: Any, cls, where: str, file: str | None):
    """Check one section's keys and types and build its dataclass (recursing into lists of sources)."""
    if dataclasses.is_dataclass(values):
        return values
    if not isinstance(values, dict):
        raise RecipeError(file, where, f"must be a mapping, got {type(values).__name__}", f"write `{where}:` keys")
    fields, hints = _fields(cls), typing.get_type_hints(cls)
    out = {}
    for key, value in values.items():
        if key not in fields:
            raise RecipeError(file, f"{where}.{key}", "unknown key", suggest(str(key), fields))
        value = _checked(value, hints[key], f"{where}.{key}", file)
        if key == "sources":
            value = [_section(v, DataSource, f"{where}.sources[{i}]", file) for i, v in enumerate(value)]
        out[key] = value
    return cls(**out)


def _checked(value: Any, hint: Any, where: str, file: str | None) -> Any:
    """One recipe value: coerced to the field's type, of that type, and finite."""
    value = coerce_scalar(value, hint)
    if not matches(value, hint):
        raise RecipeError(file, where, f"expected {describe(hint)}, got {value!r}", f"give a {describe(hint)}")
    if non_finite(value):
        raise RecipeError(file, where, f"must be a finite number, got {value!r}", "give a finite number")
    return value


def _training(values: Any, trl_cls, stage_cls, file: str | None) -> dict[str, Any]:
    """The `training:` mapping: TRL's fields, plus the toolkit's own few (marked `training_key` in configs.py)."""
    from adapt.config.configs import OWNED_TRAINING_KEYS  # imports TRL: keep `adapt --help` fast
    if not isinstance(values, dict):
        raise RecipeError(file, "training", "must be a mapping of TRL config fields", "e.g. `learning_rate: 2e-5`")
    fields, hints = _fields(trl_cls), typing.get_type_hints(trl_cls)
    own = {f.name: f for f in dataclasses.fields(stage_cls) if f.metadata.get("training_key")}
    fields.update(own)
    hints.update({name: typing.get_type_hints(stage_cls)[name] for name in own})
    out = {}
    for key, value in values.items():
        if key in OWNED_TRAINING_KEYS:
            raise RecipeError(file, f"training.{key}", "is set by the toolkit", OWNED_TRAINING_KEYS[key])
        if key not in fields:
            fix = RENAMED_TRAINING_KEYS.get(key) or suggest(str(key), fields)
            raise RecipeError(file, f"training.{key}", f"unknown {trl_cls.__name__} field", fix)
        out[key] = _checked(value, hints[key], f"training.{key}", file)
    if not out.get("output_dir"):
        raise RecipeError(file, "training.output_dir", "missing", "say where the run folder goes, e.g. runs/my-sft")
    return out


def _check_contradictions(stage: str, s: dict[str, Any], training: dict[str, Any], file: str | None) -> None:
    model, data, parallel, hub = s["model"], s["data"], s["parallel"], s["hub"]
    if (model.name_or_path is None) == (model.config is None):
        raise RecipeError(file, "model", "give exactly one of `name_or_path` (load weights) or `config` (random init)",
                          "keep the one you mean")
    if model.add_bos and model.chat_template != "tulu":
        raise RecipeError(file, "model.add_bos", "prepends the BOS through the tulu template; with "
                          "chat_template: tokenizer the tokenizer's own template decides the BOS",
                          "use chat_template: tulu, or drop add_bos")
    record = STAGES[stage]
    for key, given in (("assistant_only_loss", data.assistant_only_loss is not None),
                       ("train_assistant_newline", data.train_assistant_newline)):
        if given and not record.token_labels:
            raise RecipeError(file, f"data.{key}", f"is a token-label setting (sft); the {stage} stage's loss is "
                              f"{record.scores}", "remove it")
    if model.config is not None and not model.tokenizer:
        raise RecipeError(file, "model.tokenizer", "a model built from `config` needs a tokenizer",
                          "set `model.tokenizer` to a Hub id, a folder or `builtin:<name>`")
    if not data.sources:
        raise RecipeError(file, "data.sources", "no training data", "list at least one source (path, hub or task)")
    formats = record.formats
    for i, src in enumerate(data.sources):
        given = [k for k in ("path", "hub", "task") if getattr(src, k)]
        if len(given) != 1:
            raise RecipeError(file, f"data.sources[{i}]", f"needs exactly one of path/hub/task, got {given or 'none'}",
                              "keep one")
        if src.task and src.task not in TASKS:
            raise RecipeError(file, f"data.sources[{i}].task", f"unknown task {src.task!r}", suggest(src.task, TASKS))
        if src.format and src.format not in formats:
            raise RecipeError(file, f"data.sources[{i}].format", f"{src.format!r} is not a {stage} format",
                              suggest(src.format, formats))
    counted = [src.rows for src in data.sources]
    if data.eval_rows and None not in counted and data.eval_rows >= sum(counted):
        raise RecipeError(file, "data.eval_rows", f"holds out {data.eval_rows} rows of a mixture of at most "
                          f"{sum(counted)}: none would be left to train on", "hold out fewer rows")
    _check_attention(model.attn_implementation, file)
    if model.tokenizer and model.tokenizer.startswith("builtin:") \
            and model.tokenizer.split(":", 1)[1] not in BUILTIN_TOKENIZERS:
        raise RecipeError(file, "model.tokenizer", f"unknown builtin tokenizer {model.tokenizer!r}",
                          f"use one of {', '.join('builtin:' + n for n in BUILTIN_TOKENIZERS)}")
    for name in data.decontaminate:
        if name not in DECONTAMINATION_BENCHMARKS:
            raise RecipeError(file, f"data.decontaminate.{name}", "unknown benchmark",
                              suggest(name, DECONTAMINATION_BENCHMARKS))
    if training.get("bf16") and training.get("fp16"):
        raise RecipeError(file, "training.fp16", "bf16 and fp16 are both on", "keep one")
    experts_attr = getattr(family(model.architecture), "experts_attr", "num_experts")
    problem = check_layout((model.config or {}).get(experts_attr), parallel.expert_parallel_size,
                           int(os.environ.get("WORLD_SIZE", parallel.expert_parallel_size)))
    if problem:
        why, fix = problem.split("; ")
        raise RecipeError(file, "parallel.expert_parallel_size", why, fix)
    if parallel.expert_parallel_size > 1 and model.experts_implementation == "adapt_fused":
        raise RecipeError(file, "model.experts_implementation",
                          "adapt_fused cannot run under expert parallelism: AutoEP replaces the experts with its own "
                          "grouped-GEMM layer", "use parallel.expert_parallel_size: 1, or drop adapt_fused")
    if parallel.expert_parallel_size > 1 and not parallel.deepspeed:
        raise RecipeError(file, "parallel.expert_parallel_size", "expert parallelism runs through DeepSpeed",
                          "also set `parallel.deepspeed` (e.g. zero2)")
    if hub.push and not hub.repo_id:
        raise RecipeError(file, "hub.repo_id", "`hub.push` is on but no repository is named", "set `ORG/NAME`")


def _check_attention(name: str | None, file: str | None) -> None:
    """`model.attn_implementation` is one the installed transformers runs: "eager", a registered attention function
    (sdpa, flash_attention_2/3/4, flex_attention, ...) or a Hub kernel (`org/repo`, loaded by the `kernels` package).
    Whether a flash kernel is installed is checked by transformers when the model loads, on the GPU machine."""
    if name is None or "/" in name:
        return
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    known = ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]
    if name not in known:
        raise RecipeError(file, "model.attn_implementation", f"{name!r} is not an attention implementation of "
                          f"transformers (one of {', '.join(known)}, or a Hub kernel `org/repo`)",
                          "use one of them, or drop it")


def model_reference(name_or_path: str | None) -> str | None:
    """Where the model's config lives: the folder or Hub id itself, or for a LoRA run's adapter folder its base (the
    bottom of a chain: a LoRA DPO run's base is its LoRA SFT run, adapt.model.lora.load_merged_adapter)."""
    for _ in range(16):  # a chain longer than this is a loop; the loader names it
        adapter_config = Path(os.path.expanduser(name_or_path or "")) / "adapter_config.json"
        if not (name_or_path and adapter_config.is_file()):
            return name_or_path
        try:
            name_or_path = json.loads(adapter_config.read_text(encoding="utf-8")).get("base_model_name_or_path")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            return None
    return None


def known_model_type(model) -> str | None:
    """The family a recipe trains, when it is known without downloading or loading anything: `model.architecture`
    for a model built from `config`, else the `model_type` of a local folder's config.json or of a Hub model's
    config.json already in the local cache. None otherwise (the stage checks again once it has the config)."""
    if model.config is not None:
        return model.architecture
    ref = model_reference(model.name_or_path)
    path = Path(os.path.expanduser(ref or ""))
    config_json = path / "config.json" if path.is_dir() else None
    if config_json is None and ref and not _looks_local(ref):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(ref, "config.json", revision=model.revision)
        config_json = Path(cached) if isinstance(cached, str) else None
    if config_json is None or not config_json.is_file():
        return None
    try:
        return json.loads(config_json.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None


def _check_family(s: dict[str, Any], file: str | None) -> None:
    """The model's family is supported, and supports what the recipe asks of it (adapt/config/families.py)."""
    model_type = known_model_type(s["model"])
    if model_type is not None:
        problem = check_combination(model_type, s["model"], s["router"], s["parallel"], s["model"].config)
        if problem:
            raise RecipeError(file, *problem)


def _check_peft(s: dict[str, Any], file: str | None, check_hardware: bool) -> None:
    peft = s["peft"]
    if peft.method != "lora":
        if peft.quantize:
            raise RecipeError(file, "peft.quantize", "quantizes the frozen base of a LoRA run", "add peft.method: lora")
        return
    for i, target in enumerate(peft.targets):
        if target not in LORA_TARGETS:
            raise RecipeError(file, f"peft.targets[{i}]", f"unknown selector {target!r}", suggest(target, LORA_TARGETS))
    if not {"attention", "experts"} & set(peft.targets):
        raise RecipeError(file, "peft.targets", "puts no LoRA adapter anywhere (router, embeddings and lm_head are "
                          "trained fully, beside the adapters)", "add attention and/or experts")
    adapter_config = Path(os.path.expanduser(s["model"].name_or_path or "")) / "adapter_config.json"
    if peft.from_adapter == "continue" and adapter_config.is_file():
        saved = json.loads(adapter_config.read_text(encoding="utf-8"))
        if (saved.get("r"), saved.get("lora_alpha")) != (peft.r, peft.alpha):
            raise RecipeError(file, "peft.from_adapter", f"continue keeps the adapter of {s['model'].name_or_path} "
                              f"(r={saved.get('r')}, alpha={saved.get('lora_alpha')}), but the recipe says "
                              f"r={peft.r}, alpha={peft.alpha}", "make them equal, or use peft.from_adapter: merge")
    if s["model"].config is not None:
        raise RecipeError(file, "peft.method", "a LoRA run saves only its adapter, so its base must be loadable, "
                          "not built at random from model.config", "save the base and set model.name_or_path to it")
    if s["parallel"].expert_parallel_size > 1:
        raise RecipeError(file, "peft.method", "LoRA under expert parallelism is not verified (AutoEP replaces the "
                          "MoE blocks and the fused experts PEFT's adapters attach to)",
                          "use parallel.expert_parallel_size: 1 with ZeRO")
    if peft.quantize:
        import torch

        if check_hardware and not torch.cuda.is_available():
            raise RecipeError(file, "peft.quantize", f"{peft.quantize} QLoRA runs through bitsandbytes on CUDA, and "
                              "this machine has no CUDA GPU", "remove peft.quantize, or run on a CUDA machine")
        # Not wired up yet: bitsandbytes quantizes nn.Linear layers, while an MoE's fused 3-D experts hold most of
        # its weights; what that gives has to be measured on a GPU before the toolkit offers it.
        raise RecipeError(file, "peft.quantize", "QLoRA is not verified yet for fused MoE experts (bitsandbytes "
                          "quantizes linear layers only)", "remove peft.quantize; LoRA on a bf16 base fits OLMoE-1B-7B "
                          "in 24 GB (recipes/olmoe-1b-7b/README.md)")


def _check_loss_reduction(stage: str, training: dict[str, Any], file: str | None) -> None:
    """`sum` only where it means something; the rule itself is decided in `_finished` (adapt/config/loss_scale.py)."""
    if training.get("loss_reduction", "mean") != "sum":
        return
    if not STAGES[stage].token_labels:
        raise RecipeError(file, "training.loss_reduction", f"`sum` sums a token cross-entropy (sft); the {stage} "
                          f"stage's loss is {STAGES[stage].scores}", "remove it (or use `mean`)")
    if training.get("average_tokens_across_devices"):
        raise RecipeError(file, "training.average_tokens_across_devices", "contradicts loss_reduction: sum (a summed "
                          "loss is divided by no token count)", "remove it")


def _looks_local(ref: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else (./x, /x, a/b/c, ~) is a local path."""
    return ref.startswith((".", "/", "~")) or ref.count("/") > 1 or os.path.exists(ref)


def _check_paths(s: dict[str, Any], file: str | None) -> None:
    model = s["model"]
    for key, ref in (("model.name_or_path", model.name_or_path), ("model.tokenizer", model.tokenizer)):
        if ref and not ref.startswith("builtin:") and _looks_local(ref) and not os.path.exists(os.path.expanduser(ref)):
            raise RecipeError(file, key, f"local path {ref!r} does not exist",
                              "run the stage that writes it first, or give a Hub id")
    if model.name_or_path and _looks_local(model.name_or_path):
        reason = incomplete_reason(os.path.expanduser(model.name_or_path))
        if reason:
            raise RecipeError(file, "model.name_or_path", f"{model.name_or_path} is an incomplete run folder "
                              f"({reason})", "use a finished run's folder")
    for i, src in enumerate(s["data"].sources):
        if src.path and not os.path.isfile(os.path.expanduser(src.path)):
            raise RecipeError(file, f"data.sources[{i}].path", f"data file {src.path!r} not found",
                              "check the path (relative paths start from the current directory)")
    for name, path in s["data"].decontaminate.items():
        if path != "hub" and not path.startswith("hub:") and not os.path.exists(os.path.expanduser(path)):
            raise RecipeError(file, f"data.decontaminate.{name}", f"benchmark data {path!r} not found",
                              "point it at the benchmark's local file or folder, or write `hub` to read it from the "
                              "Hub")


def _deepspeed_config(parallel, file: str | None) -> dict | None:
    if not parallel.deepspeed:
        return None
    if preset_path(parallel.deepspeed) is None:
        raise RecipeError(file, "parallel.deepspeed", f"{parallel.deepspeed!r} is neither a shipped preset nor a file",
                          "use zero2, zero3, zero3-offload or a path to a DeepSpeed JSON")
    try:
        return deepspeed_config(parallel.deepspeed, parallel.expert_parallel_size)
    except json.JSONDecodeError as e:
        raise RecipeError(file, "parallel.deepspeed", f"{parallel.deepspeed} is not valid JSON ({e})",
                          "fix the file") from None


def _check_output_dir(output_dir: str, overwrite: bool, file: str | None) -> None:
    out = Path(output_dir)
    existing = next(p for p in (out, *out.parents) if p.exists())  # the folder itself or the nearest parent
    if not existing.is_dir():
        raise RecipeError(file, "training.output_dir", f"{existing} is a file, not a folder",
                          "choose a folder path for the run")
    if not os.access(existing, os.W_OK):
        raise RecipeError(file, "training.output_dir", f"{existing} is not writable", "choose a writable folder")
    if holds_run(out) and not overwrite:
        raise RecipeError(file, "training.output_dir", f"{output_dir} already holds a run and would be overwritten",
                          "choose another output_dir, or pass --overwrite to replace it")


def _construct(cls, kwargs: dict[str, Any], file: str | None, check_hardware: bool):
    """Run TRL's own validation; without `check_hardware`, validate a GPU recipe as if on a capable machine."""
    import torch

    want_bf16 = kwargs.get("bf16", True) and not kwargs.get("fp16")  # TRL turns bf16 on unless told otherwise
    if not check_hardware and want_bf16 and not torch.cuda.is_available():
        # A GPU recipe validated on a CPU machine (`adapt check`, `adapt data`): built for this machine's CPU, which
        # runs bf16 too, so TRL checks every other field. Such a config validates and prepares data; it never trains.
        kwargs = dict(kwargs, use_cpu=True)
    try:
        config = cls(**kwargs)
    except (ValueError, TypeError) as e:
        message = str(e).split("\n")[0]
        if "bf16" in message:
            raise RecipeError(file, "training.bf16", "this machine has no bf16-capable GPU",
                              "set `training.bf16: false` to run on CPU, or launch on a GPU") from None
        raise RecipeError(file, "training", message, "see the TRL/transformers documentation of that field") from None
    return config
