"""The data path at scale: the parent holds no Python list of the rows (its memory is flat in the row count), the
workers give exactly the rows one process gives (so the cache key may leave the worker count out), and a cache hit
does not read the inputs again while still seeing any edit. Speed and memory at the published size: bench/
data_scale.py and bench/RESULTS.md."""

import json
import os
import tracemalloc

import pytest

from adapt.config import load_recipe
from adapt.data.prepare import prepare_data
from adapt.data.tokenizer import load_tokenizer
from conftest import TINY_SFT, write_recipe

QUESTION = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."


def write_rows(path, n: int) -> None:
    """n conversations with every kind of row the summary counts: bad lines, duplicates, a planted benchmark
    prompt, rows over max_length."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            if i % 397 == 5:
                f.write("{not json\n")
                continue
            j = i - 1 if i % 211 == 7 else i  # a duplicate of the previous row
            user = QUESTION if i == 1234 else f"row {j}: repeat the word {'abcdefgh'[j % 8]} " + "x " * (j % 9)
            f.write(json.dumps({"messages": [{"role": "user", "content": user},
                                             {"role": "assistant", "content": f"{j} " * (1 + j % 7)}]}) + "\n")


def recipe(tmp_path, rows: int, *, cache: bool = False):
    data = tmp_path / f"rows-{rows}.jsonl"
    write_rows(data, rows)
    bench = tmp_path / "gsm8k.jsonl"
    bench.write_text(json.dumps({"question": QUESTION, "answer": "#### 72"}) + "\n")
    text = TINY_SFT.format(rows=8, lb=0.01, z=0.001, out=tmp_path / "out", steps=1).replace(
        "sources: [{task: reverse, rows: 8}]",
        f"sources: [{{path: {data}}}]\n  on_bad_row: skip\n  duplicates: drop\n  cache: {str(cache).lower()}\n"
        f"  cache_dir: {tmp_path / 'cache'}\n  decontaminate: {{gsm8k: {bench}}}").replace("max_length: 48",
                                                                                  "max_length: 256")
    return write_recipe(tmp_path / f"r-{rows}.yaml", text)


def prepared(path, *overrides):
    config = load_recipe(path, list(overrides))
    return prepare_data(config.stage, config.data, config.sequence_layout(), load_tokenizer(config.model))


def test_workers_give_exactly_the_rows_and_counts_of_one_process(tmp_path):
    path = recipe(tmp_path, 2600)
    one = prepared(path, "training.packing=true", "training.padding_free=true")
    two = prepared(path, "training.packing=true", "training.padding_free=true", "training.dataset_num_proc=2")
    assert two.summary == one.summary
    source = one.summary["sources"][0]
    assert source["dropped"] == {"benchmark overlap": 1, "duplicate": 13, "undecodable line (Expecting property "
                                 "name enclosed in double quotes)": 7}
    assert source["decontaminated"] == [{"row": 1235, "benchmark": "gsm8k", "item": "0", "overlap": 1.0}]
    assert two.train.to_list() == one.train.to_list()  # packed the same: packing does not depend on num_proc


def test_the_parent_holds_no_list_of_the_rows(tmp_path):
    """The parent's Python allocations while building 4x the rows stay within a small margin of the smaller build's:
    rows are read, converted and tokenized batch by batch into Arrow files, never collected."""
    peaks = {}
    for rows in (1000, 4000):
        path = recipe(tmp_path, rows)
        config = load_recipe(path, [])
        tokenizer = load_tokenizer(config.model)
        tracemalloc.start()
        prepare_data(config.stage, config.data, config.sequence_layout(), tokenizer)
        peaks[rows] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # measured: a peak of 3.4 MB at 1,500 rows and 2.9 MB at 12,000 (batches of 1,000 rows, numpy flags of a few
    # bytes a row); a list of 4,000 rows' token ids alone would be about 6 MB
    assert peaks[4000] < peaks[1000] + 2_000_000, peaks


def test_a_cache_hit_reuses_the_file_hashes_and_still_sees_a_same_size_edit(tmp_path):
    path = recipe(tmp_path, 300, cache=True)
    first = prepared(path)
    memo_file = tmp_path / "cache" / "file-hashes.json"
    memo = json.loads(memo_file.read_text())
    data = tmp_path / "rows-300.jsonl"
    assert memo[str(data.resolve())]["stamp"][0] == data.stat().st_size
    assert prepared(path).from_cache  # unchanged: the remembered hashes give the same key

    stat = data.stat()
    text = data.read_text()
    data.write_text(text.replace("row 10:", "row 99:", 1))  # same size, other content, old times restored
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert data.stat().st_size == stat.st_size and data.stat().st_mtime_ns == stat.st_mtime_ns
    edited = prepared(path)
    assert not edited.from_cache and edited.summary["mixture_key"] != first.summary["mixture_key"]


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".csv", ".json"])
def test_every_file_type_reads_the_same_rows_as_jsonl(tmp_path, suffix):
    import csv
    import gzip

    rows = [{"instruction": f"say {i}", "output": f"{i}!"} for i in range(30)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    other = tmp_path / f"a{suffix}"
    if suffix == ".jsonl.gz":
        with gzip.open(other, "wt", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".csv":
        with open(other, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, ["instruction", "output"])
            writer.writeheader()
            writer.writerows(rows)
    else:
        other.write_text(json.dumps(rows))
    from adapt.config.sections import DataSection, DataSource
    from conftest import mixture_rows

    def read(p):
        return mixture_rows(DataSection(sources=[DataSource(path=str(p))]), "sft")

    base, same = read(tmp_path / "a.jsonl"), read(other)
    assert same.train.to_list() == base.train.to_list() and len(base.train) == 30
    assert [{k: v for k, v in s.items() if k != "source"} for s in same.sources] == \
        [{k: v for k, v in s.items() if k != "source"} for s in base.sources]


def test_an_empty_or_blank_file_is_one_line(tmp_path):
    from adapt.config.sections import DataSection, DataSource
    from adapt.data.sources import DataError, read_mixture

    path = tmp_path / "blank.jsonl"
    path.write_text("\n  \n\r\n")
    with pytest.raises(DataError, match=r"blank.jsonl: no usable rows \(the source is empty\)"):
        read_mixture(DataSection(sources=[DataSource(path=str(path), format="messages")]), "sft")
    with pytest.raises(DataError, match=r"cannot tell the sft format from the columns \(no rows\)"):
        read_mixture(DataSection(sources=[DataSource(path=str(path))]), "sft")
