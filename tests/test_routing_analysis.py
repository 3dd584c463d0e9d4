"""Routing analysis on tiny OLMoEs whose routers are set so the routing is known, every metric against a value
worked out by hand."""

import json

import pytest
import torch

from adapt_eval.routing import RoutingRecorder, RoutingTotals, saturation
from conftest import tiny_olmoe


def zero_router_model():
    """Every router weight 0: all experts score the same, so every token goes to the same k experts (the ones
    torch.topk picks among equal scores, fixed by its kernel)."""
    model = tiny_olmoe(num_experts=4, num_experts_per_tok=2).eval()
    for layer in model.model.layers:
        layer.mlp.gate.weight.data.zero_()
    return model


def run(model, ids, mask):
    with RoutingRecorder(model) as recorder, torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    return dict(recorder.choices)


IDS = torch.randint(3, 200, (2, 6), generator=torch.Generator().manual_seed(0))
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])  # 10 real tokens


def test_every_metric_on_a_known_routing():
    chosen = sorted(torch.topk(torch.zeros(1, 4), 2).indices[0].tolist())  # the pair every token goes to
    others = sorted(set(range(4)) - set(chosen))
    model = zero_router_model()
    choices = run(model, IDS, MASK)
    assert sorted(choices) == [0, 1] and all(sorted(row) == chosen for c in choices.values() for row in c.tolist())

    totals = RoutingTotals(num_experts=4)
    totals.add(choices, MASK, "code")
    totals.add(run(model, IDS[:1], MASK[:1]), MASK[:1], "chat")
    summary = totals.summary()
    assert totals.tokens == 16 and dict(totals.domain_tokens) == {"code": 10, "chat": 6}
    for layer in (0, 1):
        s = summary[layer]
        assert [s["load"][e] for e in chosen] == [16, 16] and [s["load"][e] for e in others] == [0, 0]
        assert s["dead_experts"] == others
        assert s["load_ratio"] == 16.0  # 16 tokens over max(0, 1)
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
