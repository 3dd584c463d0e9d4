"""The tokenized-mixture cache: an unchanged recipe reuses it without tokenizing, every input that changes the rows
changes the key, a build interrupted while writing never leaves an entry that looks complete, and a damaged entry
is rebuilt, saying so, never loaded."""

import json
import shutil

import pytest

from adapt.config import load_recipe
from adapt.data import prepare as prepare_module
from adapt.data.prepare import prepare_data
from adapt.data.sources import DataError
from adapt.data.tokenizer import load_tokenizer
from conftest import TINY_SFT, write_recipe

ROWS = [{"messages": [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": f"{i} {i}"}]}
        for i in range(40)]


@pytest.fixture
def recipe(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    text = TINY_SFT.format(rows=8, lb=0.01, z=0.001, out=tmp_path / "out", steps=1).replace(
        "sources: [{task: reverse, rows: 8}]", f"sources: [{{path: {data}, rows: 30}}]\n  cache_dir: {tmp_path / 'c'}")
    return write_recipe(tmp_path / "r.yaml", text)


def prepared(recipe, *overrides):
    config = load_recipe(recipe, list(overrides))
    return prepare_data(config.stage, config.data, config.sequence_layout(), load_tokenizer(config.model))


def test_second_run_loads_the_cache_without_tokenizing(recipe, monkeypatch):
    first = prepared(recipe)
    assert not first.from_cache and (first.cache_entry / "summary.json").is_file()

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("an unchanged recipe must not be tokenized again")

    monkeypatch.setattr(prepare_module, "tokenize_mixture", no_tokenizing)
    second = prepared(recipe)
    assert second.from_cache and second.cache_entry == first.cache_entry
    assert second.train.to_list() == first.train.to_list() and second.summary == first.summary
    assert second.summary["sources"][0]["rows_kept"] == 30 and second.summary["tokens"] > 0


@pytest.mark.parametrize("change", [
    ["training.max_length=24"],
    ["data.over_length=drop"],
    ["data.seed=1"],
    ["data.sources.0.rows=29"],
    ["data.sources.0.shuffle=true"],
    ["data.eval_rows=4"],
    ["model.add_bos=true"],  # the chat template
    ["training.packing=true", "training.padding_free=true"],
    ["data.assistant_only_loss=false"],
])
def test_anything_that_changes_the_rows_changes_the_key(recipe, change):
    base = prepared(recipe)
    changed = prepared(recipe, *change)
    assert not changed.from_cache and changed.summary["mixture_key"] != base.summary["mixture_key"]


def test_edited_data_file_rebuilds(recipe, tmp_path):
    base = prepared(recipe)
    rows = ROWS[:]
    rows[0] = {"messages": [{"role": "user", "content": "changed"}, {"role": "assistant", "content": "yes"}]}
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    again = prepared(recipe)
    assert not again.from_cache and again.train[0]["input_ids"] != base.train[0]["input_ids"]


def test_cache_off_builds_without_writing(recipe, tmp_path):
    result = prepared(recipe, "data.cache=false")
    assert result.cache_entry is None and not (tmp_path / "c").exists()


def test_interrupted_write_leaves_no_entry(recipe, tmp_path, monkeypatch):
    from datasets import Dataset

    def crash(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Dataset, "save_to_disk", crash)
    with pytest.raises(DataError, match="cannot write the tokenized mixture"):  # one line, naming the cache folder
        prepared(recipe)
    monkeypatch.undo()
    assert list((tmp_path / "c").iterdir()) == []  # no entry and no temporary folder left behind
    assert not prepared(recipe).from_cache  # rebuilt, not half-loaded


def test_template_without_assistant_marks_fails_before_tokenizing(recipe):
    config = load_recipe(recipe)
    tokenizer = load_tokenizer(config.model)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(DataError, match="model.chat_template.*assistant_only_loss"):
        prepare_data(config.stage, config.data, config.sequence_layout(), tokenizer)


def _overwrite_in_place(path, start_fraction=0.5, length=64):
    """The same number of bytes, different ones, written into the file where it is (same size, same inode)."""
    with open(path, "r+b") as f:
        f.seek(int(path.stat().st_size * start_fraction))
        old = f.read(length)
        f.seek(-len(old), 1)
        f.write(bytes(b ^ 0xFF for b in old))


def _arrow(entry):
    return next((entry / "train").glob("*.arrow"))


DAMAGE = {
    "truncated Arrow file": lambda e: (lambda f: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]))(_arrow(e)),
    "same-size byte overwrite": lambda e: _overwrite_in_place(_arrow(e)),
    "bad summary JSON": lambda e: (e / "summary.json").write_text("{" * (e / "summary.json").stat().st_size),
    "missing train/": lambda e: shutil.rmtree(e / "train"),
    "missing state.json": lambda e: (e / "train" / "state.json").unlink(),
    "missing record": lambda e: (e / "files.json").unlink(),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_entry_is_rebuilt_saying_so(recipe, capsys, damage):
    first = prepared(recipe)
    rows, entry = first.train.to_list(), first.cache_entry
    capsys.readouterr()
    damage(entry)
    again = prepared(recipe)
    assert not again.from_cache and again.cache_entry == entry and again.train.to_list() == rows
    [note] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: ")]  # not progress bars
    assert note.startswith(f"note: data.cache_dir {entry.parent}: the cached mixture {entry.name} was damaged (")
    assert note.endswith("; rebuilding it")
    assert prepared(recipe).from_cache  # the rebuilt entry is whole
    assert [p.name for p in entry.parent.iterdir() if p.name.startswith(".")] == []  # nothing set aside is left
