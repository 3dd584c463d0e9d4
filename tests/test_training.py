"""Tiny SFT and DPO runs through the real TRL trainers: router losses logged and added, parameters trained, and the
run folder the next stage loads."""

import json
import math

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from adapt.config import load_recipe
from adapt.data.tokenizer import load_tokenizer
from adapt.model.loading import load_model
from adapt.stages import dpo, sft
from conftest import TINY_DPO, TINY_SFT, write_recipe


def sft_config(tmp_path, name="sft", **kw):
    fields = dict(rows=64, lb=0.01, z=0.001, out=tmp_path / name, steps=4)
    fields.update(kw)
    return load_recipe(write_recipe(tmp_path / f"{name}.yaml", TINY_SFT.format(**fields)))


def dpo_config(tmp_path, model, name="dpo", **kw):
    fields = dict(rows=32, lb=0.01, z=0.001, out=tmp_path / name, steps=3, model=model)
    fields.update(kw)
    return load_recipe(write_recipe(tmp_path / f"{name}.yaml", TINY_DPO.format(**fields)))


def metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def near_uniform_router_values(row, top_k=2, experts=4, rel=0.1):
    """A freshly initialised router is close to uniform, where the load-balancing loss is top_k and the z-loss
    (ln experts)^2: a scale error (a sum over layers, tokens or processes instead of a mean) is off by 2x or more."""
    return row["aux_loss"] == pytest.approx(top_k, rel=rel) and row["z_loss"] == pytest.approx(
        math.log(experts) ** 2, rel=rel)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sft")
    config = sft_config(tmp)
    initial = load_model(config.model, load_tokenizer(config.model), seed=config.seed).state_dict()
    initial = {k: v.clone() for k, v in initial.items()}
    sft.run(config)
    return tmp / "sft", initial


def test_sft_logs_router_losses_every_logging_step(sft_run):
    folder, _ = sft_run
    train_rows = [r for r in metrics(folder) if "loss" in r]
    assert len(train_rows) == 4  # logging_steps=1, max_steps=4
    assert near_uniform_router_values(train_rows[0], rel=0.03)  # step 1: before the first update
    for row in train_rows:  # trained with lr 1e-2 for 4 steps, still near uniform
        assert near_uniform_router_values(row, rel=0.15)
        assert {"router/layer_0/load_ratio", "router/layer_1/entropy", "router/load_ratio_max"} <= row.keys()
    stats = [json.loads(line) for line in (folder / "router_stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [1, 2, 3, 4]
    for layer_share in stats[-1]["expert_share"]:
        assert len(layer_share) == 4 and sum(layer_share) == pytest.approx(1.0)


def test_sft_trains_every_parameter_group_router_included(sft_run):
    folder, initial = sft_run
    trained = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    changed = {k for k in initial if not torch.equal(initial[k], trained[k])}
    assert "model.layers.0.mlp.gate.weight" in changed and "model.layers.1.mlp.gate.weight" in changed
    assert "model.layers.0.mlp.experts.gate_up_proj" in changed and "lm_head.weight" in changed


def test_sft_folder_is_a_loadable_model_with_template_and_resolved_recipe(sft_run):
    folder, _ = sft_run
    tok = AutoTokenizer.from_pretrained(folder)
    text = tok.apply_chat_template([{"role": "user", "content": "Reverse: a b c"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == "<|user|>\nReverse: a b c\n<|assistant|>\n"
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.output_router_logits is False  # inference must not pay for (or break on) the aux loss
    resolved = yaml.safe_load((folder / "recipe.yaml").read_text())
    assert resolved["router"] == {"load_balancing_weight": 0.01, "z_loss_weight": 0.001, "log_stats": True,
                                  "audit": True, "dead_expert_fraction": 0.25, "entropy_drop": 0.5,
                                  "top_expert_share": 0.75, "on_collapse": "warn"}
    assert resolved["training"]["learning_rate"] == 1e-2
    run = json.loads((folder / "run.json").read_text())
    assert run["stage"] == "sft" and run["global_step"] == 4


def test_z_loss_is_added_to_the_training_loss(tmp_path):
    from adapt.data.prepare import prepare_data
    from adapt.trainers import AdaptSFTTrainer

    config = sft_config(tmp_path, z=0.5)
    tok = load_tokenizer(config.model)
    model = load_model(config.model, tok, seed=0)
    train = prepare_data(config.stage, config.data, config.sequence_layout(), tok, use_cache=False).train
    trainer = AdaptSFTTrainer(model=model, args=config, train_dataset=train, processing_class=tok)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    model.train()
    torch.manual_seed(0)
    with_z = trainer.compute_loss(model, dict(batch)).item()
    z = trainer._router_metrics["train:z_loss"][-1].item()
    trainer.router.z_loss_weight = 0.0
    without_z = trainer.compute_loss(model, dict(batch)).item()
    assert with_z - without_z == pytest.approx(0.5 * z, rel=1e-4)


def test_switching_the_load_balancing_loss_off_keeps_it_logged(sft_run, tmp_path):
    config = sft_config(tmp_path, lb=0.0, steps=2)
    trainer = sft.run(config)
    assert not trainer.aux_loss_enabled  # TRL no longer adds it ...
    rows = [r for r in metrics(tmp_path / "sft") if "loss" in r]
    with_weight = [r for r in metrics(sft_run[0]) if "loss" in r]
    # ... but the curve is still there: step 1 (same seed, same batch, before any update) logs exactly what the
    # run with the weight on logged
    assert rows[0]["aux_loss"] == pytest.approx(with_weight[0]["aux_loss"], rel=1e-6)
    assert rows[0]["z_loss"] == pytest.approx(with_weight[0]["z_loss"], rel=1e-6)
    assert len(rows) == 2 and near_uniform_router_values(rows[1], rel=0.15)


def test_dpo_from_the_sft_folder(sft_run, tmp_path):
    folder, _ = sft_run
    config = dpo_config(tmp_path, folder)
    before = {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(folder).state_dict().items()}
    trainer = dpo.run(config)
    rows = [r for r in metrics(tmp_path / "dpo") if "loss" in r]
    assert len(rows) == 3
    assert all(near_uniform_router_values(r, rel=0.2) and "router/load_ratio_max" in r for r in rows)
    assert all("rewards/accuracies" in r for r in rows)  # TRL's own DPO metrics are still there
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "dpo").state_dict()
    assert not torch.equal(before["model.layers.0.mlp.gate.weight"], after["model.layers.0.mlp.gate.weight"])
    ref = trainer.ref_model.state_dict()
    assert torch.equal(before["model.layers.0.mlp.gate.weight"], ref["model.layers.0.mlp.gate.weight"])


def test_a_second_run_never_replaces_the_first(sft_run, tmp_path):
    from adapt.config import RecipeError

    folder, _ = sft_run
    weights = (folder / "model.safetensors").read_bytes()
    with pytest.raises(RecipeError, match="already holds a run"):
        load_recipe(folder / "recipe.yaml")
    assert (folder / "model.safetensors").read_bytes() == weights


def test_dpo_reference_log_probs_are_computed_once_and_reused(tmp_path, sft_run, monkeypatch):
    """`training.precompute_ref_log_probs`: TRL caches the reference log-probs beside the tokenized mixture, keyed by
    the data's and the reference model's fingerprints; a second run never runs the reference model."""
    from adapt.trainers import AdaptDPOTrainer

    folder, _ = sft_run
    plain = dpo_config(tmp_path, folder, name="plain", steps=1)
    dpo.run(plain)
    cached = dpo_config(tmp_path, folder, name="cached", steps=1)
    cached.precompute_ref_log_probs = True
    dpo.run(cached)
    assert metrics(tmp_path / "cached")[0]["loss"] == pytest.approx(metrics(tmp_path / "plain")[0]["loss"], rel=1e-5)

    def no_reference_forward(*args, **kwargs):
        raise AssertionError("the reference log-probs were computed again")

    monkeypatch.setattr(AdaptDPOTrainer, "compute_ref_log_probs", no_reference_forward)
    again = dpo_config(tmp_path, folder, name="again", steps=1)
    again.precompute_ref_log_probs = True
    dpo.run(again)
    assert metrics(tmp_path / "again")[0]["loss"] == pytest.approx(metrics(tmp_path / "cached")[0]["loss"], rel=1e-6)
