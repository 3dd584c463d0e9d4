"""Training data from local files: bad rows and missing columns are named, never dropped silently."""

import json

import pytest

from adapt.config.sections import DataSection, DataSource
from adapt.data.sources import DataError, load_training_data


def section(path, **kw):
    return DataSection(sources=[DataSource(path=str(path), **kw)])


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def test_local_jsonl_loads_and_takes_rows(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [ROW] * 5)
    train, held_out = load_training_data(section(path, rows=3), "sft")
    assert len(train) == 3 and held_out is None and train.column_names == ["messages"]


def test_undecodable_line_names_file_and_row(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [ROW, "{not json", ROW])
    with pytest.raises(DataError, match=r"train\.jsonl: row 2: not valid JSON"):
        load_training_data(section(path), "sft")


def test_missing_columns_are_named(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "p", "chosen": "a"}])
    with pytest.raises(DataError, match="needs columns prompt/chosen/rejected; found prompt, chosen"):
        load_training_data(section(path), "dpo")


def test_empty_field_names_the_row(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"},
                                                  {"prompt": "p", "chosen": "", "rejected": "b"}])
    with pytest.raises(DataError, match="row 2: empty `chosen`"):
        load_training_data(section(path), "dpo")


def test_task_source_is_deterministic():
    data = DataSection(sources=[DataSource(task="reverse", rows=20)], eval_rows=5, seed=3)
    a_train, a_eval = load_training_data(data, "sft")
    b_train, b_eval = load_training_data(data, "sft")
    assert a_train.to_list() == b_train.to_list() and a_eval.to_list() == b_eval.to_list()
    assert len(a_train) == 15 and len(a_eval) == 5
