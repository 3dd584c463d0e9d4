"""The code's shape: imports between the project's modules form no cycle, training data does not import the
evaluation harness, each package imports only its own layer and the layers below it, and no project file names the
developers' ../shared folder."""

import ast
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

ROOTS = {"adapt": REPO / "adapt", "adapt_eval": REPO / "eval" / "adapt_eval"}

# The layers, bottom to top: a module may import its own layer and the layers below. At the bottom, what imports
# nothing of the project: `tasks` (the shape shared by training data and evaluation), the run folder's rules and the
# parallel layouts. The harness sits above the model and data layers and below the stages, the publishing step and
# the command line.
LAYERS = [
    {"adapt", "adapt.tasks", "adapt.runfolder", "adapt.interrupts", "adapt.console", "adapt.parallel"},
    {"adapt.config"},
    # adapt.parallel.autoep converts a model of a family to expert parallelism and back: it reads the family table
    {"adapt.data", "adapt.model", "adapt.losses", "adapt.parallel.autoep"},
    {"adapt.trainers"},
    {"adapt_eval"},
    {"adapt.hub", "adapt.export"},
    {"adapt.stages"},
    {"adapt.cli"},
]


def module_name(path: Path) -> str:
    for top, root in ROOTS.items():
        if path.is_relative_to(root):
            parts = [top, *path.relative_to(root).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise ValueError(path)


def project_imports() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its body (function-level imports included)."""
    modules = {module_name(p): p for root in ROOTS.values() for p in root.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from package import submodule` imports the submodule; `from module import name`, the module
                submodules = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
                targets = submodules if len(submodules) == len(node.names) else [node.module, *submodules]
            else:
                continue
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def layer_of(module: str) -> int:
    packages = sorted((p for layer in LAYERS for p in layer), key=len, reverse=True)
    package = next(p for p in packages if module == p or module.startswith(p + "."))
    return next(i for i, layer in enumerate(LAYERS) if package in layer)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert cycles(project_imports()) == []


def test_training_data_does_not_import_the_evaluation_harness():
    graph = project_imports()
    assert sorted((m, t) for m, ts in graph.items() if m.startswith("adapt.data") for t in ts
                  if t.startswith("adapt_eval")) == []


def test_imports_point_down_the_layers():
    upward = sorted((m, t) for m, ts in project_imports().items() for t in ts if layer_of(t) > layer_of(m))
    assert upward == []


def test_the_recipe_vocabulary_is_what_the_layers_above_implement():
    from adapt.config import benchmarks, sections
    from adapt.data import decontam, formats, tokenizer

    assert (set(formats.SFT_FORMATS), set(formats.PREFERENCE_FORMATS)) == (set(sections.SFT_FORMATS),
                                                                           set(sections.PREFERENCE_FORMATS))
    assert set(tokenizer.BUILTIN_TOKENIZERS) == set(sections.BUILTIN_TOKENIZERS)
    assert set(decontam.READERS) == set(benchmarks.LOCAL_FORMATS)  # every benchmark's local layout is read
    assert set(sections.DECONTAMINATION_BENCHMARKS) == set(benchmarks.BENCHMARKS)


def test_the_harness_is_the_package_adapt_eval_and_nothing_is_called_eval():
    assert [p.name for p in (REPO / "eval").iterdir() if p.suffix == ".py"] == []
    assert (REPO / "eval" / "adapt_eval" / "__init__.py").is_file()
    assert module_name(REPO / "eval" / "adapt_eval" / "benchmarks" / "gsm8k.py") == "adapt_eval.benchmarks.gsm8k"


def test_no_project_file_refers_to_the_developers_shared_folder():
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    offending = [f for f in listed.stdout.split() if not f.startswith("tests/") and (REPO / f).is_file()
                 and "../shared" in (REPO / f).read_text(encoding="utf-8", errors="replace")]
    assert offending == []
