"""The data path at the published scale: a synthetic SFT mixture shaped like OLMoE's 608k-row one, built by
`adapt data` (convert, template, tokenize with masks, decontaminate against seven benchmarks, pack, write the cache)
at several sizes, with 1 and 2 processes, then built again to time the cache hit.

    python bench/data_scale.py --data DATA_DIR --tokenizer olmoe-gpt-neox-20b-pii-special.json
        [--sizes 50000,200000,608000] [--procs 1,2] [--work DIR] [--json OUT.json]

DATA_DIR is the public releases' layout that `adapt eval --data-dir` reads (the benchmarks) plus the small SFT and
preference samples the rows are drawn from (sft/, gsm8k/train.jsonl, preference/). Each row of the table is one
`adapt data` process (`training.dataset_num_proc` = procs, a cold cache folder): wall time, rows/s, peak resident
memory of its whole process tree (proportional set size, so pages shared by forked workers count once; all of it,
and the anonymous part: what the build holds, without the memory-mapped files), the cache entry's size, the build's
phase times (logged by adapt.data), and a second `adapt data` on the same cache (start-up included).

The mixture: 608,012 rows in the published proportions (paper Table 3). Row lengths in tokens are drawn per
component from a log-normal around a mean and capped at 4,096 (the Hub mixture's name says `4096`). Tulu 2's mean
comes from its dataset card (1,239,293,363 bytes for 326,154 rows, about 3,800 bytes or ~950 tokens a row); the
others are estimates, stated in COMPONENTS. The realized lengths are printed (p50/p90/p99 of the tokenized rows).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
CHARS_PER_TOKEN = 4.0  # OLMoE's BPE on English prose; code and math run a little lower

# name: (rows in the published mixture, mean tokens, share of multi-turn rows, pool)
COMPONENTS = {
    "tulu2-mix": (326_154, 950, 0.35, "general"),   # mean from the dataset card's bytes per row
    "codefeedback": (156_526, 600, 0.0, "code"),     # estimate: a query and a commented code answer
    "metamathqa": (98_750, 250, 0.0, "math"),        # estimate: a GSM8K/MATH-style question and worked answer
    "no-robots": (9_500, 400, 0.1, "general"),       # estimate
    "daring-anteater": (17_082, 700, 0.0, "general"),  # estimate (its non-chat subset)
}
PUBLISHED_ROWS = sum(c[0] for c in COMPONENTS.values())  # 608,012
BENCHMARKS = {"gsm8k": "gsm8k/test.jsonl", "mmlu": "mmlu/test", "bbh": "bbh/bbh",
              "humaneval": "humaneval/HumanEval.jsonl.gz", "ifeval": "ifeval/input_data.jsonl",
              "alpaca_eval": "alpaca_eval/alpaca_eval.jsonl", "xstest": "xstest/xstest_prompts.csv"}


# ------------------------------------------------------------------------------------------------ the mixture

def _jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def pools(data: Path) -> dict[str, list[tuple[str, str]]]:
    """(prompt, answer) pairs from the local samples, by kind."""
    code = [(r["instruction"] + ("\n" + r["input"] if r.get("input") else ""), r["output"])
            for r in json.loads((data / "sft/code_alpaca_2k.json").read_text()) if r.get("output", "").strip()]
    math = [(r["question"], r["answer"]) for r in _jsonl(data / "gsm8k/train.jsonl")]
    general = [(r["prompt"], r["chosen"]) for r in _jsonl(data / "preference/ultrafeedback/train_clean.jsonl")
               if isinstance(r.get("prompt"), str) and isinstance(r.get("chosen"), str)]
    general += [(r["instruction"] + ("\n" + r["input"] if r.get("input") else ""), r["output"])
                for r in json.loads((data / "sft/alpaca_tiny.json").read_text()) if r.get("output", "").strip()]
    return {"code": code, "math": math, "general": general}


def _answer(rng, pool, target_chars: int) -> str:
    parts, size = [], 0
    while size < target_chars:
        text = pool[rng.integers(len(pool))][1].strip()
        parts.append(text)
        size += len(text) + 2
    answer = "\n\n".join(parts)
    cut = answer.rfind(" ", 0, target_chars)
    return answer[: cut if cut > target_chars // 2 else target_chars]


def write_mixture(path: Path, rows: int, data: Path, seed: int = 0) -> dict:
    """`rows` conversations in the published proportions, each distinct, as Tulu-style `messages` JSON lines."""
    rng = np.random.default_rng(seed)
    kinds = pools(data)
    names = list(COMPONENTS)
    which = rng.choice(len(names), size=rows, p=[COMPONENTS[n][0] / PUBLISHED_ROWS for n in names])
    with open(path, "w", encoding="utf-8") as f:
        for i, c in enumerate(which):
            _, mean, multi, kind = COMPONENTS[names[c]]
            tokens = int(min(4096, max(24, rng.lognormal(np.log(mean) - 0.32, 0.8))))  # E = mean for sigma 0.8
            # characters for that many tokens, capped so that code (fewer characters a token) stays near 4,096
            budget = int(min(tokens * CHARS_PER_TOKEN, 4096 * 3.2))
            turns = 1 + (rng.integers(1, 4) if rng.random() < multi else 0)
            messages = []
            for t in range(turns):
                prompt = kinds[kind][rng.integers(len(kinds[kind]))][0].strip()
                if t == 0:
                    prompt = f"[{names[c]} {i}] {prompt}"  # every row distinct, as in the real mixture
                share = max(64, (budget - len(prompt)) // (turns - t))
                answer = _answer(rng, kinds[kind], share)
                messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
                budget -= len(prompt) + len(answer)
            f.write(json.dumps({"messages": messages}) + "\n")
    return {names[k]: int((which == k).sum()) for k in range(len(names))}


# ------------------------------------------------------------------------------------------------ measuring

def _tree_memory(pid: int) -> tuple[int, int]:
    """(resident, anonymous) bytes of a process and all its descendants: proportional set sizes from
    /proc/PID/smaps_rollup, so that pages a forked worker shares with its parent are counted once, not per process."""
    import psutil

    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0
    rss = anon = 0
    for p in procs:
        try:
            rollup = Path(f"/proc/{p.pid}/smaps_rollup").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in rollup.splitlines()[1:] if ":" in line)
        rss += int(fields.get("Pss", "0 kB").split()[0]) * 1024
        anon += int(fields.get("Pss_Anon", "0 kB").split()[0]) * 1024
    return rss, anon


def run_measured(cmd: list[str], env: dict) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"rss": 0, "anon": 0}
    stopped = threading.Event()

    def sample():
        while proc.poll() is None:  # the memory plateaus of a build last minutes; a sample every 20 s finds them
            rss, anon = _tree_memory(proc.pid)
            peak["rss"], peak["anon"] = max(peak["rss"], rss), max(peak["anon"], anon)
            # Reading smaps_rollup walks the page tables: about 50 ms for a process mapping 3 GB, so sampled every
            # second it took a quarter of a core from a 2-process build (measured). Every 20 s costs about 1%.
            stopped.wait(20.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    stopped.set()
    sampler.join()
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{err[-3000:]}")
    phases = {m[1]: float(m[2]) for m in re.finditer(r"data: (.+) took ([\d.]+) s", err)}
    return {"seconds": seconds, "peak_rss": peak["rss"], "peak_anon": peak["anon"], "summary": json.loads(out),
            "phases": phases}


def recipe(work: Path, mixture: Path, data: Path, tokenizer: str, procs: int, cache: Path) -> Path:
    """The local OLMoE SFT recipe's data path at the published max length, on the synthetic mixture."""
    raw = yaml.safe_load((REPO / "recipes/olmoe-1b-7b/local/sft.yaml").read_text())
    raw["model"]["tokenizer"] = tokenizer
    raw["data"].update(sources=[{"path": str(mixture)}], cache_dir=str(cache),
                       decontaminate={k: str(data / v) for k, v in BENCHMARKS.items()})
    raw["training"].update(max_length=4096, dataset_num_proc=procs, output_dir=str(work / "run"))
    path = work / f"recipe-{mixture.stem}-{procs}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the data folder (benchmarks and the local SFT samples)")
    parser.add_argument("--tokenizer", required=True, help="OLMoE's tokenizer.json")
    parser.add_argument("--sizes", default="50000,200000,608000")
    parser.add_argument("--procs", default="1,2")
    parser.add_argument("--work", default=None, help="where the mixtures and caches go (default: a temporary folder)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    data = Path(args.data)
    if not (data / "sft/code_alpaca_2k.json").is_file() or not Path(args.tokenizer).is_file():
        sys.exit("error: pass --data (the data folder with sft/, gsm8k/, preference/ and the benchmarks) and "
                 "--tokenizer (OLMoE's tokenizer.json)")
    import tempfile

    import datasets
    import psutil
    import tokenizers
    import transformers
    import trl
    from report import finish, record  # bench/report.py

    work = Path(args.work or tempfile.mkdtemp(prefix="data-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    sizes, procs = [int(s) for s in args.sizes.split(",")], [int(p) for p in args.procs.split(",")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "OMP_NUM_THREADS": "1"}
    # `adapt data`, with the build's phase times logged (adapt.data at INFO: "data: tokenize took 12.3 s")
    cmd = [sys.executable, "-c", "import logging; logging.basicConfig(format='%(message)s'); "
           "logging.getLogger('adapt.data').setLevel(logging.INFO); from adapt.cli import main; main()",
           "data", "--config"]

    biggest = work / f"mixture-{max(sizes)}.jsonl"
    components = write_mixture(biggest, max(sizes), data)
    rows = []
    for size in sizes:
        mixture = work / f"mixture-{size}.jsonl"
        if mixture != biggest:  # the first `size` rows of the biggest
            with open(biggest, "rb") as src, open(mixture, "wb") as dst:
                for _, line in zip(range(size), src):
                    dst.write(line)
        for p in procs:
            cache = work / f"cache-{size}-{p}"
            shutil.rmtree(cache, ignore_errors=True)
            path = recipe(work, mixture, data, args.tokenizer, p, cache)
            cold = run_measured(cmd + [str(path)], env)
            hit = run_measured(cmd + [str(path)], env)
            summary = cold["summary"]
            source = summary["sources"][0]
            assert hit["summary"] == summary, "the cache hit gave another summary"
            rows.append({
                "rows": size, "procs": p, "seconds": round(cold["seconds"], 1),
                "rows_per_s": round(size / cold["seconds"], 1),
                "peak_rss_gb": round(cold["peak_rss"] / 2**30, 2), "peak_anon_gb": round(cold["peak_anon"] / 2**30, 2),
                "cache_gb": round(_size(cache) / 2**30, 2), "hit_seconds": round(hit["seconds"], 1),
                "hit_peak_rss_gb": round(hit["peak_rss"] / 2**30, 2),
                "tokens": summary["tokens"], "rows_kept": summary["train_rows"],
                "decontaminated": source["dropped"].get("benchmark overlap", 0),
                "length_p50_p90_p99_max": "/".join(str(source["length_percentiles"][q])
                                                   for q in ("p50", "p90", "p99", "max")),
                "packed_sequences": summary.get("packed_sequences"),
                "phases_s": cold["phases"], "hit_phases_s": hit["phases"],
            })
            shutil.rmtree(cache, ignore_errors=True)
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # progress: a full run takes over an hour
        if mixture != biggest:
            mixture.unlink()
        by_procs = {r["procs"]: r["seconds"] for r in rows if r["rows"] == size}
        if 1 in by_procs:
            for r in rows:
                if r["rows"] == size:
                    r["speedup_vs_1"] = round(by_procs[1] / r["seconds"], 2)
    input_bytes = biggest.stat().st_size
    biggest.unlink()
    header = record(bench="data_scale", device=f"{platform.machine()} CPU, {psutil.cpu_count()} cores, "
                    f"{round(psutil.virtual_memory().total / 2**30)} GiB",
                    versions={"datasets": datasets.__version__, "transformers": transformers.__version__,
                              "trl": trl.__version__, "tokenizers": tokenizers.__version__},
                    components=components, largest_input_gb=round(input_bytes / 2**30, 2))
    finish(header, rows, [("rows", "rows", ""), ("procs", "procs", ""), ("seconds", "build s", ".1f"),
                          ("rows_per_s", "rows/s", ",.0f"), ("speedup_vs_1", "vs 1 proc", ".2f"),
                          ("peak_rss_gb", "peak PSS GB", ".2f"), ("peak_anon_gb", "peak anon GB", ".2f"),
                          ("cache_gb", "cache GB", ".2f"), ("hit_seconds", "hit s", ".1f"),
                          ("tokens", "tokens", ","), ("length_p50_p90_p99_max", "len p50/p90/p99/max", ""),
                          ("decontaminated", "decontam.", "")], args.json)


if __name__ == "__main__":
    main()
