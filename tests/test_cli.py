"""The `adapt` command table: every subcommand resolves to a parser and a run function, `--help` answers without
loading the heavy libraries, `--version` says the installed version, and an unknown command is one line."""

import subprocess
import sys
import tomllib

import pytest

from adapt import cli
from conftest import REPO


@pytest.mark.parametrize("command", cli.COMMANDS, ids=lambda c: c.name)
def test_every_command_has_a_parser_and_a_run_function(command):
    parser = cli._load(command.parser)()
    assert parser.prog == f"adapt {command.name}"
    assert callable(cli._load(command.run))


def test_the_longest_command_name_wins():
    command, rest = cli.find(["eval", "score", "--task", "gsm8k"])
    assert (command.name, rest) == ("eval score", ["--task", "gsm8k"])
    command, rest = cli.find(["eval", "--model", "m"])
    assert (command.name, rest) == ("eval", ["--model", "m"])


def adapt(*args, code=""):
    """`adapt ARGS` in a fresh interpreter, then `code` (which may inspect sys.modules)."""
    script = f"import sys\nfrom adapt.cli import main\nmain({list(args)!r})\n{code}"
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", ["sft", "dpo", "check", "data", "eval", "eval score", "report", "analyze", "demo",
                                     "push", "export gguf", "export ollama"])
def test_help_loads_no_heavy_library(command):
    heavy = ("torch", "transformers", "trl", "lm_eval", "datasets", "deepspeed", "gguf", "llama_cpp")
    run = adapt(*command.split(), "--help", code=f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    assert run.returncode == 0, run.stderr
    assert f"usage: adapt {command}" in run.stdout
    assert run.stdout.strip().splitlines()[-1] == "[]"


def test_overview_lists_every_command_and_version_is_the_installed_one():
    overview = adapt("--help").stdout
    assert [line.split()[0] for line in overview.splitlines() if line.startswith("  ")] == \
        [c.name.split()[0] for c in cli.COMMANDS]
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert adapt("--version").stdout == f"adapt {version}\n"


def test_unknown_command_is_one_line():
    run = adapt("trian")
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr == ("error: unknown command 'trian'; one of: analyze, check, data, demo, dpo, eval, eval score, "
                          "export gguf, export ollama, push, report, sft\n")
