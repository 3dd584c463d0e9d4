"""The demo task, the harness's model calls and the report."""

import random

import pytest
import torch

from adapt.tasks import get_task
from adapt_eval.demo_report import render_markdown
from adapt_eval.generation import completion_logprobs
from conftest import tiny_olmoe


def test_reverse_items_are_deterministic_and_splits_disjoint():
    task = get_task("reverse")
    assert task.items("train", 50) == task.items("train", 50)
    train = {it.prompt for it in task.items("train", 2000)}
    test = {it.prompt for it in task.items("test", 200)}
    assert not train & test


def test_gold_answers_score_100_and_shuffled_about_chance():
    task = get_task("reverse")
    items = task.items("test", 200)
    assert sum(task.score(it, it.answer) for it in items) == len(items)
    assert sum(task.score(it, f"Sure! Reversed: {it.answer}") for it in items) == len(items)
    rng = random.Random(0)
    shuffled = [it.answer for it in items]
    rng.shuffle(shuffled)
    assert sum(task.score(it, s) for it, s in zip(items, shuffled)) / len(items) < 0.05


def test_preference_pairs_prefer_terse_correct_answers():
    task = get_task("reverse")
    pairs = task.preference_pairs("test", 100)
    assert {p.kind for p in pairs} == {"style", "correctness"}
    for p in pairs:
        assert p.chosen == p.item.answer and p.rejected != p.chosen
        assert task.score(p.item, p.rejected) == (1.0 if p.kind == "style" else 0.0)


def test_completion_logprobs_match_a_manual_computation(demo_tokenizer):
    model = tiny_olmoe(vocab_size=len(demo_tokenizer), pad_token_id=demo_tokenizer.pad_token_id).eval()
    prompts, completions = ["Reverse: a b", "Reverse: c d e"], ["b a", "e d c"]
    got = completion_logprobs(model, demo_tokenizer, prompts, completions)
    for user, completion, value in zip(prompts, completions, got):
        prompt = demo_tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                    add_generation_prompt=True)
        p_ids = demo_tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = demo_tokenizer(prompt + completion + demo_tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        manual = sum(logp[i - 1, ids[i]].item() for i in range(len(p_ids), len(ids)))
        assert value == pytest.approx(manual, abs=1e-4)  # padding in the batch changes nothing


def test_report_shows_stages_and_deltas():
    report = {"task": "reverse", "stages": {
        "base": {"task_accuracy": 0.0, "preference_accuracy": 0.5},
        "sft": {"task_accuracy": 0.9, "preference_accuracy": 0.6},
        "dpo": {"task_accuracy": 0.9, "preference_accuracy": 1.0}}}
    md = render_markdown(report)
    assert "| metric | base | sft | dpo |" in md
    assert "| task_accuracy | 0.0 | 90.0 (+90.0) | 90.0 (+0.0) |" in md
    assert "| preference_accuracy | 50.0 | 60.0 (+10.0) | 100.0 (+40.0) |" in md
