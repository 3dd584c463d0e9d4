"""The model card (README.md) of a published run: Hub metadata in the YAML front matter (base_model, datasets, tags,
license, model-index with the evaluation scores) through huggingface_hub's ModelCardData/EvalResult, and a body that
carries the recipe, the data taken from each source, the router losses, training curves, the evaluation beside the
paper's rows, hardware and wall time, and the command that reproduces the run.

The front matter also holds `adapt.fingerprint` (a hash of the run's weights): the push compares it with the card
already on the Hub to tell "the same model again" from "a different model over this repository".
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from adapt.config.benchmarks import BENCHMARKS
from adapt.config.families import family
from adapt.hub import sections
from adapt.hub.curves import plot_curves, read_metrics, series
from adapt.hub.weights import count_parameters
from adapt_eval.report import comparison, load_results, render_charts, render_markdown

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
NO_EVAL = ("No evaluation was run on this model: the run folder holds no `eval/<suite>/results.json`. Scores appear "
           "here, beside the OLMoE paper's, after `adapt eval --model {run}` and a new `adapt push`.")
NO_ANALYSIS = ("No router analysis was run on this model: the run folder holds no `analysis/analysis.json`. "
               "`adapt analyze --models base=BASE this={run} --data DOMAIN=SPEC --output {run}/analysis` and a new "
               "`adapt push` add it here: how many expert choices adaptation kept, dead experts, specialization.")


def _read(path: Path):
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    return yaml.safe_load(text) if path.suffix == ".yaml" else json.loads(text)


def _local(ref: str | None, run: Path) -> Path | None:
    """A model reference that names a folder, read as the stage read it (from its working directory) or, for a run
    moved with its siblings (runs/x/{sft,dpo}), next to the run."""
    if not ref:
        return None
    for candidate in (Path(ref), run.parent / Path(ref).name):
        if candidate.is_dir() and (candidate / "config.json").is_file():
            return candidate.resolve()
    return None


def lineage(run: Path) -> tuple[list[Path], str | None]:
    """The earlier run folders this one was trained from (oldest first), and the Hub model at the root of the chain
    (None when the chain starts from a randomly initialised `model.config`, or from a folder that is not here)."""
    chain, seen, folder = [], {run.resolve()}, run
    while True:
        recipe = _read(folder / "recipe.yaml") or {}
        adapter = _read(folder / "adapter_config.json") or {}
        ref = (recipe.get("model") or {}).get("name_or_path") or adapter.get("base_model_name_or_path")
        parent = _local(ref, folder)
        if parent is None or parent in seen:
            is_hub = bool(ref) and parent is None and HUB_ID.match(ref) and not ref.startswith(".")
            return chain, ref if is_hub else None
        chain.insert(0, parent)
        seen.add(parent)
        folder = parent


def write_card(run: Path, out: Path, *, repo_id: str, what: str, fingerprint: str, license: str | None) -> Path:
    from huggingface_hub import ModelCardData

    # The run's records as placed in the folder (credentials redacted there), the lineage from the run itself.
    recipe, record = _read(out / "recipe.yaml") or {}, _read(out / "run.json") or {}
    config = _read(out / "config.json") or _read(run / "adapter_config.json") or {}
    chain, base = lineage(run)
    name = repo_id.split("/")[-1]
    figures = {k: str(p.relative_to(out)) for k, p in plot_curves(out / "metrics.jsonl", out / "assets").items()}
    eval_text, eval_results = evaluation(run, chain, name, fingerprint, out)
    stage = recipe.get("stage") or record.get("stage")
    data = ModelCardData(
        base_model=base, datasets=hub_datasets([run] + chain) or None, license=license,
        library_name="peft" if what == "adapter" else "transformers", pipeline_tag="text-generation",
        tags=[t for t in ("adapt", config.get("model_type"), "moe" if moe_facts(config) else None, stage,
                          "trl", "lora" if what != "model" else None) if t],
        model_name=name if eval_results else None, eval_results=eval_results or None,
        adapt={"fingerprint": fingerprint, "stage": stage, "run": run.name, "what": what})
    rows = read_metrics(out / "metrics.jsonl")
    last = {k: series(rows, k)[-1][1] for k in ("loss", "aux_loss", "z_loss") if series(rows, k)}
    earlier = [((_read(p / "recipe.yaml") or {}).get("stage") or p.name, _read(p / "data_summary.json")) for p in chain]
    body = "\n".join([
        overview(run, name, repo_id, stage, what, base, chain, config, out),
        sections.data_section(_read(out / "data_summary.json"), recipe, earlier),
        sections.training_section(recipe, record),
        sections.experts_section(_read(out / "experts.json")),
        sections.curves_section(figures, last),
        "## Evaluation\n\n" + eval_text + "\n",
        router_section(run, out, fingerprint) if moe_facts(config) else "",
        sections.hardware_section(record),
        sections.reproduce_section(repo_id, recipe, record),
        sections.license_section(license)])
    path = out / "README.md"
    path.write_text(f"---\n{data.to_yaml()}\n---\n\n{body}", encoding="utf-8")
    return path


def router_section(run: Path, out: Path, fingerprint: str) -> str:
    """"What adaptation did to the router", from the run's `analysis/analysis.json` (`adapt analyze --output
    RUN/analysis`), with its pictures and the analysis itself under assets/router/; only when the analysis ran on
    these very weights."""
    import shutil

    from adapt_eval.routing import report as routing_report  # imports torch: keep `adapt push --help` light

    folder = run / "analysis"
    heading = f"## {routing_report.TITLE}\n\n"
    if not (folder / "analysis.json").is_file():
        return heading + NO_ANALYSIS.format(run=run) + "\n"
    result = routing_report.read_analysis(folder)
    analysed = [(m.get("fingerprint") or {}).get("sha256") for m in result["per_model"].values()]
    if fingerprint not in analysed:
        return heading + ("The run folder holds a router analysis of other weights than the ones published here (the "
                          "run changed after it); it is left out. Run `adapt analyze` again.\n")
    pictures = routing_report.copy_pictures(folder, result, out / "assets" / "router")
    shutil.copy2(folder / "analysis.json", out / "assets" / "router" / "analysis.json")
    return routing_report.router_section(result, [str(p.relative_to(out)) for p in pictures]) + \
        "\nEvery number: `assets/router/analysis.json`.\n"


def hub_datasets(folders: list[Path]) -> list[str]:
    names = []
    for folder in folders:
        for src in ((_read(folder / "recipe.yaml") or {}).get("data") or {}).get("sources", []):
            if src.get("hub") and src["hub"] not in names:
                names.append(src["hub"])
    return names


def _origin(run: Path, chain: list[Path], base: str | None) -> tuple[str, list[Path]]:
    """Where the lineage starts, in words, and the run folders to show after it."""
    if base:
        return f"[{base}](https://huggingface.co/{base})", chain
    oldest = chain[0] if chain else run
    is_run = (oldest / "recipe.yaml").is_file() or (oldest / "adapter_config.json").is_file()
    if chain and not is_run:  # a plain model folder (save_pretrained), not a run: it is the origin
        return f"the local model folder `{oldest.name}`", chain[1:]
    model = (_read(oldest / "recipe.yaml") or {}).get("model") or {}
    if model.get("config") and not model.get("name_or_path"):
        return "a randomly initialised model (`model.config`)", chain
    return "a model that is not recorded or not available here", chain


def moe_facts(config: dict) -> tuple[int, int] | None:
    """(routed experts, experts per token) of a saved config.json, read where its family keeps them."""
    f = family(config.get("model_type"))
    if f is None:
        return None
    from transformers import AutoConfig  # resolves the family's aliases (num_experts <-> num_local_experts, ...)

    loaded = AutoConfig.for_model(**config)
    return getattr(loaded, f.experts_attr), getattr(loaded, f.top_k_attr)


def overview(run, name, repo_id, stage, what, base, chain, config, out) -> str:
    origin, shown = _origin(run, chain, base)
    steps = " → ".join([origin] + [f"`{p.name}`" for p in shown] + [f"**{stage or 'this run'}**"])
    lines = [f"# {name}", "", f"{(stage or 'fine-tuned').upper()} model trained from {origin}.", "",
             f"Lineage: {steps}.", ""]
    experts = moe_facts(config)
    if experts:
        lines.append(f"Architecture: `{config.get('model_type')}` mixture of experts, "
                     f"{config.get('num_hidden_layers')} layers, {experts[0]} experts with {experts[1]} active per "
                     f"token, hidden size {config.get('hidden_size')}, {count_parameters(out):,} parameters.")
    if what == "adapter":
        lines.append(f"This repository holds a LoRA adapter (r={config.get('r')}, alpha={config.get('lora_alpha')}) "
                     f"for `{config.get('base_model_name_or_path')}`; `peft` loads it on its base.")
    elif what == "merged":
        lines.append("This repository holds the run's LoRA adapter merged into its base model (PEFT merge_and_unload).")
    loader = "from peft import AutoPeftModelForCausalLM as Model" if what == "adapter" else \
        "from transformers import AutoModelForCausalLM as Model"
    lines += ["", "```python", loader, "from transformers import AutoTokenizer", "",
              f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
              f'model = Model.from_pretrained("{repo_id}")',
              'messages = [{"role": "user", "content": "Hello!"}]',
              'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",',
              '                                       return_dict=True)',
              'output = model.generate(**inputs, max_new_tokens=256)',
              'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))', "```"]
    return "\n".join(lines) + "\n"


def evaluation(run: Path, chain: list[Path], name: str, fingerprint: str, out: Path) -> tuple[str, list]:
    """The comparison tables (adapt_eval.report: earlier stages, this model, the paper's rows) in markdown, and the
    EvalResults for model-index. Only scores computed on these very weights go into the metadata."""
    own = sorted(run.glob("eval/*/results.json"))
    if not own:
        return NO_EVAL.format(run=run), []
    parts, results = [], []
    for path in own:
        suite_dir = path.parent.name
        earlier = [p for p in chain if (p / "eval" / suite_dir / "results.json").is_file()]
        runs = load_results([str(p / "eval" / suite_dir) for p in earlier] + [str(path.parent)],
                            [p.name for p in earlier] + [name])
        this = runs[-1].results
        comp = _comparison(runs, this.get("suite") or suite_dir)
        (out / "assets" / f"eval-{suite_dir}").mkdir(parents=True, exist_ok=True)
        chart = render_charts(comp, out / "assets" / f"eval-{suite_dir}")[0]
        parts += [f"### Suite `{comp['suite']}`", "", render_markdown(comp),
                  f"![{comp['suite']} scores]({chart.relative_to(out)})", ""]
        evaluated = (this.get("model") or {}).get("sha256")
        if evaluated and evaluated != fingerprint:
            parts += ["**These scores were computed on other weights than the ones published here** (the run "
                      "changed after its evaluation); they are left out of the metadata.", ""]
            continue
        results += eval_results(runs[-1], comp)
    return "\n".join(parts), results


def _comparison(runs: list, suite: str) -> dict:
    try:
        return comparison(runs, suite)
    except ValueError:  # a suite file that is not here any more: the tasks as run, without the paper's rows
        headline = runs[-1].results["headline"]
        def cells(r):
            return {t: dict(zip(("value", "stderr"), r.headline(t))) for t in headline}
        return {"suite": suite, "tasks": list(headline), "metrics": {t: h["metric"] for t, h in headline.items()},
                "runs": [{"name": r.name, "limit": r.results.get("limit"), "cells": cells(r)} for r in runs],
                "paper": []}


def _hub_dataset(task: str) -> str:
    """The Hub dataset a suite task's score is on, for model-index: the benchmark table's, which decontamination
    reads too; a task of another name is named as it is."""
    return BENCHMARKS[task].hub_dataset if task in BENCHMARKS else task


def eval_results(run, comp: dict) -> list:
    from huggingface_hub import EvalResult

    limit = run.results.get("limit")
    found = []
    for task in comp["tasks"]:
        value, _ = run.headline(task)
        if value is None:
            continue
        metric = comp["metrics"][task]
        found.append(EvalResult(
            task_type="text-generation", dataset_type=_hub_dataset(task), dataset_name=task,
            metric_type=metric, metric_value=round(value, 2),
            metric_name=f"{metric} (%, adapt eval suite {comp['suite']}"
                        + (f", first {limit} items per benchmark)" if limit else ")")))
    return found
