"""Recipes: every shipped YAML validates; bad recipes fail fast with one line naming the file, key and fix."""

import pytest
import yaml

from adapt.config import RecipeError, load_recipe
from adapt.config.configs import AdaptDPOConfig, AdaptSFTConfig
from conftest import REPO, TINY_SFT, run_guarded_cli, write_recipe

RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))


def tiny(tmp_path, **kw):
    fields = dict(rows=16, lb=0.01, z=0.001, out=tmp_path / "run", steps=2)
    fields.update(kw)
    return write_recipe(tmp_path / "r.yaml", TINY_SFT.format(**fields))


def test_recipes_exist():
    names = {p.relative_to(REPO / "recipes").as_posix() for p in RECIPES}
    assert {"demo/sft.yaml", "demo/dpo.yaml", "olmoe-1b-7b/sft.yaml", "olmoe-1b-7b/dpo.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.relative_to(REPO / "recipes").as_posix())
def test_every_recipe_validates(path, monkeypatch):
    # Inputs written by an earlier stage (the DPO recipes' SFT folder) do not exist yet, and the GPU recipes ask
    # for bf16, so paths and hardware are not checked here; everything else is. The local recipes name their data
    # through the environment.
    monkeypatch.setenv("ADAPT_DATA", "/data")
    monkeypatch.setenv("OLMOE_TOKENIZER", "/tokenizer.json")
    config = load_recipe(path, check_paths=False, check_hardware=False)
    assert isinstance(config, (AdaptSFTConfig, AdaptDPOConfig))
    assert config.stage == yaml.safe_load(path.read_text())["stage"]
    assert config.router_aux_loss_coef == 0.0  # TRL's aux-loss path is off: the toolkit adds the term itself


def test_environment_variables_name_paths_and_an_unset_one_is_refused(tmp_path, monkeypatch):
    data = tmp_path / "train.jsonl"
    recipe = tiny(tmp_path).read_text().replace("task: reverse", "path: '${MY_DATA}/train.jsonl'")
    path = write_recipe(tmp_path / "env.yaml", recipe)
    monkeypatch.delenv("MY_DATA", raising=False)
    message = _error(path, check_paths=False)
    assert message == (f"{path}: data.sources[0].path: uses ${{MY_DATA}}, which is not set in the environment. Fix: "
                       "export MY_DATA=... (the folder or file it names), or write the path itself")
    monkeypatch.setenv("MY_DATA", str(tmp_path))
    assert load_recipe(path, check_paths=False).data.sources[0].path == str(data)


def _error(path, *overrides, **kw) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, list(overrides), **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_key_names_file_key_and_suggestion(tmp_path):
    path = tiny(tmp_path)
    msg = _error(path, "training.learnig_rate=0.1")
    assert str(path) in msg and "training.learnig_rate" in msg and "learning_rate" in msg
    msg = _error(path, "router.zloss_weight=0.1")
    assert "router.zloss_weight" in msg and "z_loss_weight" in msg
    assert "unknown top-level key" in _error(path, "trainig.seed=1")


def test_renamed_keys_point_to_todays_name(tmp_path):
    msg = _error(tiny(tmp_path), "training.warmup_ratio=0.03")
    assert "training.warmup_ratio" in msg and "warmup_steps" in msg


@pytest.mark.parametrize("override, key", [
    ("training.learning_rate=fast", "training.learning_rate"),
    ("training.num_train_epochs=two", "training.num_train_epochs"),
    ("router.z_loss_weight=[1]", "router.z_loss_weight"),
    ("model.dtype=float8", "model.dtype"),
    ("data.sources.0.rows=many", "data.sources[0].rows"),
    ("training.bf16=1", "training.bf16"),
])
def test_wrong_types_are_rejected(tmp_path, override, key):
    msg = _error(tiny(tmp_path), override)
    assert f": {key}: expected" in msg


def test_missing_data_file(tmp_path):
    path = tiny(tmp_path)
    text = path.read_text().replace("[{task: reverse, rows: 16}]", "[{path: nowhere/train.jsonl}]")
    path.write_text(text)
    msg = _error(path)
    assert "data.sources[0].path" in msg and "nowhere/train.jsonl" in msg


@pytest.mark.parametrize("override, key", [
    ("model.name_or_path=allenai/OLMoE-1B-7B-0924", "model"),
    ("hub.push=true", "hub.repo_id"),
    ("parallel.expert_parallel_size=3", "parallel.expert_parallel_size"),
    ("training.fp16=true training.bf16=true", "training.fp16"),
    ("router.z_loss_weight=-1", "router.z_loss_weight"),
    ("training.router_aux_loss_coef=0.1", "training.router_aux_loss_coef"),
    ("training.deepspeed=x.json", "training.deepspeed"),
    ("parallel.deepspeed=zero9", "parallel.deepspeed"),
    ("stage=ppo", "stage"),
    ("training.loss_reduction=max", "training.loss_reduction"),
    ("training.loss_reduction=sum training.average_tokens_across_devices=true",
     "training.average_tokens_across_devices"),
    ("model.add_bos=true model.chat_template=tokenizer", "model.add_bos"),
])
def test_contradictions(tmp_path, override, key):
    assert f": {key}: " in _error(tiny(tmp_path), *override.split())


@pytest.mark.parametrize("override, key", [("training.loss_reduction=sum", "training.loss_reduction"),
                                          ("data.train_assistant_newline=true", "data.train_assistant_newline")])
def test_sft_only_settings_are_refused_for_dpo(tmp_path, override, key):
    dpo = REPO / "recipes/demo/dpo.yaml"
    msg = _error(dpo, override, f"training.output_dir={tmp_path / 'o'}", check_paths=False)
    assert f": {key}: " in msg and "Fix:" in msg


def test_stage_mismatch_points_to_the_right_command(tmp_path):
    assert "adapt sft" in _error(tiny(tmp_path), stage="dpo")


def test_bf16_without_gpu_is_a_clear_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert "training.bf16" in _error(tiny(tmp_path), "training.bf16=true")


def test_existing_run_is_not_overwritten(tmp_path):
    path = tiny(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.safetensors").write_text("precious")
    assert "training.output_dir" in _error(path)
    assert load_recipe(path, ["overwrite=true"]).overwrite
    assert (tmp_path / "run" / "model.safetensors").read_text() == "precious"  # validation never deletes


def test_overrides_apply(tmp_path):
    config = load_recipe(tiny(tmp_path), ["training.learning_rate=1e-4", "router.z_loss_weight=0",
                                          "data.sources.0.rows=3"])
    assert config.learning_rate == 1e-4 and config.router.z_loss_weight == 0 and config.data.sources[0].rows == 3


def test_resolved_recipe_round_trips(tmp_path):
    config = load_recipe(tiny(tmp_path), ["training.learning_rate=1e-4"])
    again = tmp_path / "resolved.yaml"
    again.write_text(yaml.safe_dump(config.resolved_recipe()))
    reloaded = load_recipe(again)
    assert reloaded.resolved_recipe() == config.resolved_recipe()
    assert reloaded.learning_rate == 1e-4


def test_bad_recipe_fails_before_any_model_data_or_trainer_is_built(tmp_path):
    path = tiny(tmp_path)
    path.write_text(path.read_text().replace("learning_rate:", "learnin_rate:"))
    proc = run_guarded_cli("sft", "--config", str(path))
    assert proc.returncode != 0
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: ") and str(path) in last and "training.learnin_rate" in last
    assert "constructed before" not in proc.stderr
    # The guard itself works: a good recipe does reach a constructor
    good = tiny(tmp_path, out=tmp_path / "good")
    proc = run_guarded_cli("sft", "--config", str(good))
    assert "constructed before the recipe error" in proc.stderr


def test_integers_work_for_every_float_field_of_every_section(tmp_path):
    # YAML reads `0` as an int; TRL's configs and transformers' model configs reject an int where a float is
    # declared (StrictDataclassFieldValidationError), so `router.load_balancing_weight: 0` crashed SFT.
    import dataclasses
    import typing

    from trl import SFTConfig

    from adapt.config.checks import _admits_int, matches
    from adapt.config.sections import SECTION_TYPES

    path = tiny(tmp_path)
    float_fields = []
    for name, cls in SECTION_TYPES.items():
        hints = typing.get_type_hints(cls)
        float_fields += [f"{name}.{f.name}" for f in dataclasses.fields(cls)
                         if matches(1.0, hints[f.name]) and not _admits_int(hints[f.name])]
    hints = typing.get_type_hints(SFTConfig)
    float_fields += [f"training.{f.name}" for f in dataclasses.fields(SFTConfig) if f.init
                     and matches(1.0, hints[f.name]) and not _admits_int(hints[f.name])]
    assert "router.load_balancing_weight" in float_fields and "training.learning_rate" in float_fields
    for dotted in float_fields:
        try:
            config = load_recipe(path, [f"{dotted}=1"])
        except RecipeError as e:  # a value the field does not allow is fine; its type is what is checked here
            assert "expected" not in str(e) and "StrictDataclass" not in str(e), str(e)
            continue
        section, key = dotted.split(".")
        got = getattr(config if section == "training" else getattr(config, section), key)
        assert got == 1.0 and isinstance(got, float), (dotted, got)


def test_router_weights_given_as_integer_zero_train(tmp_path):
    from adapt.stages import sft

    trainer = sft.run(load_recipe(tiny(tmp_path, lb=0, z=0, steps=1)))
    assert trainer.model.config.router_aux_loss_coef == 0.0 and trainer.state.global_step == 1


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("stage: sft\ntraining: [unclosed\n")
    msg = _error(path)
    assert str(path) in msg and "line" in msg


def test_yes_no_on_off_stay_strings(tmp_path):
    # YAML 1.1 reads them as booleans: `training.save_strategy=no` became False
    config = load_recipe(tiny(tmp_path), ["training.save_strategy=no", "training.report_to=[none]"])
    assert config.save_strategy.value == "no"
    path = tiny(tmp_path)
    path.write_text(path.read_text().replace('save_strategy: "no"', "save_strategy: no"))
    assert load_recipe(path).save_strategy.value == "no"
    assert "training.packing: expected bool, got 'yes'" in _error(tiny(tmp_path), "training.packing=yes")
