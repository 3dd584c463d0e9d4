"""The folder a push uploads. `adapt push --dry-run OUT` writes it to OUT and a real push writes it to a staging folder
and uploads that: one code path, so the dry run is exactly what lands on the Hub, and `from_pretrained` loads it.

What goes in is chosen by name (an allow-list), never "everything but": a run folder also holds checkpoints, the
pickled `training_args.bin` and evaluation journals, none of which belong in a published repository.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from adapt.hub.card import write_card
from adapt.hub.weights import tensor_headers
from adapt.runfolder import follow_umask, read_records, unusable_reason
from adapt_eval.suite import model_fingerprint

MODEL_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# The run's own records: the resolved recipe makes the run reproducible from the repository alone.
RECORD_FILES = ("recipe.yaml", "run.json", "data_summary.json", "metrics.jsonl", "router_stats.jsonl",
                "experts.json")
INDEX = "model.safetensors.index.json"
WHATS = ("auto", "model", "adapter", "merged")
# Recipe fields and command-line overrides that can hold a credential (TRL's `hub_token`, a judge's key): published
# as <redacted>. Special-token fields (pad_token, eos_token) are not secrets and are kept.
SECRET_KEY = re.compile(r"(hub_token|api_key|apikey|secret|password|access_token)$|^token$", re.I)
SECRET_ARG = re.compile(r"((?:hub_token|api_key|apikey|secret|password|access_token)=)\S+", re.I)


class PublishError(Exception):
    """A problem the user can fix; the command line prints it as one line."""


@dataclass
class FolderOptions:
    what: str = "auto"  # auto: the adapter for a LoRA run, the model otherwise; merged: LoRA merged into its base
    license: str | None = None
    max_shard_size: str = "5GB"  # a single weights file above this is split, as save_pretrained(max_shard_size=)


@dataclass
class Folder:
    path: Path
    run: Path
    what: str
    fingerprint: str  # of the run's weights (adapt_eval's model fingerprint): tells "the same model" on the Hub
    files: list[str]  # relative paths, sorted


def build_folder(run_dir: str | Path, out: str | Path, repo_id: str, options: FolderOptions) -> Folder:
    """Write the publishable folder for `run_dir` into `out` (new or empty): weights, config, tokenizer with its chat
    template, the run's records, evaluation results and the model card (README.md, with its PNG figures)."""
    run, out = Path(run_dir), Path(out)
    if not run.is_dir():
        raise PublishError(f"{run}: no such run folder")
    reason = unusable_reason(run)  # an incomplete run, corrupt or truncated weights, NaN values
    if reason:
        raise PublishError(f"{run}: cannot be published: {reason}")
    for name in ("metrics.jsonl", "router_stats.jsonl"):  # the card draws them: a bad line is named before any work
        if (run / name).is_file():
            try:
                read_records(run / name)
            except ValueError as e:
                raise PublishError(f"{e}; nothing published") from None
    if out.exists() and any(out.iterdir()):
        raise PublishError(f"{out} exists and is not empty; choose a new folder (nothing was overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    what = resolve_what(run, options.what)
    _check_size(options.max_shard_size)
    if what == "merged":
        _merge_lora(run, out, options.max_shard_size)
    elif what == "adapter":
        for name in ADAPTER_FILES:
            _place(run / name, out / name)
    else:
        _place_weights(run, out, options.max_shard_size)
    for name in MODEL_FILES + TOKENIZER_FILES + RECORD_FILES:
        if (run / name).is_file() and not (out / name).exists():
            _place(run / name, out / name)
    _redact_records(run, out)
    if _has_remote_code(out):
        for py in run.glob("*.py"):
            _place(py, out / py.name)
    for results in sorted(run.glob("eval/*/results.json")):  # scores only: samples and journals stay local
        _place(results, out / results.relative_to(run))
    fingerprint = model_fingerprint(str(run))["sha256"]
    write_card(run, out, repo_id=repo_id, what=what, fingerprint=fingerprint, license=options.license)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    return Folder(out, run, what, fingerprint, files)


def resolve_what(run: Path, what: str) -> str:
    is_lora = (run / "adapter_config.json").is_file()
    if what not in WHATS:
        raise PublishError(f"--what {what}: choose one of {', '.join(WHATS)}")
    if what == "auto":
        return "adapter" if is_lora else "model"
    if what in ("adapter", "merged") and not is_lora:
        raise PublishError(f"{run}: --what {what} needs a LoRA run (adapter_config.json); this is a full model")
    if what == "model" and is_lora:
        raise PublishError(f"{run}: a LoRA run; push the adapter (--what adapter) or the merged model (--what merged)")
    return what


def _check_size(size: str) -> None:
    from huggingface_hub.serialization._base import parse_size_to_int

    try:
        parse_size_to_int(size) if isinstance(size, str) else int(size)
    except ValueError:
        raise PublishError(f"--max-shard-size {size}: write a size such as 5GB or 500MB") from None


def _place(src: Path, dst: Path) -> None:
    """Weights are hard-linked when the file system allows it (a 14 GB file costs neither the time nor the space of
    a copy); every other file is copied, so that editing a dry-run folder's text files never edits the run."""
    if not src.is_file():
        raise PublishError(f"{src}: missing")
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        if src.suffix != ".safetensors":
            raise OSError("copied")
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def redact(value):
    """A recipe (or part of one) with every credential-like field that is set replaced by <redacted>."""
    if isinstance(value, dict):
        return {k: "<redacted>" if SECRET_KEY.search(str(k)) and isinstance(v, str) and v else redact(v)
                for k, v in value.items()}
    return [redact(v) for v in value] if isinstance(value, list) else value


def _redact_records(run: Path, out: Path) -> None:
    """Rewrite recipe.yaml / run.json in the folder only when they hold a credential (otherwise they stay the
    run's bytes), in the same format the stage wrote them."""
    import yaml

    if (out / "recipe.yaml").is_file():
        recipe = yaml.safe_load((out / "recipe.yaml").read_text(encoding="utf-8"))
        if redact(recipe) != recipe:
            (out / "recipe.yaml").write_text(yaml.safe_dump(redact(recipe), sort_keys=False), encoding="utf-8")
    if (out / "run.json").is_file():
        record = json.loads((out / "run.json").read_text(encoding="utf-8"))
        command = SECRET_ARG.sub(r"\1<redacted>", record.get("command") or "")
        if command != (record.get("command") or ""):
            record["command"] = command
            (out / "run.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _place_weights(run: Path, out: Path, max_shard_size: str) -> None:
    """Keep a run's shards as they are; split a single file larger than `max_shard_size` (safetensors only: the Hub
    and `from_pretrained` prefer it, and pickled .bin weights are not published)."""
    if (run / INDEX).is_file():
        index = json.loads((run / INDEX).read_text(encoding="utf-8"))
        for name in sorted(set(index["weight_map"].values())) + [INDEX]:
            _place(run / name, out / name)
        return
    single = run / "model.safetensors"
    if not single.is_file():
        raise PublishError(f"{run}: no model.safetensors or {INDEX}; is this a run folder written by `adapt sft|dpo`?")
    _reshard(single, out, max_shard_size)


def _reshard(single: Path, out: Path, max_shard_size: str) -> None:
    from huggingface_hub import split_state_dict_into_shards_factory
    from safetensors import safe_open
    from safetensors.torch import save_file

    sizes = {name: t["data_offsets"][1] - t["data_offsets"][0] for name, t in tensor_headers(single).items()}
    split = split_state_dict_into_shards_factory(sizes, get_storage_size=lambda n: n, max_shard_size=max_shard_size,
                                                 filename_pattern="model{suffix}.safetensors")
    if not split.is_sharded:
        _place(single, out / single.name)
        return
    with safe_open(str(single), framework="pt") as f:  # one shard in memory at a time
        metadata = f.metadata() or {"format": "pt"}
        for filename, names in split.filename_to_tensors.items():
            save_file({name: f.get_tensor(name) for name in names}, str(out / filename), metadata=metadata)
    follow_umask(out)  # the new shards only: nothing else is in `out` yet (a placed file is the run's own, linked)
    index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
    (out / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _merge_lora(run: Path, out: Path, max_shard_size: str) -> None:
    """PEFT's merge_and_unload on the base named in adapter_config.json, proven against base + adapter
    (adapt.model.lora.merge_proven), saved in the plain transformers layout."""
    from adapt.model.lora import LoraSetupError, load_merged_adapter  # imports torch: keep `adapt push --help` light

    base = json.loads((run / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise PublishError(f"{run}/adapter_config.json: no base_model_name_or_path, so there is nothing to merge into")
    try:
        merged = load_merged_adapter(str(run), "auto")
    except LoraSetupError as e:
        raise PublishError(str(e)) from None
    merged.save_pretrained(str(out), max_shard_size=max_shard_size)
    follow_umask(out)  # safetensors writes its files 0600; `out` holds only the merged model's files yet
    if any((run / name).is_file() for name in TOKENIZER_FILES):
        return  # the run's own tokenizer is placed with the other files
    if Path(base).is_dir():  # a local base: its tokenizer files if it has them (from_pretrained would invent one)
        for name in TOKENIZER_FILES:
            if (Path(base) / name).is_file():
                _place(Path(base) / name, out / name)
    else:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(base).save_pretrained(str(out))


def _has_remote_code(out: Path) -> bool:
    config = out / "config.json"
    return config.is_file() and "auto_map" in json.loads(config.read_text(encoding="utf-8"))
