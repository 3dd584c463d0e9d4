"""The router-loss audit of the first micro-batch (adapt/trainers/router_audit.py) and the collapse warnings
(adapt/trainers/router_health.py), through the SFT stage on tiny OLMoE models."""

import json
import logging

import pytest

from adapt.config import load_recipe
from adapt.runfolder import incomplete_reason
from conftest import TINY_SFT, write_recipe


def sft_run(tmp_path, *overrides, lb=0.01, z=0.001, steps=1, rows=8, demo_size=False):
    from adapt.stages import sft

    text = TINY_SFT.format(rows=rows, lb=lb, z=z, out=tmp_path / "run", steps=steps)
    if demo_size:  # the demo's expert count (8, top-2) and width: a fair share of 25%, room to collapse
        text = text.replace("hidden_size: 32, intermediate_size: 32", "hidden_size: 96, intermediate_size: 128")
        text = text.replace("num_experts: 4", "num_experts: 8")
    return sft.run(load_recipe(write_recipe(tmp_path / "r.yaml", text), list(overrides)))


def stopped(tmp_path, *overrides, **kwargs) -> str:
    """Run a stage that must stop: its one-line error, and the folder marked stopped with that reason."""
    with pytest.raises(SystemExit) as info:
        sft_run(tmp_path, *overrides, **kwargs)
    message = str(info.value)
    assert message.startswith("error: ") and "\n" not in message
    assert not (tmp_path / "run" / "run.json").exists() and not (tmp_path / "run" / "model.safetensors").exists()
    assert message[len("error: "):] in incomplete_reason(tmp_path / "run")
    return message


def test_the_audit_passes_and_is_recorded_in_run_json(tmp_path, caplog):
    # The model config asks for its own aux loss (output_router_logits, coefficient 0.02): TRL 1.16's SFTTrainer
    # turns it off (router_aux_loss_coef 0), and the audit measures that the main loss does not hold it.
    with caplog.at_level(logging.WARNING, logger="adapt.trainers.router_audit"):
        trainer = sft_run(tmp_path, "model.config.output_router_logits=true", "model.config.router_aux_loss_coef=0.02")
    assert trainer.model.router_aux_loss_coef == 0.02  # the override reached the model
    audit = json.loads((tmp_path / "run" / "run.json").read_text())["router_audit"]
    assert audit["passed"] and audit["failures"] == [] and audit["moe_layers"] == [0, 1]
    lb, z = audit["terms"]["load_balancing"], audit["terms"]["z_loss"]
    assert lb["value"] == pytest.approx(2, rel=0.1)  # 4-expert top-2 router at initialisation: about top_k
    assert lb["weighted"] == pytest.approx(0.01 * lb["value"]) and z["weighted"] == pytest.approx(0.001 * z["value"])
    assert z["value"] > 0 and "load_balancing_loss_func" in lb["formula"] and "ST-MoE" in z["formula"]
    for term in (lb, z):
        assert set(term["router_weight_gradient"]) == {"0", "1"}
        assert all(g > 0 for g in term["router_weight_gradient"].values())
    once = audit["counted_once"]
    assert once["output_router_logits"] is False and once["trl_router_aux_loss_coef"] == 0.0
    assert once["model_aux_weight_in_main_loss"] == 0.0
    padding = audit["padding"]
    assert padding["counted_tokens"] == padding["real_tokens"] > 0 and padding["padding_tokens"] > 0
    assert padding["appended_padding_relative_change"] == {"load_balancing": 0.0, "z_loss": 0.0}
    block = [r.getMessage() for r in caplog.records if r.getMessage().startswith("router-loss audit")]
    assert len(block) == 1 and block[0].endswith("passed")


def test_an_aux_loss_counted_twice_stops_before_the_first_update(tmp_path, monkeypatch):
    # TRL's own aux-loss path on, as `training.router_aux_loss_coef` would turn it on (the recipe refuses that key,
    # so the loader is patched): TRL adds 0.02 x the model's aux loss to the main loss, beside the toolkit's term.
    from adapt.config import recipe

    finished = recipe._finished
    monkeypatch.setattr(recipe, "_finished", lambda *a, **k: {**finished(*a, **k), "router_aux_loss_coef": 0.02})
    message = stopped(tmp_path)
    assert "counted twice" in message and "with weight 0.02" in message
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # no step was logged


def _detaching(function, layer_index):
    def patched(router_logits, *args):
        logits = list(router_logits)
        logits[layer_index] = logits[layer_index].detach()
        return function(logits, *args)
    return patched


def test_a_cut_router_gradient_names_the_layer(tmp_path, monkeypatch):
    # Layer 0's logits detached inside the z-loss: its router still gets a gradient through layer 1 (layer 1's input
    # depends on layer 0's routing), so only the per-layer measurement can name it.
    from adapt.trainers import router

    monkeypatch.setattr(router, "router_z_loss", _detaching(router.router_z_loss, 0))
    message = stopped(tmp_path)
    assert "z_loss does not depend on the router logits of layer(s) 0:" in message
    assert "load_balancing" not in message


def test_reentrant_checkpointing_which_records_the_logits_without_gradient_fails_the_audit(tmp_path):
    # TRL forces reentrant checkpointing for PEFT under ZeRO-3: the layers run under no_grad in the forward, so the
    # logits the hooks record carry no gradient and the router terms would train nothing
    message = stopped(tmp_path, "training.activation_checkpointing=true",
                      "training.activation_checkpointing_kwargs={use_reentrant: true}")
    assert "the router logits of layer(s) 0, 1 carry no gradient" in message and "use_reentrant: false" in message


def test_padding_counted_by_a_term_fails_the_audit(tmp_path, monkeypatch):
    from adapt.trainers import router

    z_loss = router.router_z_loss
    monkeypatch.setattr(router, "router_z_loss", lambda logits, mask=None: z_loss(logits))  # the mask ignored
    message = stopped(tmp_path)
    assert "z_loss counts padding" in message and "load_balancing counts padding" not in message


COLLAPSING = dict(lb=0, z=0, rows=32, steps=6, demo_size=True)  # no router loss and a huge, constant learning rate
FAST = ("training.learning_rate=0.3", "training.lr_scheduler_type=constant", "training.logging_steps=3")


def test_a_collapsing_router_warns_in_its_first_logging_window(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="adapt.trainers.router_health"):
        sft_run(tmp_path, *FAST, **COLLAPSING)
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("router collapse")]
    first = [w for w in warnings if w.startswith("router collapse at step 3, layer 0,")]
    assert len(first) == 1 and "of the tokens' top-2" in first[0] and "raise router.load_balancing_weight" in first[0]
    # by step 6 every token of both layers goes to the same two experts: all three figures cross
    for layer in (0, 1):
        last = next(w for w in warnings if w.startswith(f"router collapse at step 6, layer {layer},"))
        assert "6 of 8 experts got no token" in last and "router.entropy_drop" in last and " 100% of" in last
    rows = {r["step"]: r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}
    assert rows[3]["router/layer_0/top_expert_share"] > 0.75 and rows[3]["router/layer_0/dead_fraction"] == 0
    assert rows[6]["router/layer_0/dead_fraction"] == 0.75 and rows[6]["router/layer_1/load_entropy_vs_start"] < 0.5
    assert (tmp_path / "run" / "run.json").exists()  # `warn` trains on


def test_on_collapse_stop_ends_the_run_marked_stopped(tmp_path):
    message = stopped(tmp_path, *FAST, "router.on_collapse=stop", **COLLAPSING)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [3]  # ended at the step that crossed (`warn` went on to 6)
    assert "router.on_collapse: stop" in message and "router collapse at step 3, layer 0" in message
