"""Routing analysis on tiny OLMoEs whose routers are set so the routing is known, every metric against a value
worked out by hand."""

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from adapt.model.routing import RoutingRecorder, find_backbone
from adapt_eval.routing.metrics import RoutingTotals, saturation
from conftest import TINY_SFT, tiny_olmoe, write_recipe


def zero_router_model():
    """Every router weight 0: all experts score the same, so every token goes to the same k experts (the ones
    torch.topk picks among equal scores, fixed by its kernel)."""
    model = tiny_olmoe(num_experts=4, num_experts_per_tok=2).eval()
    for layer in model.model.layers:
        layer.mlp.gate.weight.data.zero_()
    return model


def run(model, ids, mask):
    recorder = RoutingRecorder(find_backbone(model))
    recorder.start()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    captured = recorder.stop()
    recorder.remove()
    return captured.choices()


IDS = torch.randint(3, 200, (2, 6), generator=torch.Generator().manual_seed(0))
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])  # 10 real tokens


def test_every_metric_on_a_known_routing():
    chosen = sorted(torch.topk(torch.zeros(1, 4), 2).indices[0].tolist())  # the pair every token goes to
    others = sorted(set(range(4)) - set(chosen))
    model = zero_router_model()
    choices = run(model, IDS, MASK)
    assert sorted(choices) == [0, 1] and all(sorted(row) == chosen for c in choices.values() for row in c.tolist())

    totals = RoutingTotals(num_experts=4, vocab_size=200)
    totals.add(choices, MASK, "code", IDS)
    totals.add(run(model, IDS[:1], MASK[:1]), MASK[:1], "chat", IDS[:1])
    summary = totals.summary()
    assert totals.tokens == 16 and dict(totals.domain_tokens) == {"code": 10, "chat": 6}
    for layer in (0, 1):
        s = summary[layer]
        assert [s["load"][e] for e in chosen] == [16, 16] and [s["load"][e] for e in others] == [0, 0]
        assert s["dead_experts"] == others
        assert s["load_ratio"] == 16.0  # a dead expert counts as 1 token: the busiest expert's 16 (one definition)
        assert s["coactivation"][chosen[0]][chosen[1]] == 1.0 == s["coactivation"][chosen[1]][chosen[0]]
        for shares in s["domains"].values():
            assert sum(shares) == pytest.approx(2.0)  # k: each token counts once for each of its 2 experts
            assert [shares[e] for e in chosen] == [1.0, 1.0]
    assert saturation(choices, choices, MASK) == {0: (10.0, 10), 1: (10.0, 10)}  # a model against itself: 1.0


def test_saturation_counts_the_experts_two_models_share():
    base = zero_router_model()
    changed = zero_router_model()
    changed.load_state_dict(base.state_dict())
    changed.model.layers[0].mlp.gate.weight.data.normal_(0, 5.0, generator=torch.Generator().manual_seed(1))
    a, b = run(base, IDS, MASK), run(changed, IDS, MASK)
    by_hand = {}
    for layer in (0, 1):
        rows = [(set(x), set(y)) for x, y, m in zip(a[layer].tolist(), b[layer].tolist(), MASK.reshape(-1).tolist())
                if m]
        by_hand[layer] = (sum(len(x & y) / 2 for x, y in rows), len(rows))
    result = saturation(a, b, MASK)
    assert {layer: (pytest.approx(total), n) for layer, (total, n) in by_hand.items()} == result
    assert result[1] == (10.0, 10)  # layer 1's router is still all zeros: the same experts
    assert result[0][0] < 10.0  # layer 0's router changed: base -> changed saturation below 1


def token_only_model():
    """Attention outputs zeroed (o_proj = 0): no token sees another, so every router's choice is a function of the
    token id alone, and the vocabulary and domain shares can be worked out from each id routed on its own."""
    model = tiny_olmoe(num_experts=4, num_experts_per_tok=2, seed=3).eval()
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight.data.zero_()
    return model


def test_vocabulary_and_domain_shares_match_each_token_routed_alone():
    model = token_only_model()
    ids = torch.tensor([[5, 6, 5, 7, 5, 6], [7, 7, 8, 5, 9, 9]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])  # the last 9 is padding: 9 occurs once
    alone = {t: run(model, torch.tensor([[t]]), torch.ones(1, 1)) for t in (5, 6, 7, 8, 9)}
    totals = RoutingTotals(num_experts=4, vocab_size=300)
    totals.add(run(model, ids[:1], mask[:1]), mask[:1], "a", ids[:1])
    totals.add(run(model, ids[1:], mask[1:]), mask[1:], "b", ids[1:])
    summary = totals.summary(top_tokens=10, min_count=2)
    occurrences = {5: 4, 6: 2, 7: 3}  # ids seen at least twice (8 and 9 once: left out)
    for layer in (0, 1):
        experts_of = {t: set(alone[t][layer][0].tolist()) for t in alone}
        for e, top in enumerate(summary[layer]["vocabulary"]):
            expected = sorted((t for t, n in occurrences.items() if e in experts_of[t]), key=lambda t: -occurrences[t])
            assert [entry["id"] for entry in top] == expected
            assert all(entry["share"] == 1.0 and entry["count"] == occurrences[entry["id"]] for entry in top)
        for domain, rows in (("a", ids[0].tolist()), ("b", ids[1, :5].tolist())):
            by_hand = [sum(e in experts_of[t] for t in rows) / len(rows) for e in range(4)]
            assert summary[layer]["domains"][domain] == pytest.approx(by_hand)


def test_load_entropy_and_merging_counts_from_several_processes():
    model = token_only_model()
    ids = torch.randint(3, 40, (4, 8), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(4, 8, dtype=torch.long)
    whole = RoutingTotals(num_experts=4, vocab_size=300)
    halves = [RoutingTotals(num_experts=4, vocab_size=300) for _ in range(2)]
    for i in range(4):
        choices = run(model, ids[i:i + 1], mask[i:i + 1])
        whole.add(choices, mask[i:i + 1], "d" if i % 2 else "c", ids[i:i + 1])
        halves[i % 2].add(choices, mask[i:i + 1], "d" if i % 2 else "c", ids[i:i + 1])
    halves[0].merge(halves[1])
    assert halves[0].summary(top_tokens=3) == whole.summary(top_tokens=3)
    zero = RoutingTotals(num_experts=4, vocab_size=300)
    zero.add(run(zero_router_model(), IDS, MASK), MASK, "code", IDS)
    assert zero.summary()[0]["load_entropy"] == pytest.approx(0.5)  # 2 of 4 experts, evenly: log 2 / log 4


def test_adapt_analyze_on_saved_models(tmp_path, capsys):
    """The command: the same tokens through each saved model, one JSON with every number, and the pictures."""
    from adapt.cli import main
    from adapt.data.tokenizer import build_demo_tokenizer

    tokenizer = build_demo_tokenizer()
    base = zero_router_model()
    changed = zero_router_model()
    changed.load_state_dict(base.state_dict())
    changed.model.layers[0].mlp.gate.weight.data.normal_(0, 5.0, generator=torch.Generator().manual_seed(1))
    for name, model in (("base", base), ("changed", changed)):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    main(["analyze", "--models", f"base={tmp_path / 'base'}", f"changed={tmp_path / 'changed'}",
          "--data", "reverse=task:reverse", "--texts", "8", "--output", str(tmp_path / "out")])
    result = json.loads((tmp_path / "out" / "analysis.json").read_text())
    tokens = result["per_model"]["base"]["tokens"]
    assert result["per_model"]["changed"]["tokens"] == tokens > 0
    for name in ("base", "changed"):
        for layer in result["per_model"][name]["layers"].values():
            assert sum(layer["load"]) == 2 * tokens  # k assignments per token
            assert sum(layer["domains"]["reverse"]) == pytest.approx(2.0)
    saturation_by_layer = result["saturation"]["base->changed"]
    assert saturation_by_layer["1"] == 1.0 and saturation_by_layer["0"] < 1.0
    assert "saturation base->changed: layer 0:" in capsys.readouterr().out
    for picture in ("saturation.png", "experts_base.png", "experts_changed.png"):
        assert (tmp_path / "out" / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_view_draws_a_runs_router_stats(tmp_path, capsys):
    from adapt.cli import main

    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": s, "layers": [1, 3], "expert_share": [[0.5, 0.5], [1 - s / 10, s / 10]]} for s in (1, 2, 3)]
    (run / "router_stats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    main(["analyze", "--run", str(run), "--output", str(tmp_path / "out")])
    assert (tmp_path / "out" / "training_load.png").read_bytes()[:4] == b"\x89PNG"
    assert capsys.readouterr().out == f"picture: {tmp_path / 'out' / 'training_load.png'}\n"
    with pytest.raises(SystemExit, match="no router_stats.jsonl"):
        main(["analyze", "--run", str(tmp_path), "--output", str(tmp_path / "out")])


def save_pair(folder):
    """A base and a model whose layer-0 router changed, with the demo tokenizer, saved as folders."""
    from adapt.data.tokenizer import build_demo_tokenizer

    tokenizer = build_demo_tokenizer()
    base, changed = token_only_model(), token_only_model()
    changed.model.layers[0].mlp.gate.weight.data.normal_(0, 5.0, generator=torch.Generator().manual_seed(1))
    for name, model in (("base", base), ("changed", changed)):
        model.save_pretrained(folder / name)
        tokenizer.save_pretrained(folder / name)
    return [f"base={folder / 'base'}", f"changed={folder / 'changed'}"]


def test_domain_specs_expand_recipes_and_benchmarks(shared):
    from adapt_eval.routing.data import domain_texts

    texts = domain_texts({"mix": "recipe:recipes/demo/sft.yaml", "math": "benchmark:gsm8k", "chat": "task:reverse"},
                         limit=3, data_dir=str(shared / "data"))
    assert list(texts) == ["mix/reverse", "math", "chat"] and all(len(t) == 3 for t in texts.values())
    assert texts["math"][0].startswith("Q: Janet’s ducks lay 16 eggs per day.")
    assert texts["mix/reverse"][0].startswith("Reverse: ")  # the user turn, then the answer
    with pytest.raises(ValueError, match="benchmark:nope: not a task of suite olmoe-paper"):
        domain_texts({"x": "benchmark:nope"}, 3)


@pytest.mark.multiprocess
def test_two_processes_count_what_one_process_counts(tmp_path):
    import subprocess
    import sys

    models = save_pair(tmp_path)
    common = ["analyze", "--models", *models, "--data", "reverse=task:reverse", "--texts", "12", "--batch-size", "4"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    outputs = {}
    for procs in (1, 2):
        out = tmp_path / f"out{procs}"
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
                               "-m", "adapt.cli", *common, "--output", str(out)],
                              capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs[procs] = json.loads((out / "analysis.json").read_text())
    for result in outputs.values():
        for model in result["per_model"].values():
            model.pop("forward_seconds")
    assert outputs[2].pop("processes") == 2 and outputs[1].pop("processes") == 1
    assert outputs[2] == outputs[1]


def test_an_adapter_folder_is_analysed_as_its_merged_model(tmp_path):
    from peft import LoraConfig, get_peft_model

    from adapt.data.tokenizer import build_demo_tokenizer
    from adapt_eval.routing.run import analyze

    tokenizer = build_demo_tokenizer()
    token_only_model().save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["gate"], init_lora_weights=False)
    adapted = get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), config)  # random A and B
    adapted.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")
    adapted.merge_and_unload().save_pretrained(tmp_path / "merged")
    tokenizer.save_pretrained(tmp_path / "merged")
    models = {name: str(tmp_path / name) for name in ("base", "adapter", "merged")}
    result = analyze(models, {"reverse": "task:reverse"}, texts_per_domain=8, log=lambda line: None)
    assert result["saturation"]["adapter->merged"] == {0: 1.0, 1: 1.0}
    assert min(result["saturation"]["base->adapter"].values()) < 1.0  # the adapter did move the router


def test_report_adds_the_router_section_and_its_pictures(tmp_path):
    from adapt.cli import main
    from adapt_eval.routing.report import TITLE

    models = save_pair(tmp_path)
    main(["analyze", "--models", *models, "--data", "reverse=task:reverse", "--texts", "6",
          "--output", str(tmp_path / "analysis")])
    results = []
    for name in ("base", "changed"):
        record = {"model": {"path": str(tmp_path / name)}, "suite": "olmoe-paper", "headline":
                  {"gsm8k": {"metric": "exact_match"}}, "tasks": {"gsm8k": {"scores": {"exact_match": {"value": 0.1}}}}}
        (tmp_path / f"{name}.json").write_text(json.dumps(record))
        results.append(str(tmp_path / f"{name}.json"))
    main(["report", *results, "--analysis", str(tmp_path / "analysis"), "--output", str(tmp_path / "report")])
    markdown = (tmp_path / "report" / "report.md").read_text()
    saturation_layers = json.loads((tmp_path / "analysis" / "analysis.json").read_text())["saturation"]
    by_layer = saturation_layers["base->changed"]
    assert f"## {TITLE}" in markdown and by_layer["0"] < 1.0
    assert f"| base → changed | {by_layer['0']:.3f} | {by_layer['1']:.3f} |" in markdown
    assert "![saturation](router/saturation.png)" in markdown
    assert (tmp_path / "report" / "router" / "experts_changed.png").read_bytes()[:4] == b"\x89PNG"
    assert f"<h2>{TITLE}</h2>" in (tmp_path / "report" / "report.html").read_text()
    with pytest.raises(SystemExit, match="no analysis.json"):
        main(["report", *results, "--analysis", str(tmp_path), "--output", str(tmp_path / "report2")])
    assert not (tmp_path / "report2").exists()  # refused before writing anything


def test_a_token_budget_takes_the_texts_in_order_and_cuts_the_last(demo_tokenizer):
    from adapt_eval.routing.run import data_fingerprints, tokenize_domains

    texts = {"a": ["one two three", "four five six seven", "eight"], "b": ["x y"]}
    lengths = {d: [len(demo_tokenizer(t)["input_ids"]) for t in ts] for d, ts in texts.items()}
    budget = lengths["a"][0] + 2  # the first text whole, two tokens of the second, none of the third
    batches = tokenize_domains(demo_tokenizer, texts, batch_size=8, max_length=512, tokens_per_domain=budget)
    counted = data_fingerprints(batches)
    assert counted["a"]["tokens"] == budget and counted["a"]["texts"] == 2
    assert counted["b"]["tokens"] == lengths["b"][0]  # under the budget: all of it


def test_bad_analyze_options_are_refused_in_one_line(tmp_path, capsys):
    from adapt.cli import main

    with pytest.raises(SystemExit, match="--models: base is named twice"):
        main(["analyze", "--models", "base=a", "base=b", "--data", "r=task:reverse", "--output", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["analyze", "--models", "base=a", "--data", "r=task:reverse", "--batch-size", "0", "--output", "x"])
    assert "--batch-size: '0' is not a whole number of at least 1" in capsys.readouterr().err


def test_models_that_cannot_be_analysed_are_refused_before_any_weights_load(tmp_path):
    """Folders with a config.json and no weights: a refusal naming the problem proves it came first."""
    from transformers import LlamaConfig

    from adapt.data.tokenizer import build_demo_tokenizer
    from adapt_eval.routing.run import analyze

    build_demo_tokenizer().save_pretrained(tmp_path / "dense")
    LlamaConfig(vocab_size=320).save_pretrained(tmp_path / "dense")
    with pytest.raises(ValueError, match=r"--models dense=.*'llama'"):
        analyze({"dense": str(tmp_path / "dense")}, {"r": "task:reverse"}, texts_per_domain=2, log=lambda line: None)
    build_demo_tokenizer().save_pretrained(tmp_path / "small")
    tiny_olmoe(vocab_size=50).config.save_pretrained(tmp_path / "small")
    with pytest.raises(ValueError, match="this model's vocabulary is 50; analyse models that share a tokenizer"):
        analyze({"small": str(tmp_path / "small")}, {"r": "task:reverse"}, texts_per_domain=2, log=lambda line: None)


def test_without_data_analyze_reads_the_first_run_folders_training_data(tmp_path, capsys):
    """`adapt analyze` without --data: the first model that is a run folder (has recipe.yaml) names the data, as
    `recipe:` does, and says so; with no run folder among the models, the one-line refusal."""
    from adapt.cli import main
    from adapt.data.tokenizer import build_demo_tokenizer
    from adapt.runfolder import write_marker

    tokenizer = build_demo_tokenizer()
    for name in ("base", "sft"):
        zero_router_model().save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    models = ["--models", f"base={tmp_path / 'base'}", f"sft={tmp_path / 'sft'}"]
    with pytest.raises(SystemExit, match="without --data, one model must be a run folder"):
        main(["analyze", *models, "--output", str(tmp_path / "out")])
    write_recipe(tmp_path / "sft" / "recipe.yaml",
                 TINY_SFT.format(rows=8, lb=0.01, z=0.001, out=tmp_path / "sft", steps=1))
    write_marker(tmp_path / "sft", {"stage": "sft"})  # a finished run's folder
    main(["analyze", *models, "--texts", "4", "--output", str(tmp_path / "out")])
    assert f"note: --data not given: using the training data (data.sources) from {tmp_path / 'sft' / 'recipe.yaml'}" \
        in capsys.readouterr().err
    result = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert result["domains"] == {"train": f"recipe:{tmp_path / 'sft' / 'recipe.yaml'}"}
    assert list(result["data"]) == ["train/reverse"] and result["data"]["train/reverse"]["texts"] == 4
