"""Training data from local files and tasks: formats converted, bad rows named (or skipped and counted)."""

import gzip
import json

import pytest

from adapt.config.sections import DataSection, DataSource
from adapt.data.sources import DataError
from conftest import mixture_rows


def section(path, on_bad_row="fail", **kw):
    return DataSection(sources=[DataSource(path=str(path), **kw)], on_bad_row=on_bad_row)


def write_jsonl(path, rows):
    text = "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def test_local_jsonl_loads_and_takes_rows(tmp_path):
    data = mixture_rows(section(write_jsonl(tmp_path / "train.jsonl", [ROW] * 5), rows=3), "sft")
    assert len(data.train) == 3 and data.eval is None and data.train.column_names == ["messages"]
    assert data.sources[0] == {"source": str(tmp_path / "train.jsonl"), "format": "messages",
                                                 "rows_read": 5, "rows_kept": 3, "rows_not_taken": 2, "dropped": {},
                                                 "dropped_examples": [], "duplicates": 4, "decontaminated": []}


def test_gzip_jsonl(tmp_path):
    data = mixture_rows(section(write_jsonl(tmp_path / "train.jsonl.gz", [ROW] * 2)), "sft")
    assert len(data.train) == 2


def test_undecodable_line_names_file_and_row(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [ROW, "{not json", ROW])
    with pytest.raises(DataError, match=r"train\.jsonl: row 2: undecodable line"):
        mixture_rows(section(path), "sft")


BAD_ROWS = [
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}, "empty assistant turn"),
    ({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}, "turns out of order"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                   {"role": "assistant", "content": "c"}]}, "turns out of order"),
    ({"messages": [{"role": "user", "content": "a"}]}, "no final assistant turn"),
    ({"text": "no messages here", "messages": None}, "missing field"),
]


@pytest.mark.parametrize("bad, reason", BAD_ROWS, ids=[r for _, r in BAD_ROWS])
def test_bad_rows_fail_with_file_and_row(tmp_path, bad, reason):
    path = write_jsonl(tmp_path / "train.jsonl", [ROW, ROW, bad])
    with pytest.raises(DataError, match=f"train.jsonl: row 3: {reason}"):
        mixture_rows(section(path), "sft")


def test_bad_rows_skipped_and_counted(tmp_path):
    rows = [ROW] + [bad for bad, _ in BAD_ROWS] + ["{oops"]
    data = mixture_rows(section(write_jsonl(tmp_path / "t.jsonl", rows), on_bad_row="skip"), "sft")
    summary = data.sources[0]
    assert len(data.train) == 1 and summary["rows_read"] == 7 and summary["rows_kept"] == 1
    assert summary["dropped"] == {"empty assistant turn": 1, "turns out of order": 2, "no final assistant turn": 1,
                                  "missing field": 1, "undecodable line (Expecting property name enclosed in double "
                                                      "quotes)": 1}
    assert summary["dropped_examples"][0].startswith("row 2: empty assistant turn")


def test_missing_columns_are_named(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "p", "chosen": "a"}])
    with pytest.raises(DataError, match=r"cannot tell the dpo format from the columns \(chosen, prompt\)"):
        mixture_rows(section(path), "dpo")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nowhere.jsonl: file not found"):
        mixture_rows(section(tmp_path / "nowhere.jsonl"), "sft")


def test_task_source_is_deterministic():
    data = DataSection(sources=[DataSource(task="reverse", rows=20)], eval_rows=5, seed=3)
    a, b = mixture_rows(data, "sft"), mixture_rows(data, "sft")
    assert a.train.to_list() == b.train.to_list() and a.eval.to_list() == b.eval.to_list()
    assert len(a.train) == 15 and len(a.eval) == 5


def test_adapt_data_prints_a_repeatable_summary(tmp_path):
    import subprocess
    import sys

    from conftest import REPO, TINY_SFT, write_recipe

    recipe = write_recipe(tmp_path / "r.yaml", TINY_SFT.format(rows=30, lb=0.01, z=0.001, out=tmp_path / "o",
                                                               steps=1))
    runs = [subprocess.run([sys.executable, "-m", "adapt.cli", "data", "--config", str(recipe)], cwd=REPO,
                           capture_output=True, text=True, timeout=120) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-2000:]
    assert runs[0].stdout == runs[1].stdout
    summary = json.loads(runs[0].stdout)
    assert summary["train_rows"] == 30 and summary["sources"][0]["format"] == "messages"


def test_parquet_rows_are_converted_and_bad_ones_named(tmp_path):
    from datasets import Dataset

    rows = [ROW, {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}, ROW]
    Dataset.from_list(rows).to_parquet(str(tmp_path / "train.parquet"))
    with pytest.raises(DataError, match=r"train.parquet: row 2: empty assistant turn"):
        mixture_rows(section(tmp_path / "train.parquet"), "sft")
    data = mixture_rows(section(tmp_path / "train.parquet", on_bad_row="skip"), "sft")
    assert len(data.train) == 2 and data.sources[0]["dropped"] == {"empty assistant turn": 1}
