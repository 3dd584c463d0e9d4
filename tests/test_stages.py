"""The stage table (adapt/config/stages.py) is the one place a stage's name decides anything: its names are the
configs' and the command line's, every name it gives resolves to what it says, and no other code compares a stage's
name. And the loss-scaling rule (adapt/config/loss_scale.py) is decided once, with the recipe."""

import importlib
import inspect
import re

import pytest
import trl

from adapt.cli import COMMANDS
from adapt.config import load_recipe
from adapt.config.configs import STAGE_CONFIGS, TRL_CONFIGS
from adapt.config.loss_scale import loss_scale
from adapt.config.sections import PREFERENCE_FORMATS, SFT_FORMATS
from adapt.config.stages import STAGES
from adapt.tasks import get_task
from conftest import REPO, write_recipe

NAMES = "|".join(STAGES)
# A comparison with a stage's name, either way round, or a membership test in a literal list of them.
BRANCH = re.compile(rf"""(==|!=)\s*["']({NAMES})["']|["']({NAMES})["']\s*(==|!=)|\bin\s*[(\[{{]\s*["']({NAMES})["']""")


def test_the_stage_names_are_the_configs_and_the_commands():
    commands = {c.name: c for c in COMMANDS}
    assert set(STAGES) == set(STAGE_CONFIGS) == set(TRL_CONFIGS)
    for name, stage in STAGES.items():
        assert commands[name].run == f"{stage.module}:main", name
        assert STAGE_CONFIGS[name].__name__ == stage.config_class
        assert issubclass(STAGE_CONFIGS[name], TRL_CONFIGS[name])


def test_every_name_in_the_table_resolves_to_what_the_record_says():
    for name, stage in STAGES.items():
        module, attr = stage.trainer.split(":")
        trainer = getattr(importlib.import_module(module), attr)
        assert issubclass(trainer, getattr(trl, stage.trl_trainer)), name
        stage_module = importlib.import_module(stage.module)
        assert trainer.__name__ in inspect.getsource(stage_module), f"{stage.module} does not run {stage.trainer}"
        assert set(stage.formats) <= set(SFT_FORMATS) | set(PREFERENCE_FORMATS)
        task = get_task("reverse")
        rows = getattr(task, stage.task_rows)("train", 2, 0)
        assert set(stage.row_fields) <= set(rows[0]), name
        assert stage.follows is None or stage.follows in STAGES


def test_no_stage_name_is_compared_outside_the_table():
    assert BRANCH.search('if stage == "dpo":') and BRANCH.search("x = 'sft' != s") and BRANCH.search(
        'if stage in ("sft", "dpo"):')
    table = REPO / "adapt" / "config" / "stages.py"
    files = [p for root in (REPO / "adapt", REPO / "eval" / "adapt_eval") for p in root.rglob("*.py") if p != table]
    found = [f"{p.relative_to(REPO)}:{i}: {line.strip()}" for p in files
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if BRANCH.search(line)]
    assert not found, "a stage's name decides something outside adapt/config/stages.py:\n" + "\n".join(found)


def test_the_loss_rule_is_decided_with_the_recipe(tmp_path):
    path = write_recipe(tmp_path / "s.yaml", """
stage: sft
model: {config: {hidden_size: 16}, tokenizer: "builtin:demo"}
data: {sources: [{task: reverse, rows: 4}]}
training: {output_dir: OUT, loss_reduction: sum, bf16: false}
""".replace("OUT", str(tmp_path / "run")))
    summed = load_recipe(path, check_output=False)
    assert summed.loss_scale == loss_scale(STAGES["sft"], "sum", True)
    assert summed.average_tokens_across_devices is False  # set from the rule, which turns it off under `sum`
    assert (summed.loss_scale.main_items(37), summed.loss_scale.router_divisor(4, 1),
            summed.loss_scale.total_divisor(4, True), summed.loss_scale.total_divisor(4, False)) == (1, 1, 4, 1)
    mean = load_recipe(path, ["training.loss_reduction=mean"], check_output=False).loss_scale
    assert (mean.main_items(37), mean.router_divisor(4, 37), mean.router_divisor(4, None),
            mean.total_divisor(4, True)) == (37, 4, 1, 1)
    assert mean.average_tokens_across_devices is True  # TRL's default stands
    dpo = loss_scale(STAGES["dpo"], "mean", True)
    assert (dpo.router_divisor(4, 37), dpo.total_divisor(4, True)) == (1, 1)
    assert "summed token cross-entropy" in summed.router_loss_scale()


@pytest.mark.parametrize("key", ["data.assistant_only_loss=true", "data.train_assistant_newline=true",
                                 "training.loss_reduction=sum"])
def test_a_token_label_setting_is_refused_where_the_stage_has_no_token_labels(tmp_path, key):
    from adapt.config import RecipeError

    path = write_recipe(tmp_path / "d.yaml", f"""
stage: dpo
model: {{config: {{hidden_size: 16}}, tokenizer: "builtin:demo"}}
data: {{sources: [{{task: reverse, rows: 4}}]}}
training: {{output_dir: {tmp_path / "run"}, bf16: false}}
""")
    with pytest.raises(RecipeError, match=re.escape(key.split("=")[0]) + ".*the dpo stage's loss is"):
        load_recipe(path, [key], check_output=False)
