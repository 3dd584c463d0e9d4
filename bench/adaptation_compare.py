"""Full SFT, LoRA and ESFT on the offline demo, from one run: each variant trains SFT then DPO exactly as `adapt demo`
does (recipes/demo/sft.yaml and dpo.yaml, the same random-init base, adapt/stages/demo.py's own functions), with only
the variant's recipe overrides on top.

    python bench/adaptation_compare.py                                    # the demo's size: some minutes on 2 cores
    python bench/adaptation_compare.py --variants full,esft-p0.2 --rows 64 --epochs 1 --json out.json

Per variant: the held-out task accuracy after SFT and the preference accuracy after DPO (`adapt_eval.task_eval`, the
demo report's task_accuracy / preference_accuracy), the parameters the SFT optimizer updates, its AdamW state after
training (counted from the optimizer: the bytes of its per-parameter tensors, i.e. the two fp32 moments), and the SFT
and DPO wall times. Then the router's health after each SFT on the task's prompts (`adapt_eval.routing.run.analyze`,
the analysis `adapt demo` and `adapt analyze` run): per MoE layer the fraction of experts no token chose, the load
entropy over experts divided by log E (1.0: even), and the busiest expert's share of the tokens (1.0: every token
chose it).

The base is a random init, so "the experts the task uses" are those a random router happens to send it to: ESFT
freezes attention, embeddings and the LM head of a model that has learnt nothing yet. `esft-p0.2+dense` (attention,
embeddings and lm_head trainable too, `experts.train`) separates that from the expert selection itself.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import finish, record  # noqa: E402 (bench/report.py, after the path line above)

LORA = ["peft.method=lora", "peft.r=8", "peft.alpha=16", "peft.targets=[attention, experts, router]"]


def esft(threshold: float, train: str = "[]") -> list[str]:
    return ["experts.select=token_ratio", f"experts.threshold={threshold}", f"experts.train={train}"]


# name -> (SFT overrides, DPO overrides); LoRA's SFT loads the saved base (a LoRA run needs a base it can reload).
VARIANTS = {
    "full": ([], []),
    "lora-r8": (["model.config=null", "model.tokenizer=null", "model.name_or_path={base}", *LORA], LORA),
    "esft-p0.2": (esft(0.2), esft(0.2)),
    "esft-p0.5": (esft(0.5), esft(0.5)),
    "esft-p0.2+dense": (esft(0.2, "[attention, embeddings, lm_head]"), esft(0.2, "[attention, embeddings, lm_head]")),
}


def optimizer_numbers(trainer) -> dict:
    """What the trainer's optimizer updates: parameters, and its state's bytes (tensors with a dimension: the two
    AdamW moments, not the step counters)."""
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate's wrapper
    params = {id(p): p for group in optimizer.param_groups for p in group["params"]}
    state = sum(t.nbytes for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim())
    return {"trainable": sum(p.numel() for p in params.values()), "optimizer_bytes": state}


def experts_trained(folder: Path, layers: int, experts: int) -> int:
    """Routed experts trained, over all MoE layers: the ESFT selection of `experts.json`, else all of them."""
    import json

    from adapt.stages.experts import RECORD

    path = folder / RECORD
    if not path.is_file():
        return layers * experts
    return sum(len(entry["selected"]) for entry in json.loads(path.read_text(encoding="utf-8"))["layers"].values())


def run_variant(name: str, args, out: Path, task) -> dict:
    from adapt.stages.demo import sft_then_dpo, stage_configs

    sft_extra, dpo_extra = VARIANTS[name]
    sft_extra = [o.replace("{base}", str(out / "base")) for o in sft_extra] + args.sft_overrides
    folder = out / name
    sft_config, dpo_overrides = stage_configs(args.sft, args.dpo, folder, sft_extra, dpo_extra + args.dpo_overrides)
    scores, timings, trainers = sft_then_dpo(sft_config, args.dpo, dpo_overrides, folder, task, args.eval_items)
    row = {"variant": name, "task_accuracy": scores["sft"]["task_accuracy"],
           "preference_accuracy": scores["dpo"]["preference_accuracy"],
           "task_accuracy_after_dpo": scores["dpo"]["task_accuracy"], **optimizer_numbers(trainers["sft"]),
           "dpo_trainable": optimizer_numbers(trainers["dpo"])["trainable"], **timings}
    del trainers
    return row


def router_health(out: Path, names: list[str]) -> list[dict]:
    from adapt_eval.routing.run import analyze

    models = {"base": str(out / "base"), **{name: str(out / name / "sft") for name in names}}
    result = analyze(models, {"reverse": "task:reverse"}, texts_per_domain=64, log=lambda line: None)
    rows = []
    for name, model in result["per_model"].items():
        for layer, entry in sorted(model["layers"].items(), key=lambda kv: int(kv[0])):
            load = entry["load"]
            rows.append({"variant": "base (random init)" if name == "base" else name, "layer": int(layer),
                         "dead_fraction": len(entry["dead_experts"]) / len(load),
                         "load_entropy": entry["load_entropy"], "top_share": max(load) / max(model["tokens"], 1),
                         "tokens": model["tokens"]})
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--rows", type=int, help="SFT rows (default: the demo recipe's, 4000)")
    p.add_argument("--dpo-rows", type=int, help="DPO rows (default: the demo recipe's, 1000)")
    p.add_argument("--epochs", type=float, help="SFT epochs (default: the demo recipe's, 4)")
    p.add_argument("--eval-items", type=int, default=200, help="held-out items and preference pairs (the demo's)")
    p.add_argument("--sft", default="recipes/demo/sft.yaml")
    p.add_argument("--dpo", default="recipes/demo/dpo.yaml")
    p.add_argument("--output", default="runs/adaptation-compare", help="folder for every variant's models (replaced)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        sys.exit(f"error: unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    args.sft_overrides = ([f"data.sources.0.rows={args.rows}"] if args.rows else []) + (
        [f"training.num_train_epochs={args.epochs}"] if args.epochs else [])
    args.dpo_overrides = [f"data.sources.0.rows={args.dpo_rows}"] if args.dpo_rows else []

    import transformers
    import trl

    from adapt.stages.demo import save_base, stage_configs
    from adapt.tasks import get_task

    out = Path(args.output)
    if out.exists():
        shutil.rmtree(out)
    started = time.time()
    task = get_task("reverse")
    base_config, _ = stage_configs(args.sft, args.dpo, out / "base-recipe", args.sft_overrides)
    save_base(base_config, out)  # the random init every variant starts from (LoRA loads it; the others rebuild it)
    rows = [run_variant(name, args, out, task) for name in names]
    model = base_config.model.config
    layers, experts = model["num_hidden_layers"], model["num_experts"]
    full = next((r for r in rows if r["variant"] == "full"), None)
    for r in rows:
        r["experts_trained"] = experts_trained(out / r["variant"] / "sft", layers, experts)
        r["experts_total"] = layers * experts
        r["experts"] = f"{r['experts_trained']}/{r['experts_total']}"
        r["trainable_vs_full"] = r["trainable"] / full["trainable"] if full else None
    health = router_health(out, names)

    header = record(device=platform.processor() or platform.machine(), cpus=torch.get_num_threads(),
                    dtype="float32", recipes={"sft": args.sft, "dpo": args.dpo},
                    overrides={"sft": args.sft_overrides, "dpo": args.dpo_overrides}, eval_items=args.eval_items,
                    variants={n: {"sft": VARIANTS[n][0], "dpo": VARIANTS[n][1]} for n in names},
                    optimizer_bytes="counted from the SFT optimizer's state after training",
                    wall_s=round(time.time() - started, 1),
                    versions={"torch": torch.__version__, "transformers": transformers.__version__,
                              "trl": trl.__version__})
    finish(header, rows, [("variant", "variant", ""), ("task_accuracy", "task acc (SFT)", ".3f"),
                          ("preference_accuracy", "pref acc (DPO)", ".3f"), ("experts", "experts trained", ""),
                          ("trainable", "trainable params", ",d"), ("trainable_vs_full", "vs full", ".4f"),
                          ("optimizer_bytes", "AdamW state bytes", ",d"), ("sft_s", "SFT s", ".1f"),
                          ("dpo_s", "DPO s", ".1f")], None)
    finish({"router_health": "after SFT, on 64 of the task's prompts"}, health,
           [("variant", "variant", ""), ("layer", "layer", "d"), ("dead_fraction", "dead experts", ".3f"),
            ("load_entropy", "load entropy", ".3f"), ("top_share", "top expert share", ".3f")], None)
    result = {**header, "results": rows, "router_health": health}
    if args.json:
        import json

        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
