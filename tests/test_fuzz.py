"""Generated malformed recipes and data files through `adapt check` and `adapt data`: every one either passes or
ends with one `error:` line naming the file and the key or row; never a traceback."""

import gzip
import itertools
import json

import pytest
import yaml

from adapt.cli import main as adapt

VALID = {
    "stage": "sft",
    "model": {"config": {"hidden_size": 32, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
                         "num_experts": 4, "num_experts_per_tok": 2, "max_position_embeddings": 64},
              "tokenizer": "builtin:demo", "dtype": "float32"},
    "data": {"sources": [{"task": "reverse", "rows": 8}], "decontaminate": {}},
    "router": {"load_balancing_weight": 0.01, "z_loss_weight": 0.001},
    "parallel": {"expert_parallel_size": 1},
    "hub": {"push": False},
    "experts": {"select": "token_ratio", "threshold": 0.2, "max_rows": 100, "train": ["router"]},
    "training": {"output_dir": "OUT", "max_steps": 1, "learning_rate": 1e-3, "per_device_train_batch_size": 2,
                 "max_length": 48, "bf16": False, "report_to": []},
}
REPLACEMENTS = [None, [], {}, "x", -1, 0, 1e308, float("nan"), True, {"a": [1]}, [1, "a"], "no"]


def mutations():
    """(name, recipe dict or raw bytes): every leaf and every section replaced by values of the wrong kind, keys of
    the wrong type, and files that are not recipes at all."""
    def leaves(node, path=()):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from leaves(v, path + (k,))
        yield path

    for path, value in itertools.product([p for p in leaves(VALID) if p], REPLACEMENTS):
        recipe = json.loads(json.dumps(VALID))
        node = recipe
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        yield ".".join(path) + f"={value!r}", recipe
    for key in (1, None, True, 2.5, "trainig"):
        yield f"top-level key {key!r}", {**VALID, key: {}}
        yield f"training key {key!r}", {**VALID, "training": {**VALID["training"], key: 1}}
    yield "not UTF-8", b"stage: sft\nmodel: {dtype: \xff\xfe}\n"
    yield "UTF-16", "stage: sft\n".encode("utf-16")
    yield "syntax error", b"stage: sft\ntraining: [unclosed\n"
    yield "a list", b"- stage\n- sft\n"
    yield "tabs", b"stage: sft\n\ttraining: {}\n"
    yield "alias bomb", b"a: &a [x,x,x,x,x,x,x,x,x,x]\n" + b"".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" .encode() + b",".join([f"*{chr(97 + i)}".encode()] * 10) + b"]\n"
        for i in range(8)) + b"stage: sft\n"
    yield "deep nesting", b"stage: sft\nmodel: " + b"[" * 5000 + b"]" * 5000 + b"\n"
    yield "too large", b"stage: sft\n" + b"# " + b"x" * (2 << 20) + b"\n"
    yield "empty", b""
    yield "binary", bytes(range(256))


CASES = list(mutations())


def test_there_are_over_a_hundred_generated_recipes():
    assert len(CASES) >= 100


@pytest.mark.parametrize("name, recipe", CASES, ids=[c[0][:60] for c in CASES])
def test_adapt_check_never_shows_a_traceback(tmp_path, capsys, name, recipe):
    path = tmp_path / "recipe.yaml"
    if isinstance(recipe, bytes):
        path.write_bytes(recipe)
    else:
        text = yaml.safe_dump(recipe, allow_unicode=True).replace("OUT", str(tmp_path / "out"))
        path.write_text(text, encoding="utf-8")
    try:
        adapt(["check", "--config", str(path)])
    except SystemExit as e:  # anything else propagates and fails the test with its traceback
        message = str(e.code)
        assert message.startswith(f"error: {path}: ") and "\n" not in message, message
        return
    assert capsys.readouterr().out.startswith("ok: ")


@pytest.mark.parametrize("value", [False, [], 0, "x"], ids=repr)
@pytest.mark.parametrize("section", [*VALID.keys() - {"stage"}])
def test_a_section_that_is_not_a_mapping_is_refused_not_defaulted(tmp_path, capsys, section, value):
    """`router: false` once meant the default router weights (0.01, 0.001), recorded as if asked for."""
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**VALID, section: value}).replace("OUT", str(tmp_path / "out")))
    with pytest.raises(SystemExit) as e:
        adapt(["check", "--config", str(path)])
    assert str(e.value.code).startswith(f"error: {path}: {section}: must be a mapping")


@pytest.mark.parametrize("override", ["training={output_dir: elsewhere, max_steps: 1}", "router={}",
                                      "router=false", "data=null"])
def test_an_override_that_replaces_a_whole_section_is_refused(tmp_path, override):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(VALID).replace("OUT", str(tmp_path / "out")))
    with pytest.raises(SystemExit) as e:
        adapt(["check", "--config", str(path), override])
    section = override.split("=")[0]
    assert str(e.value.code) == (f"error: {path}: {section}: an override replaces one key; this one would replace "
                                 f"the whole section. Fix: override its keys one by one, e.g. `{section}.KEY=VALUE`")


# ------------------------------------------------------------------------------------------------------- data

MESSAGES = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
PAIR = {"prompt": "hi", "chosen": "hello", "rejected": "go away"}


def data_files():
    """(name, file name, bytes, stage)."""
    def line(row):
        return json.dumps(row).encode() + b"\n"
    good = line(MESSAGES)
    yield "number in alpaca input", "a.jsonl", line({"instruction": "x", "input": 5, "output": "y"}) + good, "sft"
    yield "string turn", "m.jsonl", line({"messages": ["hi", "there"]}) + good, "sft"
    yield "messages not a list", "m.jsonl", line({"messages": "hi"}) + good, "sft"
    yield "content a dict", "m.jsonl", line({"messages": [{"role": "user", "content": {"a": 1}},
                                                          {"role": "assistant", "content": "x"}]}) + good, "sft"
    no_role = {"messages": [{"content": "x"}, {"role": "assistant", "content": "y"}]}
    yield "role missing", "m.jsonl", line(no_role) + good, "sft"
    yield "list chosen", "p.jsonl", line({"prompt": "hi", "chosen": [1, 2], "rejected": "no"}) + line(PAIR), "dpo"
    yield "integer HH transcript", "h.jsonl", line({"chosen": 5, "rejected": 7}) + line(
        {"chosen": "\n\nHuman: hi\n\nAssistant: yes", "rejected": "\n\nHuman: hi\n\nAssistant: no"}), "dpo"
    yield "chosen equals rejected", "p.jsonl", line({**PAIR, "rejected": "hello"}) + line(PAIR), "dpo"
    yield "invalid UTF-8 line", "m.jsonl", good + b'{"messages": "\xff\xfe"}\n' + good, "sft"
    yield "U+2028 inside a string", "m.jsonl", line({"messages": [{"role": "user", "content": "a\u2028b\x85c"},
                                                                  {"role": "assistant", "content": "d"}]}), "sft"
    yield "UTF-8 BOM", "m.jsonl", b"\xef\xbb\xbf" + good + good, "sft"
    yield "truncated gzip", "m.jsonl.gz", gzip.compress(good * 50)[:-20], "sft"
    yield "not gzip at all", "m.jsonl.gz", good, "sft"
    yield "JSON syntax error", "m.json", b'[{"messages": [}]', "sft"
    yield "JSON not a list", "m.json", b'{"messages": []}', "sft"
    yield "JSON list of numbers", "m.json", b"[1, 2, 3]", "sft"
    yield "corrupt parquet", "m.parquet", b"PAR1" + bytes(100) + b"PAR1", "sft"
    yield "malformed CSV row", "c.csv", b'instruction,input,output\nx,,y\n"unclosed,a,b\nz,,w\n', "sft"
    yield "CSV with too many fields", "c.csv", b"instruction,input,output\nx,,y,extra\nz,,w\n", "sft"
    yield "CSV invalid UTF-8", "c.csv", b"instruction,input,output\nx\xff,,y\nz,,w\n", "sft"
    yield "empty file", "m.jsonl", b"", "sft"
    yield "only blank lines", "m.jsonl", b"\n\n  \n", "sft"
    yield "a JSON array line", "m.jsonl", b"[1,2]\n" + good, "sft"
    yield "null line", "m.jsonl", b"null\n" + good, "sft"
    yield "binary garbage", "m.jsonl", bytes(range(256)) * 4, "sft"
    yield "unknown columns", "m.jsonl", line({"foo": 1}), "sft"
    yield "duplicates", "m.jsonl", good * 3, "sft"


DATA = list(data_files())


def test_there_are_over_twenty_generated_data_files():
    assert len(DATA) >= 20


def _data_recipe(tmp_path, file, stage, on_bad_row):
    recipe = json.loads(json.dumps(VALID))
    recipe["stage"] = stage
    recipe["data"] = {"sources": [{"path": str(file)}], "on_bad_row": on_bad_row, "cache": False}
    recipe["training"]["output_dir"] = str(tmp_path / "out")
    path = tmp_path / f"{stage}-{on_bad_row}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize("on_bad_row", ["fail", "skip"])
@pytest.mark.parametrize("name, filename, content, stage", DATA, ids=[d[0] for d in DATA])
def test_adapt_data_names_the_file_and_row_or_counts(tmp_path, capsys, name, filename, content, stage, on_bad_row):
    file = tmp_path / filename
    file.write_bytes(content)
    try:
        adapt(["data", "--config", str(_data_recipe(tmp_path, file, stage, on_bad_row))])
    except SystemExit as e:
        message = str(e.code)
        assert message.startswith(f"error: {file}") and "\n" not in message, message
        whole_file = ("cannot be read", "not valid JSON", "expected a JSON list", "not a readable parquet",
                      "no usable rows", "cannot tell the")
        assert ": row " in message or any(p in message for p in whole_file), message
        return
    summary = json.loads(capsys.readouterr().out)
    source = summary["sources"][0]
    assert source["rows_read"] == source["rows_kept"] + sum(source["dropped"].values()) + source["rows_not_taken"]
