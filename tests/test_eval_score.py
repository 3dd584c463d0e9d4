"""`adapt eval score` on real data: stdout is exactly the metrics JSON, the per-item file re-aggregates to it, and a
predictions file that does not line up with the benchmark (shifted ids, an id out of range or given twice, a
prompt of another item, fewer completions than the task draws, a letter that is no choice) is a one-line error
before anything is scored."""

from __future__ import annotations

import csv
import gzip
import json
import statistics
import subprocess
import sys

import pytest

from adapt.cli import main
from adapt_eval.rescore import rescore

GSM8K_FEWSHOT = ("Q: There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they "
                 "are done, there will be 21 trees. How many trees did the grove workers plant today?\nA:")


def write_predictions(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def gsm8k_docs(shared, n):
    lines = (shared / "data/gsm8k/test.jsonl").read_text().splitlines()[:n]
    return [json.loads(line) for line in lines]


def gold(doc):
    return doc["answer"].split("####")[1].strip()


def stored_prompt(question):
    """A prompt as `adapt eval` stores it in samples.jsonl: lm-eval's few-shot turns and the item's "Q: ...\\nA:"
    through the model's chat template (OLMoE's), not through the replay's "role: content" lines."""
    return (f"<|user|>\n{GSM8K_FEWSHOT}\n<|assistant|>\nThere are 15 trees originally. Then there were 21 trees "
            f"after some more were planted. So there must have been 21 - 15 = 6. The answer is 6.<|endoftext|>\n"
            f"<|user|>\nQ: {question}\nA:\n<|assistant|>\n")


def gsm8k_rows(docs, prompt_of=None):
    """samples.jsonl rows answering every item right; `prompt_of(i)` gives the item whose prompt row i stores."""
    rows = [{"task": "gsm8k", "subtask": "gsm8k", "item_id": i, "completion": f"So... The answer is {gold(d)}."}
            for i, d in enumerate(docs)]
    if prompt_of:
        for i, row in enumerate(rows):
            row["prompt"] = stored_prompt(docs[prompt_of(i)]["question"])
    return rows


def score(capsys, *args):
    """`adapt eval score ARGS` in this process: (the error line or None, stdout, stderr)."""
    try:
        main(["eval", "score", *map(str, args)])
        error = None
    except SystemExit as e:
        error = str(e.code)
    out, err = capsys.readouterr()
    return error, out, err


# ---- the output ------------------------------------------------------------------------------------------------

def test_cli_stdout_is_the_metrics_and_per_item_rows_reaggregate(shared, tmp_path):
    """ToRA-70B's first 10 published GSM8K answers: 9 right (item 8 answers 75, the gold answer is 45)."""
    tora = (shared / "data/reference/gsm8k/tora-70b.jsonl").read_text().splitlines()[:10]
    preds = write_predictions(tmp_path / "p.jsonl", [{"item_id": r["idx"], "completion": r["code"][0]}
                                                     for r in map(json.loads, tora)])
    items = tmp_path / "out" / "items.jsonl"
    # outside any git checkout, where lm-eval's `git describe` would print "fatal: not a git repository"
    run = subprocess.run([sys.executable, "-m", "adapt.cli", "eval", "score", "--task", "gsm8k", "--predictions",
                          str(preds), "--data-dir", str(shared / "data"), "--per-item", str(items)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    metrics = json.loads(run.stdout)  # the whole of stdout
    assert metrics["exact_match"]["value"] == 0.9
    assert f"gsm8k: scored 10 items from {preds}; per item: {items}" in run.stderr
    assert "fatal" not in run.stderr
    rows = [json.loads(line) for line in items.read_text().splitlines()]
    assert [r["item_id"] for r in rows] == list(range(10)) and [r["line"] for r in rows] == list(range(1, 11))
    assert statistics.mean(r["metrics"]["exact_match"] for r in rows) == metrics["exact_match"]["value"]
    assert [r["item_id"] for r in rows if r["score"] == 0.0] == [8]
    assert rows[8]["completion"] == json.loads(tora[8])["code"][0] and rows[8]["target"] == "45"


def test_lmeval_prints_go_to_stderr(shared, tmp_path, capsys):
    """XSTest's f1 is bootstrapped: lm-eval prints "bootstrapping for stddev" while it runs."""
    with open(shared / "data/xstest/xstest_prompts.csv", encoding="utf-8") as f:
        labels = {i: r["label"] for i, r in enumerate(csv.DictReader(f)) if i in (0, 1, 2, 25, 26, 27)}
    assert list(labels.values()) == ["safe"] * 3 + ["unsafe"] * 3
    refusals = {"safe": "Sure, here is how.", "unsafe": "I'm sorry, I can't help with that."}
    preds = write_predictions(tmp_path / "p.jsonl", [{"item_id": i, "completion": refusals[label]}
                                                     for i, label in labels.items()])
    error, out, err = score(capsys, "--task", "xstest", "--predictions", preds, "--data-dir", shared / "data")
    assert error is None and json.loads(out)["f1"]["value"] == 1.0
    assert "bootstrapping for stddev" in err and "xstest: scored 6 items" in err


def test_mmlu_per_item_rows_reaggregate(shared, tmp_path):
    rows = []
    for subject, letters in (("anatomy", "AAAA"), ("astronomy", "BBB")):
        with open(shared / f"data/mmlu/test/{subject}_test.csv", newline="") as f:
            answers = [r[5].strip() for r in csv.reader(f)][:len(letters)]
        rows += [{"task": "mmlu", "subtask": f"mmlu_{subject}", "item_id": i, "completion": letter,
                  "right": letter == answer} for i, (letter, answer) in enumerate(zip(letters, answers))]
    items = tmp_path / "items.jsonl"
    metrics = rescore("mmlu", write_predictions(tmp_path / "p.jsonl", rows), data_dir=str(shared / "data"),
                      per_item=items)
    verdicts = [json.loads(line) for line in items.read_text().splitlines()]
    assert [v["score"] for v in verdicts] == [float(r["right"]) for r in rows]
    assert metrics["acc"]["value"] == pytest.approx(sum(r["right"] for r in rows) / 7)
    assert statistics.mean(v["metrics"]["acc"] for v in verdicts) == pytest.approx(metrics["acc"]["value"])


# ---- rows that do not line up with the benchmark ---------------------------------------------------------------

def test_shifted_ids_are_found_by_their_prompts(shared, tmp_path, capsys):
    docs = gsm8k_docs(shared, 6)
    aligned = write_predictions(tmp_path / "ok.jsonl", gsm8k_rows(docs, prompt_of=lambda i: i))
    error, out, _ = score(capsys, "--task", "gsm8k", "--predictions", aligned, "--data-dir", shared / "data")
    assert error is None and json.loads(out)["exact_match"]["value"] == 1.0  # our samples.jsonl prompts pass
    # rows 0..4 hold the prompts (and answers) of items 1..5 under the ids 0..4
    rows = [{**row, "item_id": i} for i, row in enumerate(gsm8k_rows(docs, prompt_of=lambda i: i)[1:])]
    shifted = write_predictions(tmp_path / "shifted.jsonl", rows)
    error, out, _ = score(capsys, "--task", "gsm8k", "--predictions", shifted, "--data-dir", shared / "data")
    assert error == (f"error: {shifted}: line 1: the stored prompt is not gsm8k item 0's (5 of 5 stored prompts "
                     f"differ from their items: ids shifted?); --allow-prompt-mismatch scores them anyway")
    assert out == ""
    items = tmp_path / "items.jsonl"
    error, out, err = score(capsys, "--task", "gsm8k", "--predictions", shifted, "--data-dir", shared / "data",
                            "--allow-prompt-mismatch", "--per-item", items)
    metrics = json.loads(out)
    assert error is None and metrics["exact_match"]["value"] == 0.0  # every answer is its neighbour's
    assert metrics["prompt_mismatches"] == {"value": 5, "checked": 5}
    assert "warning: 5 of 5 stored prompts are not their items' (first on line 1); scored anyway" in err
    assert all(json.loads(line)["prompt_mismatch"] for line in items.read_text().splitlines())


def test_one_wrong_prompt_is_named_rows_without_prompt_are_not_checked(shared, tmp_path, capsys):
    docs = gsm8k_docs(shared, 4)
    rows = gsm8k_rows(docs, prompt_of=lambda i: 0 if i == 2 else i)
    del rows[3]["prompt"]
    preds = write_predictions(tmp_path / "p.jsonl", rows)
    error, _, _ = score(capsys, "--task", "gsm8k", "--predictions", preds, "--data-dir", shared / "data")
    assert error == (f"error: {preds}: line 3: the stored prompt is not gsm8k item 2's (1 of 3 stored prompts differ "
                     f"from their items: ids shifted?); --allow-prompt-mismatch scores them anyway")


@pytest.mark.parametrize("item_id, message", [
    (99999, "line 2: item_id 99999 is out of range for gsm8k (1319 items: 0..1318)"),
    (-1, "line 2: item_id -1 is out of range for gsm8k (1319 items: 0..1318)"),
    (0, "line 2: item_id 0 of gsm8k is given twice, on lines 1 and 2"),
    ("x", "line 2: item_id must be an integer, got 'x' (see eval/README.md)"),
    ("1", "line 2: item_id must be an integer, got '1' (see eval/README.md)"),  # was taken as item 1
    (1.0, "line 2: item_id must be an integer, got 1.0 (see eval/README.md)"),
    (True, "line 2: item_id must be an integer, got True (see eval/README.md)"),
])
def test_bad_item_ids_are_one_line_errors(shared, tmp_path, capsys, item_id, message):
    preds = write_predictions(tmp_path / "p.jsonl", [{"item_id": 0, "completion": "The answer is 18."},
                                                     {"item_id": item_id, "completion": "The answer is 3."}])
    error, out, _ = score(capsys, "--task", "gsm8k", "--predictions", preds, "--data-dir", shared / "data")
    assert (error, out) == (f"error: {preds}: {message}", "")


def test_unreadable_files_and_unknown_tasks_are_one_line_errors(shared, tmp_path, capsys):
    data = shared / "data"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"item_id": 0, "completion": "1"}\n{"item_id": 1, "completion": \n')
    cases = [
        (["--task", "gsm8k", "--predictions", tmp_path / "missing.jsonl"],
         f"error: --predictions {tmp_path / 'missing.jsonl'}: no such file"),
        (["--task", "gsm8k", "--predictions", bad], f"error: {bad}: line 2: not JSON (Expecting value, column 30)"),
        (["--task", "arc", "--predictions", bad],
         "error: --task arc: not in suite olmoe-paper (mmlu, gsm8k, bbh, humaneval, alpaca_eval, xstest, ifeval)"),
        (["--task", "mmlu", "--predictions", write_predictions(tmp_path / "m.jsonl", [
            {"subtask": "mmlu_anatomy", "item_id": 0, "completion": "A"},
            {"subtask": "mmlu_nope", "item_id": 0, "completion": "A"}])],
         f"error: {tmp_path / 'm.jsonl'}: line 2: subtask 'mmlu_nope' is not one of mmlu's (mmlu_abstract_algebra, "
         f"mmlu_anatomy, mmlu_astronomy, ... (57 in all))"),
        (["--task", "mmlu", "--predictions", write_predictions(tmp_path / "e.jsonl", [
            {"subtask": "mmlu_anatomy", "item_id": 3, "completion": "E"}])],
         f"error: {tmp_path / 'e.jsonl'}: line 1: the stored answer 'E' is not one of mmlu_anatomy item 3's choices "
         f"(A, B, C, D)"),
    ]
    for args, message in cases:
        error, out, _ = score(capsys, *args, "--data-dir", data)
        assert (error, out) == (message, "")


def test_fewer_completions_than_the_task_draws_are_refused_not_replayed(shared, tmp_path, capsys):
    problems = [json.loads(line) for line in gzip.open(shared / "data/humaneval/HumanEval.jsonl.gz", "rt")][:2]
    preds = write_predictions(tmp_path / "p.jsonl", [{"task": "humaneval", "item_id": i, "completion":
                                                      p["canonical_solution"]} for i, p in enumerate(problems)])
    args = ["--task", "humaneval", "--predictions", preds, "--data-dir", shared / "data"]
    error, out, _ = score(capsys, *args)
    assert (error, out) == (f"error: {preds}: line 1: 1 completion(s) stored for humaneval item 0, but humaneval "
                            f"scores 20 per item (num_samples); to score the stored ones, pass "
                            f"--set humaneval.num_samples=1", "")
    error, out, err = score(capsys, *args, "--set", "humaneval.num_samples=1")
    assert error is None and json.loads(out) == {"pass@1": {"value": 1.0, "stderr": 0.0}}
    assert "humaneval: scored 2 items" in err


# ---- AlpacaEval ------------------------------------------------------------------------------------------------

def test_alpaca_preferences_decided_elsewhere_give_the_win_rate(shared, tmp_path, capsys):
    preferences = [1, 0, 0.5, None, 1]
    preds = write_predictions(tmp_path / "p.jsonl", [{"item_id": i, "preference": p, "completion": "x" * (i + 1)}
                                                     for i, p in enumerate(preferences)])
    error, out, err = score(capsys, "--task", "alpaca_eval", "--predictions", preds, "--data-dir", shared / "data")
    metrics = json.loads(out)
    assert error is None and metrics["win_rate"] == {
        "value": 0.625, "stderr": pytest.approx(statistics.stdev([1, 0, 0.5, 1]) / 2), "n_judged": 4, "n_wins": 2,
        "n_losses": 1, "n_ties": 1}
    assert metrics["judge_unparsed"]["value"] == 0.2 and metrics["avg_length"]["value"] == 3.0
    assert "alpaca_eval: scored 5 items" in err
    mixed = write_predictions(tmp_path / "m.jsonl", [{"item_id": 0, "preference": 1},
                                                     {"item_id": 1, "completion": "An answer."}])
    error, _, _ = score(capsys, "--task", "alpaca_eval", "--predictions", mixed, "--data-dir", shared / "data")
    assert error == (f"error: {mixed}: line 2: no `preference`, while other rows have one; give every row a "
                     f"preference, or none (to judge the completions)")
    odd = write_predictions(tmp_path / "o.jsonl", [{"item_id": 0, "preference": 2}])
    error, _, _ = score(capsys, "--task", "alpaca_eval", "--predictions", odd, "--data-dir", shared / "data")
    assert error == (f"error: {odd}: line 1: preference must be 1 (model wins), 0 (reference wins), 0.5 (tie) or "
                     f"null (unreadable), got 2")


def test_alpaca_without_judge_or_preferences_points_at_the_predictions_file(shared, tmp_path, capsys):
    preds = write_predictions(tmp_path / "p.jsonl", [{"item_id": i, "completion": "An answer."} for i in range(3)])
    error, out, _ = score(capsys, "--task", "alpaca_eval", "--predictions", preds, "--data-dir", shared / "data")
    metrics = json.loads(out)
    assert error is None and metrics["win_rate"]["value"] is None
    assert metrics["win_rate"]["skipped"] == (
        f"no judge configured (suite setting `judge`); the completions are in {preds}: score them with `adapt eval "
        f"score --task alpaca_eval --predictions {preds} --set alpaca_eval.judge={{...}}`, or give each row a "
        f"`preference` decided elsewhere (eval/README.md)")
    assert metrics["avg_length"]["value"] == len("An answer.")
