"""`adapt eval` end to end on a tiny model: results.json and samples.jsonl, re-scoring the samples gives the run's
scores, an interrupted run resumes from its journal without asking the model again, and reports render."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml

from adapt_eval.rescore import rescore
from adapt_eval.runner import JournaledLM
from adapt_eval.suite import evaluate, load_suite
from conftest import REPO, tiny_olmoe

SUITE = {
    "name": "tiny", "defaults": {"batch_size": 4},
    "tasks": {"gsm8k": {"benchmark": "gsm8k", "local": "gsm8k/test.jsonl", "num_fewshot": 2, "max_gen_toks": 12,
                        "headline": "exact_match"},
              "mmlu": {"benchmark": "mmlu", "local": "mmlu", "headline": "acc"},
              "humaneval": {"benchmark": "humaneval", "local": "humaneval/HumanEval.jsonl.gz", "num_samples": 3,
                            "temperature": 0.8, "k": [1, 2], "max_gen_toks": 12, "headline": "pass@2"}},
    "paper": {"OLMoE-1B-7B": {"gsm8k": 3.0, "mmlu": 49.8}},
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, demo_tokenizer):
    folder = tmp_path_factory.mktemp("model")
    model = tiny_olmoe(vocab_size=len(demo_tokenizer), pad_token_id=demo_tokenizer.pad_token_id,
                       eos_token_id=demo_tokenizer.eos_token_id, max_position_embeddings=2048)
    model.save_pretrained(folder)
    demo_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory, model_dir):
    from conftest import SHARED

    if not SHARED.is_dir():
        pytest.skip("../shared is absent (benchmark data)")
    tmp = tmp_path_factory.mktemp("eval")
    suite = tmp / "tiny.yaml"
    suite.write_text(yaml.safe_dump(SUITE))
    data = str(SHARED / "data")
    results = evaluate(str(model_dir), str(suite), limit=2, data_dir=data, output_dir=tmp / "out")
    return SimpleNamespace(results=results, out=tmp / "out", suite=str(suite), data=data)


def test_results_and_samples_files(run, model_dir):
    results = json.loads((run.out / "results.json").read_text())
    assert results == json.loads(json.dumps(run.results, default=str))
    assert results["model"]["path"] == str(model_dir) and len(results["model"]["sha256"]) == 64
    gsm8k, mmlu = results["tasks"]["gsm8k"], results["tasks"]["mmlu"]
    assert gsm8k["settings"]["num_fewshot"] == 2 and gsm8k["data"]["items"] == 2
    assert mmlu["data"]["items"] == 2 * 57 and mmlu["scores"]["subjects"]["value"] == 57
    rows = [json.loads(line) for line in (run.out / "samples.jsonl").read_text().splitlines()]
    # MMLU's accuracy is the mean of its items' verdicts, its standard error the pooled Bernoulli one
    verdicts = [r["score"] for r in rows if r["task"] == "mmlu"]
    acc = sum(verdicts) / len(verdicts)
    assert mmlu["scores"]["acc"]["value"] == pytest.approx(acc)
    assert mmlu["scores"]["acc"]["stderr"] == pytest.approx((acc * (1 - acc) / (len(verdicts) - 1)) ** 0.5)
    assert len(rows) == 2 + 2 * 57 + 2
    sampled = [r for r in rows if r["task"] == "humaneval"]
    assert all(len(r["completions"]) == 3 for r in sampled)  # every sample kept, for pass@k and re-scoring
    first = rows[0]
    assert {"task", "item_id", "prompt", "completion", "score"} <= first.keys()
    # prompted through the model's own chat template, few-shot examples as earlier turns
    assert first["prompt"].count("<|user|>\n") == 3 and first["prompt"].endswith("<|assistant|>\n")
    assert all(r["completion"] in "ABCD" for r in rows if r["task"] == "mmlu")


def test_rescoring_the_samples_gives_the_runs_scores(run):
    for task in ("gsm8k", "mmlu", "humaneval"):
        again = rescore(task, run.out / "samples.jsonl", run.suite, run.data)
        expected = run.results["tasks"][task]["scores"]
        for metric, score in expected.items():
            assert again[metric]["value"] == pytest.approx(score["value"]), (task, metric)


def test_a_finished_run_is_not_redone(run, model_dir, monkeypatch):
    import adapt_eval.suite as suite_module

    def no_model_calls(*args, **kwargs):
        raise AssertionError("every task was already finished")

    monkeypatch.setattr(suite_module, "run_lmeval", no_model_calls)
    again = evaluate(str(model_dir), run.suite, limit=2, data_dir=run.data, output_dir=run.out)
    assert again["tasks"] == json.loads(json.dumps(run.results["tasks"], default=str))
    changed = load_suite(run.suite, ["gsm8k.max_gen_toks=13"])  # other settings: that task runs again
    with pytest.raises(AssertionError, match="already finished"):
        evaluate(str(model_dir), changed, tasks=["gsm8k"], limit=2, data_dir=run.data, output_dir=run.out)


class CountingLM:
    """Stands in for a real model: answers `<prompt>#<n>`, fails after `fail_after` answers."""

    def __init__(self, fail_after=None):
        self.calls, self.fail_after = 0, fail_after

    def generate_until(self, requests, disable_tqdm=False):
        out = []
        for r in requests:
            if self.fail_after is not None and self.calls >= self.fail_after:
                raise KeyboardInterrupt
            self.calls += 1
            out.append(f"{r.args[0]}#{self.calls}")
        return out


def requests(n, repeats=1):
    return [SimpleNamespace(task_name="t", doc_id=i, args=(f"p{i}", {"do_sample": repeats > 1}))
            for i in range(n) for _ in range(repeats)]


def test_an_interrupted_evaluation_resumes_without_asking_again(tmp_path):
    journal = tmp_path / "journal.jsonl"
    reqs = requests(10, repeats=3)  # sampled repeats are journaled one by one, unlike lm-eval's own cache
    with pytest.raises(KeyboardInterrupt):
        JournaledLM(CountingLM(fail_after=12), journal, chunk=4).generate_until(reqs)
    assert len(journal.read_text().splitlines()) == 12  # three whole chunks were kept
    resumed_model = CountingLM()
    answers = JournaledLM(resumed_model, journal, chunk=4).generate_until(reqs)
    assert resumed_model.calls == 30 - 12
    assert len(set(answers)) == 30 and answers[:12] == [f"p{i // 3}#{i + 1}" for i in range(12)]
    assert JournaledLM(CountingLM(fail_after=0), journal).generate_until(reqs) == answers  # all from the journal


def test_report_renders_markdown_html_and_png(run, tmp_path):
    from adapt_eval.report import load_results, write_comparison

    base = json.loads((run.out / "results.json").read_text())
    better = json.loads(json.dumps(base))
    better["tasks"]["mmlu"]["scores"]["acc"]["value"] = base["tasks"]["mmlu"]["scores"]["acc"]["value"] + 0.1
    for name, results in (("base", base), ("sft", better)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(results))
    runs = load_results([str(tmp_path / "base"), str(tmp_path / "sft")], ["base", "sft"])
    paths = write_comparison(runs, tmp_path / "report", run.suite)
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "(+10.0)" in markdown and "*paper: OLMoE-1B-7B*" in markdown and "| 49.8 |" in markdown
    page = (tmp_path / "report" / "report.html").read_text()
    assert "data:image/png;base64," in page and "src=\"http" not in page  # self-contained
    assert (tmp_path / "report" / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(paths) == 4


def test_eval_refuses_to_mix_two_models_results(run, tmp_path, demo_tokenizer):
    other = tmp_path / "other"
    tiny_olmoe(seed=1, vocab_size=len(demo_tokenizer), pad_token_id=demo_tokenizer.pad_token_id).save_pretrained(other)
    demo_tokenizer.save_pretrained(other)
    result = subprocess.run([sys.executable, "-m", "adapt.cli", "eval", "--model", str(other), "--suite", run.suite,
                             "--output", str(run.out), "--limit", "1", "--data-dir", run.data],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "holds results of another model" in result.stderr


def test_unknown_task_and_suite_are_named():
    with pytest.raises(ValueError, match="--suite nope"):
        load_suite("nope")
    with pytest.raises(ValueError, match="--tasks: arc"):
        evaluate("unused", "olmoe-paper", tasks=["arc"])


def test_suite_settings_from_the_command_line():
    suite = load_suite("olmoe-paper", ["alpaca_eval.judge={endpoint: http://127.0.0.1:9/v1, model: m}",
                                       "gsm8k.num_fewshot=5"])
    assert suite.tasks["alpaca_eval"]["judge"] == {"endpoint": "http://127.0.0.1:9/v1", "model": "m"}
    assert suite.tasks["gsm8k"]["num_fewshot"] == 5
    with pytest.raises(ValueError, match="no task 'gsm'"):
        load_suite("olmoe-paper", ["gsm.num_fewshot=5"])
    with pytest.raises(ValueError, match="expected TASK.KEY=VALUE"):
        load_suite("olmoe-paper", ["gsm8k=5"])
