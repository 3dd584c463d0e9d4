"""Never a broken model reported as a success, and runs that cannot destroy each other: non-finite or out-of-range
recipe numbers are refused, a non-finite loss stops the run, non-finite weights are never marked complete, a second
run to a live run's folder is refused, and an interrupted folder is refused by every reader."""

import dataclasses
import json
import shutil
import subprocess
import typing

import pytest
import torch
from trl import SFTConfig

from adapt.cli import main as adapt_main
from adapt.config import RecipeError, load_recipe
from adapt.config.checks import matches
from adapt.config.sections import SECTION_TYPES
from adapt.runfolder import LOCK, RunLock, incomplete_reason
from conftest import REPO, TINY_SFT, write_recipe


def tiny(tmp_path, **kw):
    fields = dict(rows=16, lb=0.01, z=0.001, out=tmp_path / "run", steps=2)
    fields.update(kw)
    return write_recipe(tmp_path / "r.yaml", TINY_SFT.format(**fields))


def numeric_fields() -> dict[str, bool]:
    """Every numeric field of every section and of SFTConfig -> whether it also takes a string."""
    out = {}
    for prefix, cls in [*SECTION_TYPES.items(), ("training", SFTConfig)]:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if f.init and (matches(1.0, hint) or matches(1, hint) and not matches(True, hint)):
                out[f"{prefix}.{f.name}"] = matches("x", hint)
    return out


def test_nan_and_inf_are_refused_in_every_numeric_field(tmp_path):
    path = tiny(tmp_path)
    fields = numeric_fields()
    assert {"router.load_balancing_weight", "training.learning_rate", "training.max_steps"} <= set(fields)
    for dotted, takes_strings in fields.items():
        # YAML's .nan/.inf, and "nan" as text (a float field reads it as a float; a string field keeps it)
        for value in (".nan", ".inf", "-.inf") + (() if takes_strings else ("nan",)):
            with pytest.raises(RecipeError) as info:
                load_recipe(path, [f"{dotted}={value}"])
            assert f": {dotted}: " in str(info.value), (dotted, value, str(info.value))


@pytest.mark.parametrize("override, key", [
    ("training.learning_rate=1e308", "training.learning_rate"),
    ("training.learning_rate=0", "training.learning_rate"),
    ("training.learning_rate=-1e-5", "training.learning_rate"),
    ("training.num_train_epochs=-1 training.max_steps=-1", "training.num_train_epochs"),
    ("training.max_steps=0", "training.max_steps"),
    ("training.max_steps=100000000000000000000", "training.max_steps"),  # 1e20 as an integer: trained "forever"
    ("training.num_train_epochs=1e20 training.max_steps=-1", "training.num_train_epochs"),
    ("training.per_device_train_batch_size=0", "training.per_device_train_batch_size"),
    ("training.gradient_accumulation_steps=0", "training.gradient_accumulation_steps"),
    ("training.max_grad_norm=-1", "training.max_grad_norm"),
    ("training.eval_strategy=steps training.eval_steps=1", "training.eval_strategy"),
    ("router.load_balancing_weight=1e300", "router.load_balancing_weight"),
    ("model.config.num_experts_per_tok=8", "model.config.num_experts_per_tok"),
    ("model.config.hiden_size=64", "model.config.hiden_size"),
    ("model.config.num_hidden_layers=0", "model.config.num_hidden_layers"),
    ("data.sources.0.task=reverze", "data.sources[0].task"),
    ("data.sources.0.format=chosen_rejected", "data.sources[0].format"),
    ("model.tokenizer=builtin:nope", "model.tokenizer"),
    ("data.sources.0.rows=0", "data.sources[0].rows"),
    ("data.eval_rows=-1", "data.eval_rows"),
])
def test_out_of_range_values_are_refused(tmp_path, override, key):
    with pytest.raises(RecipeError) as info:
        load_recipe(tiny(tmp_path), override.split())
    assert f": {key}: " in str(info.value) and "Fix:" in str(info.value)


def test_a_typo_in_model_config_suggests_the_field(tmp_path):
    with pytest.raises(RecipeError, match="did you mean `hidden_size`"):
        load_recipe(tiny(tmp_path), ["model.config.hiden_size=64"])


def _init_folder(tmp_path, poison):
    """A tiny OLMoE folder with the demo tokenizer, one weight poisoned by `poison(model)`."""
    from adapt.config.sections import ModelSection
    from adapt.data.tokenizer import load_tokenizer
    from conftest import tiny_olmoe

    tokenizer = load_tokenizer(ModelSection(tokenizer="builtin:demo"))
    model = tiny_olmoe(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id)
    with torch.no_grad():
        poison(model)
    model.save_pretrained(tmp_path / "init")
    tokenizer.save_pretrained(tmp_path / "init")
    return tmp_path / "init"


def _from(tmp_path, init):
    text = TINY_SFT.format(rows=16, lb=0.01, z=0.001, out=tmp_path / "run", steps=2)
    text = text.replace("  config: {hidden_size", "  name_or_path: " + str(init) + "\n  xconfig: {hidden_size")
    lines = [line for line in text.splitlines() if "xconfig" not in line and "num_experts: 4" not in line
             and "tokenizer: builtin" not in line]
    return load_recipe(write_recipe(tmp_path / "from.yaml", "\n".join(lines)))


def test_a_non_finite_loss_stops_the_run_naming_the_step(tmp_path):
    from adapt.stages import sft

    init = _init_folder(tmp_path, lambda m: m.lm_head.weight[5].fill_(float("inf")))
    with pytest.raises(SystemExit) as info:
        sft.run(_from(tmp_path, init))
    message = str(info.value)
    assert message.startswith("error: ") and "step 1: the loss is" in message and "\n" not in message
    assert not (tmp_path / "run" / "run.json").exists() and not (tmp_path / "run" / "model.safetensors").exists()


def test_non_finite_weights_are_never_marked_complete(tmp_path, monkeypatch):
    from adapt.hub.folder import PublishError
    from adapt.hub.push import dry_run
    from adapt.stages import sft
    from adapt.trainers import MetricsJSONLCallback

    class CorruptAtTheEnd(MetricsJSONLCallback):  # weights gone bad after the last step, e.g. a bad optimizer update
        def on_train_end(self, args, state, control, model=None, **kwargs):
            with torch.no_grad():
                model.model.embed_tokens.weight[3, 0] = float("nan")

    monkeypatch.setattr(sft, "MetricsJSONLCallback", CorruptAtTheEnd)
    with pytest.raises(SystemExit) as info:
        sft.run(load_recipe(tiny(tmp_path)))
    assert "NaN or inf" in str(info.value) and "model.embed_tokens.weight" in str(info.value)
    assert not (tmp_path / "run" / "run.json").exists()
    with pytest.raises(PublishError, match="cannot be published: .* no run.json"):
        dry_run(tmp_path / "run", tmp_path / "out", "org/name")


def test_a_second_run_to_a_live_runs_folder_is_refused(tmp_path):
    from adapt.stages import sft

    sft.run(load_recipe(tiny(tmp_path)))
    def files():
        return {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir() if p.name != LOCK}
    before = files()
    with RunLock(tmp_path / "run"):  # the first run is still alive
        for overwrite in ([], ["overwrite=true"]):
            with pytest.raises(SystemExit, match="is in use by a running stage"):
                sft.run(load_recipe(tiny(tmp_path), overwrite, check_output=False))
    assert files() == before
    # The lock of a run that ended (or died) does not block: the OS released it
    sft.run(load_recipe(tiny(tmp_path), ["overwrite=true"]))
    assert (tmp_path / "run" / LOCK).exists() and incomplete_reason(tmp_path / "run") is None


def test_a_folder_interrupted_while_saving_is_refused_by_every_reader(tmp_path):
    from adapt.stages import sft

    sft.run(load_recipe(tiny(tmp_path)))
    run = tmp_path / "run"
    interrupted = tmp_path / "interrupted"
    shutil.copytree(run, interrupted)
    (interrupted / "run.json").unlink()  # killed before the marker: weights, no record of completion
    (interrupted / "tokenizer.json").unlink()
    assert "no run.json" in incomplete_reason(interrupted)

    commands = {
        "push": ["push", str(interrupted), "--repo-id", "org/name", "--dry-run", str(tmp_path / "out")],
        "eval": ["eval", "--model", str(interrupted), "--tasks", "reverse", "--limit", "2"],
        "dpo": ["check", "--config", str(REPO / "recipes/demo/dpo.yaml"), f"model.name_or_path={interrupted}",
                f"training.output_dir={tmp_path / 'dpo'}"],
    }
    for name, args in commands.items():  # in-process: anything but the one-line exit fails with its traceback
        with pytest.raises(SystemExit) as stop:
            adapt_main(args)
        message = str(stop.value.code)
        assert message.startswith("error: ") and "\n" not in message and "no run.json" in message, name
    assert not (tmp_path / "out").exists()
    # The complete folder is accepted, and its record lists what it holds
    record = json.loads((run / "run.json").read_text())
    assert record["complete"] and "model.safetensors" in record["files"] and "tokenizer.json" in record["files"]


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs: a disk that fills up. Mounting needs root; elsewhere the test skips, saying so."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root): the full-disk path is not exercised")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_is_one_line_and_leaves_nothing_marked_complete(tmp_path, small_disk):
    from adapt.data.prepare import prepare_data
    from adapt.data.sources import DataError
    from adapt.data.tokenizer import load_tokenizer
    from adapt.stages import sft

    with pytest.raises(SystemExit) as info:  # the weights (about 100 KB) do not fit
        sft.run(load_recipe(tiny(tmp_path, out=small_disk / "run")))
    message = str(info.value)
    assert message.startswith(f"error: {small_disk / 'run'}: writing the run failed") and "\n" not in message
    assert "No space left" in message and not (small_disk / "run" / "run.json").exists()

    shutil.rmtree(small_disk / "run")
    (small_disk / "ballast").write_bytes(b"x" * 60_000)  # the cache's entry does not fit either
    config = load_recipe(tiny(tmp_path), [f"data.cache_dir={small_disk / 'cache'}"])
    with pytest.raises(DataError, match="cannot write the tokenized mixture") as info:
        prepare_data(config.stage, config.data, config.sequence_layout(), load_tokenizer(config.model))
    assert "\n" not in str(info.value)
    assert [p.name for p in (small_disk / "cache").iterdir()] == []  # no temporary folder left behind


def test_an_unwritable_output_dir_is_one_line(tmp_path):
    from adapt.runfolder import RunFolderError

    (tmp_path / "a-file").write_text("x")
    with pytest.raises(RecipeError, match="a-file is a file, not a folder"):  # refused by the recipe check
        load_recipe(tiny(tmp_path, out=tmp_path / "a-file" / "run"))
    with pytest.raises(RunFolderError, match="cannot write the run folder") as info:  # and when the stage claims it
        RunLock(tmp_path / "a-file" / "run").acquire()
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------- resuming with another recipe

@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    """A finished one-step run with its step-1 checkpoint (and the recipe that made it)."""
    from adapt.stages import sft

    tmp = tmp_path_factory.mktemp("resume")
    recipe = tiny(tmp, rows=8, steps=1)
    sft.main(["--config", str(recipe), "training.save_strategy=steps", "training.save_steps=1"])
    return recipe, tmp / "run"


def _resume(recipe, *args):
    """`adapt sft` resuming from the latest checkpoint, in process: None when it ran, else its exit message."""
    from adapt.stages import sft

    try:
        sft.main(["--config", str(recipe), "training.save_strategy=steps", "training.save_steps=1",
                  "training.resume_from_checkpoint=latest", *args])
    except SystemExit as e:
        return str(e.code)
    return None


@pytest.mark.parametrize("change, key", [
    ("training.learning_rate=0.02", "training.learning_rate"),
    ("training.lr_scheduler_type=cosine", "training.lr_scheduler_type"),
    ("training.per_device_train_batch_size=4", "training.per_device_train_batch_size"),
    ("training.max_length=40", "training.max_length"),
    ("data.sources.0.rows=9", "data.sources[0].rows"),
    ("router.load_balancing_weight=0.1", "router.load_balancing_weight"),
    ("model.config.hidden_size=64", "model.config.hidden_size"),  # was a `size mismatch` traceback
    ("training.max_steps=2", "training.max_steps"),  # even this one is said: the schedule's length changes
])
def test_a_resume_with_a_changed_recipe_is_refused_naming_the_key(checkpointed, change, key):
    recipe, run = checkpointed
    before = sorted(p.name for p in run.rglob("*"))
    message = _resume(recipe, change)
    assert message.startswith(f"error: {recipe}: training.resume_from_checkpoint: {run / 'checkpoint-1'} was trained "
                              f"with another recipe ({key}: ") and "\n" not in message
    assert "Fix: " in message and "--allow-changed KEY" in message
    assert sorted(p.name for p in run.rglob("*")) == before  # refused before anything was written


def test_a_resume_continues_with_the_changes_allowed(checkpointed, tmp_path):
    recipe, run = checkpointed
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    here = [f"training.output_dir={copy}"]  # where the run is written may change freely, so may logging
    assert _resume(recipe, *here, "--allow-changed", "training.max_step").startswith(
        f"error: {recipe}: --allow-changed training.max_step: not a key of the recipe. Fix: ")
    # a model shape let through is still one line, from the weights, and nothing is trained
    message = _resume(recipe, *here, "model.config.hidden_size=64", "--allow-changed", "model.config")
    assert message.startswith(f"error: {copy / 'checkpoint-1'}: the checkpoint is not of the model this run trains ("
                              ) and "in the checkpoint and [" in message and "\n" not in message
    (copy / "checkpoint-1" / "adapt_recipe.json").rename(copy / "saved-recipe.json")  # a checkpoint of an older adapt
    assert "has no record of the recipe it was trained with" in _resume(recipe, *here)
    (copy / "saved-recipe.json").rename(copy / "checkpoint-1" / "adapt_recipe.json")
    assert _resume(recipe, *here, "training.logging_steps=2", "training.max_steps=2",
                   "--allow-changed", "training.max_steps") is None
    logged = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2]  # step 1 from the first run, step 2 resumed


def test_saved_weights_follow_the_umask_like_every_other_file(checkpointed):
    _, run = checkpointed
    for folder in (run, run / "checkpoint-1"):
        modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir() if p.is_file()}
        assert modes["model.safetensors"] == modes["config.json"], modes  # safetensors wrote 0600
