"""The offline demo: base -> SFT -> DPO on a tiny OLMoE-architecture model, then a report of what each stage did.

`adapt demo` (or `make demo`). Everything is built here: the tokenizer, the model (random init) and the task data;
nothing is downloaded. Both recipes are validated before any training starts.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from adapt.config import load_recipe
from adapt.runfolder import follow_umask
from adapt.tasks import get_task
from adapt_eval.demo_report import write_report

DEFAULT_SFT = "recipes/demo/sft.yaml"
DEFAULT_DPO = "recipes/demo/dpo.yaml"


def _configs(args):
    return stage_configs(args.sft, args.dpo, Path(args.output))


def stage_configs(sft_recipe: str, dpo_recipe: str, out: Path, sft_overrides=(), dpo_overrides=()):
    """The SFT config (into `out/sft`) and the DPO stage's overrides (from `out/sft` into `out/dpo`), both recipes
    validated now. `sft_overrides`/`dpo_overrides`: more `key=value` overrides on top (bench/adaptation_compare.py)."""
    sft = load_recipe(sft_recipe, [*sft_overrides, f"training.output_dir={out / 'sft'}", "overwrite=true"],
                      stage="sft")
    # The DPO stage starts from the SFT folder, which does not exist yet: validate now, check its paths later.
    dpo_overrides = [*dpo_overrides, f"model.name_or_path={out / 'sft'}", f"training.output_dir={out / 'dpo'}",
                     "overwrite=true"]
    load_recipe(dpo_recipe, dpo_overrides, stage="dpo", check_paths=False)
    return sft, dpo_overrides


def save_base(sft_config, out: Path):
    """The tokenizer and the base model, exactly the weights SFT starts from, saved in `out/base`."""
    from adapt.data.tokenizer import load_tokenizer  # imports transformers: keep `adapt demo --help` light
    from adapt.model.loading import load_model  # imports torch: keep `adapt demo --help` light

    tokenizer = load_tokenizer(sft_config.model)
    base = load_model(sft_config.model, tokenizer, seed=sft_config.seed)
    base.save_pretrained(out / "base")
    follow_umask(out / "base")  # safetensors writes its files 0600
    tokenizer.save_pretrained(out / "base")
    return base, tokenizer


def sft_then_dpo(sft_config, dpo_recipe: str, dpo_overrides: list[str], out: Path, task, eval_items: int):
    """Train SFT into `out/sft`, score it, DPO into `out/dpo`, score it: ({"sft": scores, "dpo": scores},
    {"sft_s", "dpo_s"}, {"sft": trainer, "dpo": trainer})."""
    from adapt.stages import dpo, sft  # import torch and TRL: keep `adapt demo --help` light

    stages, timings, trainers = {}, {}, {}
    t = time.time()
    trainers["sft"] = sft.run(sft_config)
    timings["sft_s"] = round(time.time() - t, 1)
    stages["sft"] = _score(out / "sft", None, task, eval_items)

    t = time.time()
    trainers["dpo"] = dpo.run(load_recipe(dpo_recipe, dpo_overrides, stage="dpo"))
    timings["dpo_s"] = round(time.time() - t, 1)
    stages["dpo"] = _score(out / "dpo", None, task, eval_items)
    return stages, timings, trainers


def _score(model_or_path, tokenizer, task, eval_items: int) -> dict:
    from transformers import AutoTokenizer

    from adapt.model.loading import load_run_model  # imports torch: keep `adapt demo --help` light
    from adapt_eval.task_eval import evaluate_task  # imports torch: keep `adapt demo --help` light

    if isinstance(model_or_path, (str, Path)):
        tokenizer = AutoTokenizer.from_pretrained(model_or_path)
        model_or_path = load_run_model(str(model_or_path)).eval()
    return evaluate_task(model_or_path, tokenizer, task, n_items=eval_items, n_pairs=eval_items)


def _analyze_router(out: Path) -> str:
    """The router analysis of the three models on the task's prompts, kept in the DPO run folder (where the model
    card finds it), and its section for the report."""
    # both import torch: keep `adapt demo --help` light
    from adapt_eval.routing.report import pictures, router_section, write_analysis
    from adapt_eval.routing.run import analyze

    models = {name: str(out / name) for name in ("base", "sft", "dpo")}
    folder = out / "dpo" / "analysis"
    result = analyze(models, {"reverse": "task:reverse"}, texts_per_domain=64, log=lambda line: None)
    write_analysis(result, folder)
    return router_section(result, [str(p.relative_to(out)) for p in pictures(result, folder)])


def run(args) -> dict:
    out = Path(args.output)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        sys.exit(f"error: {out} already holds a demo run; pass --overwrite to replace it (or choose --output)")
    sft_config, dpo_overrides = _configs(args)
    if out.exists():
        shutil.rmtree(out)

    task = get_task("reverse")
    started = time.time()
    base, tokenizer = save_base(sft_config, out)
    base_scores = _score(base, tokenizer, task, args.eval_items)
    trained, timings, _ = sft_then_dpo(sft_config, args.dpo, dpo_overrides, out, task, args.eval_items)
    stages = {"base": base_scores, **trained}

    t = time.time()
    analysis = _analyze_router(out)
    timings["analyze_s"] = round(time.time() - t, 1)

    timings["total_s"] = round(time.time() - started, 1)
    report = {"task": task.name, "stages": stages, "timings": timings,
              "recipes": {"sft": args.sft, "dpo": args.dpo}}
    _, md = write_report(report, out, title="adapt demo: base → SFT → DPO")
    with md.open("a", encoding="utf-8") as f:
        f.write("\n" + analysis)
    print(md.read_text(encoding="utf-8"))
    print(f"report: {out / 'report.md'} and {out / 'report.json'} ({timings['total_s']} s)")
    return report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adapt demo", description=__doc__.split("\n")[0])
    p.add_argument("--output", default="runs/demo", help="folder for the base/sft/dpo models and the report")
    p.add_argument("--sft", default=DEFAULT_SFT, help="SFT recipe")
    p.add_argument("--dpo", default=DEFAULT_DPO, help="DPO recipe")
    p.add_argument("--eval-items", type=int, default=200, help="held-out items and preference pairs to score")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo run in --output")
    return p


def main(argv=None):
    run(parser().parse_args(argv))


if __name__ == "__main__":
    main()
