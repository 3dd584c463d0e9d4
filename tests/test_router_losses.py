"""Router losses against hand-computed values, and gradients reaching the router."""

import math

import pytest
import torch

from adapt.losses import load_balancing_loss, router_stats, router_z_loss
from adapt.model.routing import RouterCapture
from conftest import tiny_olmoe


def test_z_loss_matches_hand_computation():
    # layer 0: tokens with logits [0, 0] and [ln 3, 0] -> logsumexp = ln 2 and ln 4
    # layer 1: one token [ln 2, ln 2] twice -> logsumexp = ln 4 for both
    layer0 = torch.tensor([[0.0, 0.0], [math.log(3), 0.0]])
    layer1 = torch.tensor([[math.log(2), math.log(2)], [math.log(2), math.log(2)]])
    expected = ((math.log(2) ** 2 + math.log(4) ** 2) / 2 + math.log(4) ** 2) / 2
    assert router_z_loss([layer0, layer1]).item() == pytest.approx(expected, rel=1e-6)


def test_z_loss_ignores_padding():
    layer = torch.tensor([[0.0, 0.0], [math.log(3), 0.0], [100.0, 100.0]])  # third token is padding
    mask = torch.tensor([[1, 1, 0]])
    expected = (math.log(2) ** 2 + math.log(4) ** 2) / 2
    assert router_z_loss([layer], mask).item() == pytest.approx(expected, rel=1e-6)


def test_load_balancing_loss_matches_hand_computation():
    # E=2, k=1, one layer, two tokens. softmax([ln 3, 0]) = [.75, .25]; softmax([0, ln 3]) = [.25, .75]
    # f = fraction of tokens routed to each expert = [.5, .5]; P = mean router prob = [.5, .5]
    # loss = E * sum(f * P) = 2 * (.25 + .25) = 1.0 (perfect balance gives k = 1)
    logits = torch.tensor([[math.log(3), 0.0], [0.0, math.log(3)]])
    assert load_balancing_loss([logits], num_experts=2, top_k=1).item() == pytest.approx(1.0)
    # both tokens to expert 0: f = [1, 0], P = [.75, .25] -> 2 * .75 = 1.5
    skewed = torch.tensor([[math.log(3), 0.0], [math.log(3), 0.0]])
    assert load_balancing_loss([skewed], num_experts=2, top_k=1).item() == pytest.approx(1.5)


def test_router_stats_hand_computed():
    logits = torch.tensor([[math.log(3), 0.0, -1e9], [math.log(3), 0.0, -1e9], [0.0, math.log(3), -1e9]])
    stats = router_stats(RouterCapture([5], [logits], None, None), top_k=1).summary()
    assert stats["layers"] == [5]
    assert stats["expert_share"][0] == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert stats["load_ratio"][0] == pytest.approx(2.0)  # max 2 tokens / max(min 0 tokens, 1)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert stats["entropy"][0] == pytest.approx(h, rel=1e-5)


def test_router_stats_count_the_routers_own_choice_and_sigmoid_entropy():
    # the router chose expert 2 for every token although softmax would pick 0 (a score bias, as DeepSeek-V3 has):
    # the count follows the choice; the entropy is that of the normalised sigmoid scores
    logits = torch.tensor([[2.0, 0.0, -2.0], [2.0, 0.0, -2.0]])
    chosen = torch.tensor([[2], [2]])
    stats = router_stats(RouterCapture([1], [logits], [chosen], torch.tensor([[1, 0]])), top_k=1,
                         scoring="sigmoid").summary()
    assert stats["expert_share"][0] == [0.0, 0.0, 1.0]
    s = torch.sigmoid(logits[0])
    p = s / s.sum()
    assert stats["entropy"][0] == pytest.approx(float(-(p * p.log()).sum()), rel=1e-6)


def test_gradients_reach_the_router_weights():
    model = tiny_olmoe()
    ids = torch.randint(2, 300, (2, 12))
    out = model(input_ids=ids, output_router_logits=True)
    z = router_z_loss(out.router_logits)
    z.backward()
    for layer in model.model.layers:
        grad = layer.mlp.gate.weight.grad
        assert grad is not None and grad.abs().sum() > 0
    assert model.lm_head.weight.grad is None  # the z-loss only reaches what lies before the routers

    model.zero_grad()
    out = model(input_ids=ids, output_router_logits=True)
    lb = load_balancing_loss(out.router_logits, 4, 2)
    lb.backward()
    assert all(layer.mlp.gate.weight.grad.abs().sum() > 0 for layer in model.model.layers)
    assert out.aux_loss.item() == pytest.approx(lb.item(), rel=1e-6)  # same function as the model's own
