"""`adapt eval`, `adapt eval score` and `adapt report`: each a parser (light: `--help` loads nothing) and a run
function, named in the command table of adapt/cli.py."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from adapt.config.benchmarks import BENCHMARKS
from adapt.runfolder import local_model_problem, unusable_reason
from adapt_eval.report import load_results, write_comparison
from adapt_eval.rescore import score_file
from adapt_eval.sandbox import UNSAFE_ENV, require_isolation
from adapt_eval.suite import evaluate, load_suite, model_fingerprint


def _suite_options(p: argparse.ArgumentParser, set_example: str) -> None:
    """What `adapt eval` and `adapt eval score` share: the suite, its local data, its settings, the code sandbox."""
    p.add_argument("--suite", default="olmoe-paper", help="a shipped suite name or a suite YAML (default olmoe-paper)")
    p.add_argument("--data-dir", help="local benchmark data (the public releases' layout); default: the Hub")
    p.add_argument("--set", action="append", default=[], metavar="TASK.KEY=VALUE",
                   help=f"change a suite setting (repeatable), e.g. {set_example} or alpaca_eval.judge='{{endpoint: "
                        f"https://host/v1, model: m, api_key_env: OPENAI_API_KEY}}'")
    p.add_argument("--unsafe-sandbox", action="store_true",
                   help="run code tasks (HumanEval, MBPP) without bubblewrap, under the Python-level guard only: it "
                        "does not stop reading files, C-level writes or escaping processes "
                        "(eval/adapt_eval/sandbox.py)")


def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adapt eval", description="Score a model on a benchmark suite.",
                                epilog="`adapt eval score --task T --predictions FILE` re-scores stored completions.")
    p.add_argument("--model", required=True, help="a model folder (e.g. runs/demo/sft) or a Hub id")
    _suite_options(p, "gsm8k.num_fewshot=5")
    p.add_argument("--tasks", help="comma-separated subset of the suite's tasks")
    p.add_argument("--limit", type=int, help="at most N items per benchmark (per subject/subtask for MMLU, BBH)")
    p.add_argument("--output", help="results folder (default: <model>/eval/<suite>); an interrupted run resumes")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--max-length", type=int, help="context length for prompts (default: the model's)")
    p.add_argument("--overwrite", action="store_true", help="replace results of a different model in --output")
    return p


def _output_dir(args) -> Path:
    if args.output:
        return Path(args.output)
    if not Path(args.model).is_dir():
        sys.exit("error: --output: needed when --model is a Hub id (results are written beside a local model)")
    return Path(args.model) / "eval" / Path(args.suite).stem


def _check_output(out: Path, model: str, overwrite: bool) -> None:
    """Resume only the same model's run; never mix two models' results in one folder."""
    previous = out / "results.json"
    if previous.is_file() and json.loads(previous.read_text())["model"] != model_fingerprint(model):
        if not overwrite:
            sys.exit(f"error: {out} holds results of another model; choose another --output or pass --overwrite")
        import shutil

        shutil.rmtree(out)


def check_output_folder(flag: str, out: Path) -> None:
    """An output folder argument that names an existing file (or sits under one) is refused before any work."""
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ValueError(f"{flag} {out}: {existing} is a file; give a folder path")


def check_output_file(flag: str, path: Path) -> None:
    """An output file argument that names a folder, or a path under a file, is refused before any work."""
    if path.is_dir():
        raise ValueError(f"{flag} {path}: is a folder; give a file path (e.g. {path / 'items.jsonl'})")
    check_output_folder(flag, path.parent)


def check_model_input(flag: str, ref: str) -> None:
    """A model named on the command line: a local folder that exists, is not an incomplete run, and holds weights that
    are what they claim and finite (adapt.runfolder.unusable_reason); a Hub id is left to the Hub."""
    problem = local_model_problem(ref)
    if problem is None and Path(os.path.expanduser(ref)).is_dir():
        problem = unusable_reason(os.path.expanduser(ref))
    if problem:
        raise ValueError(f"{flag}{'' if flag.endswith('=') else ' '}{ref}: {problem}")


def run_eval(argv) -> None:
    args = eval_parser().parse_args(argv)
    if args.unsafe_sandbox:
        os.environ[UNSAFE_ENV] = "1"

    try:
        suite = load_suite(args.suite, args.set)
        tasks = args.tasks.split(",") if args.tasks else None
        if args.data_dir and not Path(args.data_dir).is_dir():
            raise ValueError(f"--data-dir {args.data_dir}: not a folder")
        code = [n for n, t in suite.tasks.items()
                if t.get("benchmark") in BENCHMARKS and BENCHMARKS[t["benchmark"]].code and (not tasks or n in tasks)]
        if code:  # before the model generates anything: no sandbox, no code tasks (unless --unsafe-sandbox)
            require_isolation()
        check_model_input("--model", args.model)
        out = _output_dir(args)
        check_output_folder("--output", out)
        _check_output(out, args.model, args.overwrite)
        results = evaluate(args.model, suite, tasks, args.limit, args.data_dir, out, args.batch_size, args.device,
                           args.max_length)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    width = max(len(t) for t in results["headline"])
    for task, h in results["headline"].items():
        value = "n/a" if h["value"] is None else f"{100 * h['value']:.1f}"
        print(f"{task:<{width}}  {h['metric']:<24} {value}")
    print(f"results: {out / 'results.json'}  samples: {out / 'samples.jsonl'}")


def score_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adapt eval score", description="Score stored completions without a model. "
                                "stdout is exactly the metrics as JSON; progress and notes go to stderr.")
    p.add_argument("--task", required=True, help="a task of the suite, e.g. gsm8k")
    p.add_argument("--predictions", required=True, help="JSONL in the samples.jsonl format (eval/README.md)")
    _suite_options(p, "humaneval.num_samples=1 (one stored completion per problem)")
    p.add_argument("--per-item", metavar="FILE", help="write each scored item's verdict and metrics here (JSONL)")
    p.add_argument("--allow-prompt-mismatch", action="store_true",
                   help="score rows whose stored `prompt` is not their item's (counted in the output as "
                        "prompt_mismatches) instead of failing")
    return p


def run_score(argv) -> None:
    args = score_parser().parse_args(argv)
    if args.unsafe_sandbox:
        os.environ[UNSAFE_ENV] = "1"
    try:
        if args.per_item:
            check_output_file("--per-item", Path(args.per_item))
        if Path(args.predictions).is_dir():
            raise ValueError(f"--predictions {args.predictions}: is a folder; give its samples.jsonl file")
        result = score_file(args.task, args.predictions, args.suite, args.data_dir, settings=args.set,
                            per_item=args.per_item, allow_prompt_mismatch=args.allow_prompt_mismatch)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    if result.prompt_mismatches:
        print(f"warning: {len(result.prompt_mismatches)} of {result.prompts_checked} stored prompts are not their "
              f"items' (first on line {result.prompt_mismatches[0]}); scored anyway (--allow-prompt-mismatch)",
              file=sys.stderr)
    where = f"; per item: {args.per_item}" if args.per_item else ""
    print(f"{args.task}: scored {len(result.items)} items from {args.predictions}{where}", file=sys.stderr)
    print(json.dumps(result.metrics, indent=2, sort_keys=True))


def report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adapt report", description="Compare evaluation results (e.g. base, SFT, DPO) "
                                "beside the paper's rows: markdown, a self-contained HTML page and PNG charts.")
    p.add_argument("results", nargs="+", help="results.json files (or folders holding one), in order")
    p.add_argument("--names", help="comma-separated run names (default: the model folder names)")
    p.add_argument("--output", default="report", help="folder for report.md, report.html, report.json and PNGs")
    p.add_argument("--suite", default="olmoe-paper", help="the suite whose paper rows are shown")
    p.add_argument("--analysis", help="an `adapt analyze` output folder: adds \"What adaptation did to the router\"")
    return p


def run_report(argv) -> None:
    args = report_parser().parse_args(argv)
    try:
        runs = load_results(args.results, args.names.split(",") if args.names else None)
        paths = write_comparison(runs, args.output, args.suite, args.analysis)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    for path in paths:
        print(path)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def analyze_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adapt analyze", description="What adaptation did to the router: each model's "
                                "routing on the same tokens (load, dead experts, co-activation, domain and vocabulary "
                                "specialization) and the router saturation between them "
                                "(eval/adapt_eval/routing/metrics.py). "
                                "Several processes: accelerate launch -m adapt.cli analyze ...")
    p.add_argument("--models", nargs="+", default=[], metavar="NAME=PATH", help="e.g. base=runs/demo/base "
                   "sft=runs/demo/sft dpo=runs/demo/dpo (in order: saturation is taken between neighbours); model "
                   "folders, Hub ids or LoRA adapter folders")
    p.add_argument("--data", nargs="+", default=[], metavar="DOMAIN=SPEC",
                   help="domain samples: task:NAME (a built-in task), benchmark:TASK (an evaluation benchmark's "
                   "prompts), suite:NAME (each benchmark of a suite), recipe:PATH (each source of a recipe's mixture) "
                   "or a JSONL file of prompts; default: the training data of the first model that is a run folder "
                   "(recipe:RUN/recipe.yaml)")
    p.add_argument("--run", help="a training run folder: draw its experts' load over the steps (router_stats.jsonl)")
    p.add_argument("--texts", type=_positive, default=64, help="texts per domain (default 64)")
    p.add_argument("--max-length", type=_positive, default=512, help="tokens per text at most (default 512)")
    p.add_argument("--tokens", type=_positive, help="tokens per domain at most (its texts in order, the last one cut)")
    p.add_argument("--batch-size", type=_positive, default=8)
    p.add_argument("--data-dir", help="local benchmark files for benchmark:/suite: (as adapt eval --data-dir)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="auto: bfloat16 on GPU, float32 on CPU")
    p.add_argument("--device-map", help="auto: spread a model too large for one device (accelerate), one process")
    p.add_argument("--output", required=True, help="folder for analysis.json and the pictures")
    return p


def default_data(models: list[str]) -> tuple[str, Path] | None:
    """`--data` when it is not given: the training data of the first model that is a run folder with a recipe
    (its `recipe.yaml`'s `data.sources`, read as `recipe:PATH`), as (DOMAIN=SPEC, that recipe); None when no model
    is one."""
    for item in models:
        _, _, ref = item.partition("=")
        recipe = Path(os.path.expanduser(ref)) / "recipe.yaml" if ref else None
        if recipe is not None and recipe.is_file():
            return f"train=recipe:{recipe}", recipe
    return None


def run_analyze(argv) -> None:
    args = analyze_parser().parse_args(argv)
    if args.models and not args.data and (found := default_data(args.models)):
        args.data = [found[0]]
        print(f"note: --data not given: using the training data (data.sources) from {found[1]}", file=sys.stderr)
    if bool(args.models) != bool(args.data) or not (args.models or args.run):
        sys.exit("error: adapt analyze: give --models with --data (models on the same tokens; without --data, one "
                 "model must be a run folder whose recipe.yaml names its training data), or --run RUN_DIR, or both")
    out = Path(args.output)
    try:
        check_output_folder("--output", out)
        for item in args.models:
            name, _, ref = item.partition("=")
            if ref:
                check_model_input(f"--models {name}=", ref)
    except ValueError as e:
        sys.exit(f"error: {e}")
    if args.run:
        from adapt_eval.routing.plots import plot_training_load  # imports torch: keep `adapt analyze --help` light

        try:
            print(f"picture: {plot_training_load(Path(args.run), out)}")
        except (FileNotFoundError, KeyError, IndexError, ValueError) as e:
            sys.exit(f"error: {e}")
    if not args.models:
        return
    pairs = {}
    for flag, items in (("--models", args.models), ("--data", args.data)):
        for item in items:
            name, sep, value = item.partition("=")
            if not sep or not name or not value:
                sys.exit(f"error: {flag} {item}: expected NAME=VALUE")
            if name in pairs.setdefault(flag, {}):
                sys.exit(f"error: {flag}: {name} is named twice; give each a different name")
            pairs[flag][name] = value
    from adapt_eval.routing.run import analyze  # imports torch: keep `adapt analyze --help` light

    try:
        result = analyze(pairs["--models"], pairs["--data"], args.texts, args.batch_size, args.max_length,
                         args.data_dir, args.dtype, args.device_map, tokens_per_domain=args.tokens)
    except (ValueError, OSError, KeyError) as e:
        sys.exit(f"error: {' '.join(str(e).split())}")
    from adapt_eval.routing.run import analysis_state  # imports torch: keep `adapt analyze --help` light

    if not analysis_state().is_main_process:
        return
    from adapt_eval.routing.report import write_analysis  # imports torch: keep `adapt analyze --help` light

    for path in write_analysis(result, out)[1:]:
        print(f"picture: {path}")
    for pair, layers in result["saturation"].items():
        print(f"saturation {pair}: " + "  ".join(f"layer {n}: {v:.3f}" for n, v in layers.items()))
    print(f"analysis: {out / 'analysis.json'}")
