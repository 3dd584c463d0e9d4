"""How long a user waits for a bad recipe's one-line error, and for the code sandbox to stop hostile completions:
the time promises that unit tests no longer assert (a loaded machine fails them). The tests check what the code
controls instead: no model, dataset or trainer is built before a recipe error (tests/test_recipes.py), and the
sandbox leaves no process behind (tests/test_code_eval.py).

    python bench/fail_fast.py [--repeats 3] [--json OUT.json]

Each row is the best of --repeats wall-clock runs of a fresh process, as a user would start it. Targets: a bad
recipe fails in under 10 s; a process that runs one infinite loop in the sandbox (limit 2 s) ends in under 8 s.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from report import finish, record  # noqa: E402

BAD_RECIPE = """
stage: sft
model: {config: {hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 4}, tokenizer: "builtin:demo"}
data: {sources: [{task: reverse, rows: 8}]}
training: {output_dir: %s, learnin_rate: 1.0e-3}
"""
SANDBOXED_LOOP = textwrap.dedent("""
    from adapt_eval.sandbox import run_programs
    results = run_programs(["while True:\\n    pass\\n"], workers=1, timeout_s=2)
    assert results[0].status == "timeout", results
""")


def seconds(cmd: list[str], expect_failure: bool) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    started = time.perf_counter()
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    took = time.perf_counter() - started
    if (run.returncode != 0) != expect_failure:
        sys.exit(f"unexpected exit {run.returncode}: {run.stderr[-2000:]}")
    return took


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        recipe = Path(tmp) / "bad.yaml"
        recipe.write_text(BAD_RECIPE % (Path(tmp) / "out"))
        adapt = [sys.executable, "-m", "adapt.cli"]
        cases = [
            ("adapt check, unknown key", [*adapt, "check", "--config", str(recipe)], True, 10),
            ("adapt sft, unknown key", [*adapt, "sft", "--config", str(recipe)], True, 10),
            ("sandbox, infinite loop (limit 2 s)", [sys.executable, "-c", SANDBOXED_LOOP], False, 8),
        ]
        rows = []
        for name, cmd, fails, target in cases:
            best = min(seconds(cmd, fails) for _ in range(args.repeats))
            rows.append({"case": name, "seconds": best, "target_s": target, "ok": best < target})
    import torch
    import transformers

    header = record(device=f"cpu x{os.cpu_count()}", versions={"torch": torch.__version__,
                                                                 "transformers": transformers.__version__})
    finish(header, rows, [("case", "case", ""), ("seconds", "seconds", ">8.2f"), ("target_s", "target s", ">8.0f"),
                          ("ok", "ok", "")], args.json)


if __name__ == "__main__":
    main()
