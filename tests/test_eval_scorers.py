"""Scorer fidelity on real data: published outputs reproduce their published scores through the same lm-eval task
code `adapt eval` runs (stored completions replayed with `adapt eval score`); gold answers score 100% and shuffled
answers about chance."""

import gzip
import json
import random
import re
import subprocess
import sys

import pytest

from adapt_eval.benchmarks.gsm8k import extract_answer, is_correct
from adapt_eval.rescore import rescore
from conftest import REPO


def write_predictions(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def gsm8k_docs(shared):
    return [json.loads(line) for line in (shared / "data/gsm8k/test.jsonl").read_text().splitlines()]


def test_gsm8k_answer_extraction():
    assert extract_answer("so 3 + 4 = 7. The answer is 7.") == "7"
    assert extract_answer("We get \\boxed{\\frac{1}{2}} hmm, no: \\boxed{1,000}") == "1,000"
    assert extract_answer("```python\nprint(2*8)\n```\n```output\n16.0\n```\n16 people think so.") == "16.0"
    assert extract_answer("It costs $18 in total.") == "18"
    assert is_correct("The answer is 1,000.", "1000") and is_correct("\\boxed{18.0}", "18")
    assert not is_correct("The answer is 17.", "18") and not is_correct("no number here", "3")


@pytest.mark.slow
def test_gsm8k_tora70b_reproduces_its_reported_84_3(shared, tmp_path):
    rows = [json.loads(line) for line in (shared / "data/reference/gsm8k/tora-70b.jsonl").read_text().splitlines()]
    preds = write_predictions(tmp_path / "p.jsonl", [{"item_id": r["idx"], "completion": r["code"][0]} for r in rows])
    metrics = rescore("gsm8k", preds, data_dir=str(shared / "data"))
    assert round(100 * metrics["exact_match"]["value"], 1) == 84.3  # ToRA's reported GSM8K accuracy
    assert round(metrics["exact_match"]["value"] * len(rows)) == 1112


def test_gsm8k_gold_scores_100_and_shuffled_about_chance(shared, tmp_path):
    docs = gsm8k_docs(shared)[:80]
    gold = [re.sub(r"<<[^>]*>>", "", d["answer"].split("####")[0]).strip() + " The answer is "
            + d["answer"].split("####")[1].strip() + "." for d in docs]
    shuffled = gold[1:] + gold[:1]
    data = str(shared / "data")
    ok = rescore("gsm8k", write_predictions(tmp_path / "g.jsonl", [{"item_id": i, "completion": c}
                                                                    for i, c in enumerate(gold)]), data_dir=data)
    bad = rescore("gsm8k", write_predictions(tmp_path / "s.jsonl", [{"item_id": i, "completion": c}
                                                                     for i, c in enumerate(shuffled)]), data_dir=data)
    assert ok["exact_match"]["value"] == 1.0
    assert bad["exact_match"]["value"] < 0.05


def test_rescoring_a_subset_of_items_keeps_each_completion_with_its_item(shared, tmp_path):
    docs = gsm8k_docs(shared)
    ids = [40, 5, 17]  # not contiguous, not sorted
    rows = [{"item_id": i, "completion": f"The answer is {docs[i]['answer'].split('####')[1].strip()}."} for i in ids]
    rows.append({"item_id": 3, "completion": "The answer is -1."})  # wrong on purpose
    metrics = rescore("gsm8k", write_predictions(tmp_path / "p.jsonl", rows), data_dir=str(shared / "data"))
    assert metrics["exact_match"]["value"] == 0.75


def test_mmlu_gold_letters_score_100_and_shuffled_about_a_quarter(shared, tmp_path):
    import csv

    rows, golds = [], []
    for subject in ("abstract_algebra", "anatomy", "astronomy", "college_biology"):
        with open(shared / f"data/mmlu/test/{subject}_test.csv", newline="") as f:
            answers = [r[5].strip() for r in csv.reader(f)]
        rows += [{"task": "mmlu", "subtask": f"mmlu_{subject}", "item_id": i} for i in range(len(answers))]
        golds += answers
    gold = write_predictions(tmp_path / "g.jsonl", [{**r, "completion": g} for r, g in zip(rows, golds)])
    shuffled_letters = golds[:]
    random.Random(0).shuffle(shuffled_letters)
    shuffled = write_predictions(tmp_path / "s.jsonl", [{**r, "completion": g} for r, g in zip(rows, shuffled_letters)])
    data = str(shared / "data")
    assert rescore("mmlu", gold, data_dir=data)["acc"]["value"] == 1.0
    assert 0.15 < rescore("mmlu", shuffled, data_dir=data)["acc"]["value"] < 0.35


@pytest.mark.slow
def test_ifeval_checker_on_gpt4_responses(shared, tmp_path):
    responses = [json.loads(line)["response"]
                 for line in (shared / "data/reference/ifeval/gpt4-responses.jsonl").read_text().splitlines()]
    preds = write_predictions(tmp_path / "p.jsonl", [{"item_id": i, "completion": r} for i, r in enumerate(responses)])
    scores = rescore("ifeval", preds, data_dir=str(shared / "data"))
    metrics = {k: round(100 * v["value"], 1) for k, v in scores.items()}
    # The IFEval paper reports GPT-4 at 76.9 / 79.3 (prompt strict / loose) and 83.6 / 85.4 (instruction); one of
    # these 541 stored responses belongs to a prompt worded differently, and lm-eval's port differs from the
    # official checker on a few letter-frequency instructions (measured on the full set).
    assert metrics == {"prompt_level_strict_acc": 77.1, "prompt_level_loose_acc": 79.5,
                       "inst_level_strict_acc": 83.7, "inst_level_loose_acc": 85.5}


@pytest.mark.slow
def test_bbh_answer_extraction_on_codex_cot_outputs(shared, tmp_path):
    rows = []
    for path in sorted((shared / "data/reference/bbh/codex-cot").glob("*.json.gz")):
        task = path.name.split("_few_shot")[0]
        outputs = json.loads(gzip.decompress(path.read_bytes()))["outputs"]
        rows += [{"task": "bbh", "subtask": f"bbh_{task}", "item_id": i, "completion": o["prediction"]}
                 for i, o in enumerate(outputs)]
    metrics = rescore("bbh", write_predictions(tmp_path / "p.jsonl", rows), data_dir=str(shared / "data"))
    # Suzgun et al. report code-davinci-002 with CoT at 73.9 averaged over the 27 tasks.
    assert metrics["tasks"]["value"] == 27 and metrics["exact_match"]["n"] == 6511
    assert round(100 * metrics["exact_match"]["value"], 1) == 73.7


def test_adapt_eval_score_cli_prints_metrics(shared, tmp_path):
    docs = gsm8k_docs(shared)[:5]
    preds = write_predictions(tmp_path / "p.jsonl", [{"task": "gsm8k", "item_id": i, "completion":
                                                      f"The answer is {d['answer'].split('####')[1].strip()}."}
                                                     for i, d in enumerate(docs)])
    run = subprocess.run([sys.executable, "-m", "adapt.cli", "eval", "score", "--task", "gsm8k", "--predictions",
                          str(preds), "--data-dir", str(shared / "data")], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout)["exact_match"]["value"] == 1.0


def test_rescoring_a_malformed_prediction_names_the_line(shared, tmp_path):
    preds = tmp_path / "p.jsonl"
    preds.write_text('{"item_id": 0, "completion": "1"}\n{"completion": "no id"}\n')
    with pytest.raises(ValueError, match="line 2"):
        rescore("gsm8k", preds, data_dir=str(shared / "data"))
