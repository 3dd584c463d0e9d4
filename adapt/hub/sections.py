"""The model card's body sections, each a function of the run's records (recipe.yaml, run.json, data_summary.json,
metrics.jsonl). A record that is missing is said to be missing: the card never fills a gap with a guess."""

from __future__ import annotations

import datetime
from typing import Any

import yaml

from adapt.config.loss_scale import loss_scale
from adapt.config.stages import STAGES

# The fields a reader looks for first; the whole resolved recipe follows them in a folded block.
KEY_FIELDS = {
    "training": ("loss_reduction", "num_train_epochs", "max_steps", "learning_rate", "lr_scheduler_type",
                 "warmup_steps", "weight_decay", "optim", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
                 "per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "packing",
                 "padding_free", "bf16", "gradient_checkpointing", "seed", "beta",
                 "loss_type"),
    "model": ("dtype", "chat_template", "add_bos"),
    "data": ("assistant_only_loss", "strip", "train_assistant_newline"),
    "parallel": ("deepspeed", "expert_parallel_size"),
}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return f"`{value}`" if isinstance(value, (str, list, dict)) else str(value)


def data_section(summary: dict | None, recipe: dict, earlier: list[tuple[str, dict | None]]) -> str:
    lines = ["## Training data", ""]
    if not summary:
        sources = [s.get("hub") or s.get("path") or f"task:{s.get('task')}"
                   for s in (recipe.get("data") or {}).get("sources", [])]
        lines.append("The run folder has no `data_summary.json`, so the rows taken from each source are not known. "
                     + (f"The recipe names: {', '.join(f'`{s}`' for s in sources)}." if sources else ""))
        return "\n".join(lines) + "\n"
    lines += ["Rows taken from each source in this stage (from the run's `data_summary.json`, uploaded beside the "
              "weights):", "",
              "| source | format | rows read | rows kept | not taken (`rows:` limit) | dropped | truncated | tokens "
              "| trained tokens |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summary.get("sources", []):
        dropped = s.get("dropped") or {}
        why = ", ".join(f"{reason}: {n}" for reason, n in dropped.items())
        lines.append(f"| `{s['source']}` | {s.get('format')} | {s.get('rows_read')} | {s.get('rows_kept')} "
                     f"| {s.get('rows_not_taken', 0)} | {sum(dropped.values())}{f' ({why})' if why else ''} "
                     f"| {s.get('truncated', '–')} | {s.get('tokens', '–')} | {s.get('trained_tokens', '–')} |")
    lines += ["", f"Mixture: {summary.get('train_rows')} training rows, {summary.get('eval_rows', 0)} held out; "
              f"{summary.get('tokens', '–')} tokens of which {summary.get('trained_tokens', '–')} carry the loss; "
              f"max length {summary.get('max_length', '–')} (over-length rows: {summary.get('over_length', '–')})."]
    decontam = sum(len(s.get("decontaminated") or []) for s in summary.get("sources", []))
    if decontam:
        lines.append(f"Decontamination dropped {decontam} rows that overlap benchmark prompts (each listed in "
                     f"`data_summary.json`).")
    for stage, folder_summary in earlier:
        taken = ", ".join(f"`{s['source']}` ({s.get('rows_kept')} rows)"
                          for s in (folder_summary or {}).get("sources", []))
        lines.append(f"\nEarlier stage `{stage}`: {taken or 'data summary not available'}.")
    return "\n".join(lines) + "\n"


def training_section(recipe: dict, record: dict) -> str:
    if not recipe:
        return "## Training procedure\n\nThe run folder has no `recipe.yaml`; the hyperparameters were not recorded.\n"
    training = recipe.get("training") or {}
    router = recipe.get("router") or {}
    lb, z = router.get("load_balancing_weight") or 0.0, router.get("z_loss_weight") or 0.0
    losses = "the router's auxiliary losses kept on" if lb or z else "the router's auxiliary losses logged, not trained"
    stage = STAGES.get(recipe.get("stage"))  # adapt/config/stages.py; None for a recipe.yaml edited by hand
    lines = ["## Training procedure", "",
             f"Stage `{recipe.get('stage')}` with [TRL](https://github.com/huggingface/trl)'s "
             f"{stage.trl_trainer if stage else 'trainer'} and {losses}, trained with the "
             f"`adapt` toolkit.", "", "| field | value |", "|---|---|"]
    for section, keys in KEY_FIELDS.items():
        values = recipe.get(section) if section != "training" else training
        for key in keys:
            value = (values or {}).get(key)
            if value is None or (key == "max_steps" and value == -1):
                continue
            lines.append(f"| `{section}.{key}` | {_fmt(value)} |")
    world = record.get("world_size")
    if world and training.get("per_device_train_batch_size"):
        total = training["per_device_train_batch_size"] * training.get("gradient_accumulation_steps", 1) * world
        lines.append(f"| global batch (per device × accumulation × {world} processes) | {total} |")
    scale = loss_scale(stage, training.get("loss_reduction", "mean"),
                       training.get("average_tokens_across_devices", True)).words(lb, z) if stage else ""
    lines += ["", "### Router losses", "",
              f"- load balancing (`aux_loss`, the model's own load_balancing_loss_func): weight "
              f"**{router.get('load_balancing_weight')}**",
              f"- router z-loss (`z_loss`, mean over tokens of logsumexp(router logits)², averaged over layers): "
              f"weight **{router.get('z_loss_weight')}**", "", scale, "",
              "<details><summary>The fully resolved recipe (<code>recipe.yaml</code>: every field, TRL's included)"
              "</summary>", "", "```yaml", yaml.safe_dump(recipe, sort_keys=False).rstrip(), "```", "", "</details>"]
    return "\n".join(lines) + "\n"


def experts_section(selection: dict | None) -> str:
    """ESFT: which experts trained, from the run's `experts.json` (empty when the run trained every expert)."""
    if not selection:
        return ""
    layers = selection.get("layers") or {}
    how = {"gate_score": "average gate score", "token_ratio": "token-selection ratio"}.get(selection.get("criterion"))
    rule = (f"per MoE layer, the experts with the highest {how} until they held {selection.get('threshold')} of the "
            f"layer's total, over {selection.get('tokens_routed')} tokens of {selection.get('source')}"
            if how else "the experts the recipe listed")
    also = "".join(f" and the {part}" for part in selection.get("also_trained") or [])
    lines = ["## Expert-specialized fine-tuning (ESFT)", "",
             f"Only the selected routed experts{also} were trained; every other weight is the starting model's, bit "
             f"for bit. Selection: {rule}. Per layer and expert scores: `experts.json`.", "",
             "| layer | trained experts |", "|---|---|"]
    lines += [f"| {layer} | {', '.join(map(str, entry.get('selected') or [])) or 'none'} |"
              for layer, entry in sorted(layers.items(), key=lambda kv: int(kv[0]))]
    return "\n".join(lines) + "\n"


def curves_section(figures: dict[str, str], last: dict[str, float]) -> str:
    if not figures:
        return "## Training curves\n\nThe run folder has no `metrics.jsonl`; no curves were drawn.\n"
    lines = ["## Training curves", "", "From the run's `metrics.jsonl` (uploaded beside the weights)."]
    if last:
        lines.append("Last logged values: " + ", ".join(f"{k} {v:.4g}" for k, v in last.items()) + ".")
    lines.append("")
    lines += [f"![{key}]({path})" for key, path in figures.items()]
    return "\n".join(lines) + "\n"


def hardware_section(record: dict) -> str:
    if not record:
        return "## Hardware and time\n\nThe run folder has no `run.json`; hardware and wall time were not recorded.\n"
    wall = record.get("wall_time_s")
    wall_text = str(datetime.timedelta(seconds=round(wall))) if isinstance(wall, (int, float)) else "not recorded"
    versions = ", ".join(f"{k} {v}" for k, v in (record.get("versions") or {}).items())
    return "\n".join(["## Hardware and time", "",
                      f"- device: `{record.get('device')}`, {record.get('world_size')} process(es)",
                      f"- wall time: {wall_text} ({record.get('global_step')} optimizer steps)",
                      f"- software: Python {record.get('python')}, {versions}", ""])


def reproduce_section(repo_id: str, recipe: dict, record: dict) -> str:
    stage = recipe.get("stage") or record.get("stage")
    if not stage:
        return "## Reproduce\n\nThe run folder has no recipe, so the run cannot be reproduced from this repository.\n"
    known = STAGES.get(stage)  # adapt/config/stages.py
    world = record.get("world_size") or 1
    launch = (f"adapt {stage} --config recipe.yaml" if world == 1 else
              f"accelerate launch --num_processes {world} -m {known.module if known else 'adapt.stages.' + stage} "
              f"--config recipe.yaml")
    lines = ["## Reproduce", "", "The fully resolved recipe is in this repository:", "", "```bash",
             f"hf download {repo_id} recipe.yaml --local-dir .", launch, "```"]
    source = (recipe.get("model") or {}).get("name_or_path")
    if known and known.follows and source:  # started from an earlier stage's run (DPO from an SFT run)
        lines += ["", f"`model.name_or_path` is `{source}`, the model this stage started from (a `{known.follows}` "
                      f"run): produce it first or override it (`model.name_or_path=ORG/NAME`)."]
    if record.get("command"):
        lines += ["", f"The run was launched as `{record['command']}`."]
    return "\n".join(lines) + "\n"


def license_section(license: str | None) -> str:
    if license:
        return f"## License\n\n`{license}`. The base model's and the training data's licenses also apply.\n"
    return ("## License\n\nNo license was set for this model (`hub.license` in the recipe or `adapt push --license`); "
            "the base model's and the training data's licenses apply.\n")
