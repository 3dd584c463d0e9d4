"""Bad inputs to the commands that read a finished model (export, eval, eval score, analyze, push): each ends in one
`error:` line naming the input, before any work and without a traceback. The folders are damaged the ways a disk, a
copy or a hand edit damages them: a corrupt or truncated safetensors file, bytes overwritten in place (NaN weights of
the same size), a run record missing or stopped, paths of the wrong kind."""

import json
import shutil
import struct

import pytest
import torch

from adapt.cli import main as adapt
from adapt.runfolder import STOPPED, write_marker, write_stopped

COMMANDS = {
    "export gguf": lambda model, tmp: ["export", "gguf", model, "--outfile", str(tmp / "m.gguf")],
    "export ollama": lambda model, tmp: ["export", "ollama", model, "--output", str(tmp / "ollama")],
    "eval": lambda model, tmp: ["eval", "--model", model, "--tasks", "gsm8k", "--limit", "1",
                                "--output", str(tmp / "eval")],
    "analyze": lambda model, tmp: ["analyze", "--models", f"a={model}", "--data", "d=task:reverse",
                                   "--output", str(tmp / "analysis")],
    "push": lambda model, tmp: ["push", model, "--repo-id", "me/model", "--dry-run", str(tmp / "push")],
}


@pytest.fixture(scope="module")
def good(tmp_path_factory, demo_tokenizer):
    """A complete run folder: a tiny OLMoE, the demo tokenizer, and the run record listing both."""
    from transformers import OlmoeConfig, OlmoeForCausalLM

    folder = tmp_path_factory.mktemp("bad-inputs") / "run"
    torch.manual_seed(0)
    config = OlmoeConfig(vocab_size=len(demo_tokenizer), hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=4, num_experts=4, num_experts_per_tok=2, pad_token_id=1, eos_token_id=0,
                         bos_token_id=0)
    OlmoeForCausalLM(config).save_pretrained(folder)
    demo_tokenizer.save_pretrained(folder)
    (folder / "recipe.yaml").write_text("stage: sft\n")
    write_marker(folder, {"stage": "sft", "global_step": 1})
    return folder


def _data_start(path) -> int:
    return 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


def damage(folder, how: str) -> None:
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if how == "header length":
        data[:8] = struct.pack("<Q", 2**40)
    elif how == "header bytes":
        data[8:24] = b"\xff" * 16
    elif how == "truncated":
        data = data[:-100]
    elif how == "extended":
        data += b"\0" * 64
    elif how == "empty":
        data = bytearray()
    elif how == "NaN overwrite":  # the same size: the record and the header cannot tell; the values can
        start = _data_start(weights)
        data[start + 64:start + 512] = b"\xff" * 448
    elif how == "no run.json":
        (folder / "run.json").unlink()
        return
    elif how == "stopped":
        (folder / "run.json").unlink()
        write_stopped(folder, "stopped by SIGTERM at step 3; resume with `adapt sft ...`", 3)
        return
    elif how == "weights missing":
        weights.unlink()
        return
    weights.write_bytes(bytes(data))


RUN_DAMAGE = ["header length", "header bytes", "truncated", "extended", "empty", "NaN overwrite", "no run.json",
              "stopped", "weights missing"]
# a folder without run records has no sizes to compare with: the headers and values still tell
PLAIN_DAMAGE = ["header bytes", "truncated", "empty", "NaN overwrite"]
EXPECTED = {"header length": "not a safetensors file", "header bytes": "safetensors header is corrupt",
            "truncated": "changed", "extended": "changed", "empty": "changed",
            "NaN overwrite": "NaN or inf", "no run.json": "no run.json", "stopped": "stopped by SIGTERM at step 3",
            "weights missing": "model.safetensors missing"}
PLAIN_EXPECTED = {"truncated": "truncated or overwritten", "empty": "not a safetensors file"}

CASES = ([(command, "run", how) for command in COMMANDS for how in RUN_DAMAGE]
         + [(command, "plain", how) for command in COMMANDS for how in PLAIN_DAMAGE])


def _one_line_error(argv) -> str:
    with pytest.raises(SystemExit) as stop:  # anything else propagates, with its traceback, and fails the test
        adapt(argv)
    message = str(stop.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def test_the_set_is_large():
    assert len(CASES) + len(PATH_CASES) >= 40


@pytest.mark.parametrize("command, kind, how", CASES, ids=[" / ".join(c) for c in CASES])
def test_a_damaged_model_folder_is_one_line_naming_it(good, tmp_path, command, kind, how):
    folder = tmp_path / "model"
    shutil.copytree(good, folder)
    if kind == "plain":  # a plain save_pretrained folder: no run record, the headers and values are still read
        for name in ("run.json", "recipe.yaml"):
            (folder / name).unlink()
    damage(folder, how)
    message = _one_line_error(COMMANDS[command](str(folder), tmp_path))
    assert str(folder) in message
    expected = (PLAIN_EXPECTED.get(how) if kind == "plain" else None) or EXPECTED[how]
    assert expected in message, message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing written


PATH_CASES = [
    ("export ollama --output is a file", lambda g, t: ["export", "ollama", g, "--output", str(t / "file")],
     "is a file"),
    ("export gguf --outfile is a folder", lambda g, t: ["export", "gguf", g, "--outfile", str(t / "dir")],
     "is a folder"),
    ("eval --output is a file", lambda g, t: ["eval", "--model", g, "--tasks", "gsm8k", "--output", str(t / "file")],
     "is a file"),
    ("analyze --output is a file", lambda g, t: ["analyze", "--models", f"a={g}", "--data", "d=task:reverse",
                                                 "--output", str(t / "file")], "is a file"),
    ("analyze --output under a file", lambda g, t: ["analyze", "--models", f"a={g}", "--data", "d=task:reverse",
                                                    "--output", str(t / "file" / "x")], "is a file"),
    ("eval score --per-item is a folder", lambda g, t: ["eval", "score", "--task", "gsm8k", "--predictions",
                                                        str(t / "file"), "--per-item", str(t / "dir")], "is a folder"),
    ("eval score --predictions is a folder", lambda g, t: ["eval", "score", "--task", "gsm8k", "--predictions",
                                                           str(t / "dir")], "is a folder"),
    ("analyze a missing folder", lambda g, t: ["analyze", "--models", f"a={t / 'nothing'}", "--data",
                                               "d=task:reverse", "--output", str(t / "out")], "no such folder"),
    ("analyze a missing relative folder", lambda g, t: ["analyze", "--models", "a=runs/nothing/sft", "--data",
                                                        "d=task:reverse", "--output", str(t / "out")],
     "no such folder runs/nothing/sft"),
    ("eval a missing folder", lambda g, t: ["eval", "--model", str(t / "nothing"), "--tasks", "gsm8k"],
     "no such folder"),
    ("eval a file as the model", lambda g, t: ["eval", "--model", str(t / "file"), "--tasks", "gsm8k",
                                               "--output", str(t / "out")], "is a file"),
    ("analyze a bad JSONL line", lambda g, t: ["analyze", "--models", f"a={g}", "--data", f"d={t / 'bad.jsonl'}",
                                               "--output", str(t / "out")], "bad.jsonl: line 2: not valid JSON"),
    ("analyze a JSONL line that is a list", lambda g, t: ["analyze", "--models", f"a={g}", "--data",
                                                          f"d={t / 'list.jsonl'}", "--output", str(t / "out")],
     "list.jsonl: line 1: expected a JSON object"),
    ("push a bad metrics.jsonl line", lambda g, t: ["push", str(t / "records"), "--repo-id", "me/m", "--dry-run",
                                                    str(t / "out")], "metrics.jsonl: line 2: not valid JSON"),
    ("analyze --run a bad router_stats line", lambda g, t: ["analyze", "--run", str(t / "records"), "--output",
                                                            str(t / "out")], "router_stats.jsonl: line 1: expected"),
    ("analyze a non-UTF-8 file", lambda g, t: ["analyze", "--models", f"a={g}", "--data", f"d={t / 'latin.jsonl'}",
                                               "--output", str(t / "out")], "latin.jsonl: not UTF-8"),
]


@pytest.mark.parametrize("name, argv, expected", PATH_CASES, ids=[c[0] for c in PATH_CASES])
def test_paths_of_the_wrong_kind_are_one_line(good, tmp_path, name, argv, expected):
    (tmp_path / "file").write_text("the user's file")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "keep").write_text("the user's file")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{"prompt": \n')
    (tmp_path / "list.jsonl").write_text('["a"]\n')
    (tmp_path / "latin.jsonl").write_bytes(b'{"prompt": "caf\xe9"}\n')
    shutil.copytree(good, tmp_path / "records")  # a complete run whose records were edited by hand
    (tmp_path / "records" / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss"\n')
    (tmp_path / "records" / "router_stats.jsonl").write_text('[1, 2]\n')
    message = _one_line_error(argv(str(good), tmp_path))
    assert expected in message, message
    assert (tmp_path / "file").read_text() == "the user's file" and (tmp_path / "dir" / "keep").is_file()
    assert not (tmp_path / "out").exists()


def test_a_stopped_run_names_why_in_every_reader(good, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(good, folder)
    damage(folder, "stopped")
    assert json.loads((folder / STOPPED).read_text())["global_step"] == 3
    for command in COMMANDS.values():
        assert "resume with `adapt sft ...`" in _one_line_error(command(str(folder), tmp_path))
