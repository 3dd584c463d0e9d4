"""Model-config values through the recipe check *and* the model build: every config of every family that the check
accepts builds and trains a step; every one it refuses is refused in one line naming the key (adapt/model/shape.py).
Before, `adapt check` passed configs that then failed in the first forward with a shape error, or tried a 4 TB
allocation."""

import json

import pytest
import torch
import yaml

from adapt.cli import main as adapt
from adapt.config import load_recipe
from adapt.config.families import FAMILIES
from adapt.model.loading import build_model
from adapt.stages.train import check_family
from tiny_families import TINY

CHANGES = {
    "hidden not divisible by heads": dict(hidden_size=30),
    "odd head size": dict(hidden_size=36),
    "three heads": dict(num_attention_heads=3, num_key_value_heads=3),
    "kv heads not dividing heads": dict(num_key_value_heads=3),
    "head_dim given": dict(head_dim=16),
    "odd head_dim": dict(head_dim=7),
    "intermediate 0": dict(intermediate_size=0),
    "expert intermediate 0": dict(moe_intermediate_size=0),
    "expert intermediate 12": dict(moe_intermediate_size=12),
    "shared expert 0": dict(shared_expert_intermediate_size=0),
    "top-k above experts": dict(num_experts_per_tok=9),
    "groups not dividing experts": dict(n_group=3),
    "topk_group above n_group": dict(topk_group=3),
    "top-k above the chosen groups": dict(n_group=4, topk_group=1, num_experts_per_tok=3),
    "all layers dense (first_k)": dict(first_k_dense_replace=2),
    "all layers dense (mlp_only)": dict(mlp_only_layers=[0, 1]),
    "one layer": dict(num_hidden_layers=1),  # dense where the base's layer 0 is
    "sliding window 0": dict(sliding_window=0),
    "pad outside vocabulary": dict(pad_token_id=100000),
    "hidden 1e9": dict(hidden_size=1_000_000_000),  # past any machine (1e6 fits where the head size is given)
}
CASES = [(family, name) for family in TINY for name, change in CHANGES.items()
         if set(change) <= set(getattr(__import__("transformers"), FAMILIES[family].config_class)().to_dict())
         | {"head_dim"}]


def test_the_set_covers_every_family_and_the_reported_cases():
    assert {family for family, _ in CASES} == set(FAMILIES)
    assert len(CASES) >= 100


@pytest.mark.parametrize("family, name", CASES, ids=[f"{f}-{n}" for f, n in CASES])
def test_a_model_config_the_check_accepts_builds_and_trains_a_step(tmp_path, demo_tokenizer, family, name):
    fields = {**TINY[family], **CHANGES[name]}
    if "mlp_only_layers" in fields:  # the base's dense layer 0, within the layers this case has
        fields["mlp_only_layers"] = [i for i in fields["mlp_only_layers"] if i < fields["num_hidden_layers"]]
    recipe = {"stage": "sft", "model": {"architecture": family, "config": fields, "tokenizer": "builtin:demo",
                                        "dtype": "float32"},
              "data": {"sources": [{"task": "reverse", "rows": 8}]},
              "router": {"load_balancing_weight": 0, "z_loss_weight": 0},  # not what is tested, and family-specific
              "training": {"output_dir": str(tmp_path / "out"), "max_steps": 1, "bf16": False, "report_to": []}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    try:
        config = load_recipe(path)
        check_family(config, tokenizer=demo_tokenizer)  # the stage's check, memory enforced
    except (SystemExit, ValueError) as e:  # RecipeError is a ValueError; anything else fails the test
        message = str(getattr(e, "code", e))
        assert "\n" not in message and f"{path}: model." in message, message
        return
    model = build_model(config.model, demo_tokenizer, seed=0)
    ids = torch.tensor([demo_tokenizer("abc def ghi")["input_ids"] * 2])
    out = model(input_ids=ids, labels=ids, output_router_logits=True)
    out.loss.backward()
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("override, message", [
    ("model.config.hidden_size=1000000", "B parameters need"),  # the weights alone, against this machine
    ("model.config.hidden_size=30", "model.config.hidden_size: 30 is not divisible by num_attention_heads 4"),
    ("model.attn_implementation=flash", "model.attn_implementation: 'flash' is not an attention implementation"),
    ("data.eval_rows=8", "data.eval_rows: holds out 8 rows of a mixture of at most 8"),
])
def test_the_reported_impossible_models_are_refused_before_anything_loads(tmp_path, override, message):
    recipe = {"stage": "sft", "model": {"config": TINY["olmoe"], "tokenizer": "builtin:demo", "dtype": "float32"},
              "data": {"sources": [{"task": "reverse", "rows": 8}]},
              "training": {"output_dir": str(tmp_path / "out"), "max_steps": 1, "bf16": False, "report_to": []}}
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(recipe))
    with pytest.raises(SystemExit) as stage:  # the stage: refused before the tokenizer's data or any weight
        adapt(["sft", "--config", str(path), override])
    assert message in str(stage.value.code) and "\n" not in str(stage.value.code)
    assert not (tmp_path / "out").exists()


def test_eval_rows_beyond_a_file_without_a_row_count_is_one_line_when_the_data_is_read(tmp_path):
    rows = tmp_path / "rows.jsonl"
    turn = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    rows.write_text("\n".join(json.dumps(turn) for _ in range(3)) + "\n")
    recipe = {"stage": "sft", "model": {"config": TINY["olmoe"], "tokenizer": "builtin:demo", "dtype": "float32"},
              "data": {"sources": [{"path": str(rows)}], "eval_rows": 3, "cache": False},
              "training": {"output_dir": str(tmp_path / "out"), "max_steps": 1, "bf16": False, "report_to": []}}
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(recipe))
    with pytest.raises(SystemExit) as stop:  # the file's rows are only known once it is read: before the model
        adapt(["data", "--config", str(path)])
    assert str(stop.value.code) == ("error: data.eval_rows: 3 rows held out of a mixture of 3 leaves none to train "
                                    "on. Fix: hold out fewer rows, or add data")
