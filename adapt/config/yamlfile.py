"""Reading a recipe's YAML safely: any file a user points at gives a config dict or one `RecipeError` line, never a
traceback and never minutes of work.

- YAML 1.2 booleans: only true/false. YAML 1.1 also reads yes/no/on/off (and y/n) as booleans, which turned
  `training.save_strategy=no` into False; here they stay strings (a bool field then says what it expects).
- Limits: a recipe is a few kilobytes. A file over `MAX_BYTES`, more than `MAX_ALIASES` aliases, or a document that
  expands to more than `MAX_NODES` values (a "billion laughs" alias bomb) is refused before it is used; so is nesting
  deeper than Python's recursion allows.
- The file must be UTF-8 text (a UTF-8 byte-order mark is accepted).
"""

from __future__ import annotations

import os
import re
from typing import Any

import yaml

from adapt.config.checks import RecipeError

MAX_BYTES = 1 << 20
MAX_ALIASES = 64
MAX_NODES = 100_000
_BOOL = "tag:yaml.org,2002:bool"


class _RecipeLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases = getattr(self, "aliases", 0) + 1
            if self.aliases > MAX_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_ALIASES} aliases")
        return super().compose_node(parent, index)


_RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_RecipeLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def parse(text) -> Any:
    """One YAML document (a recipe or an override's value), with the limits above."""
    value = yaml.load(text, Loader=_RecipeLoader)  # safe: _RecipeLoader is a SafeLoader subclass
    if _expanded_size(value) > MAX_NODES:
        raise yaml.YAMLError(f"expands to more than {MAX_NODES} values (aliases nested inside aliases)")
    return value


def _expanded_size(value: Any) -> int:
    """How many values the document holds with every alias expanded, counted up to just past MAX_NODES."""
    count, stack = 0, [value]
    while stack and count <= MAX_NODES:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def read(file: str) -> dict[str, Any]:
    """The recipe file as a mapping of sections."""
    if not os.path.exists(file):
        raise RecipeError(file, "--config", "recipe file not found", "check the path (recipes live under recipes/)")
    if not os.path.isfile(file):
        raise RecipeError(file, "--config", "not a file", "give the path of a recipe YAML file")
    try:
        size = os.path.getsize(file)
        if size > MAX_BYTES:
            raise RecipeError(file, "--config", f"{size:,} bytes; a recipe is at most {MAX_BYTES:,}",
                              "point --config at the recipe YAML, not at data")
        with open(file, "rb") as f:
            text = f.read().decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise RecipeError(file, "--config", f"not UTF-8 text (byte {e.start})", "save the recipe as UTF-8") from None
    except OSError as e:
        raise RecipeError(file, "--config", f"cannot be read ({e.strerror or e})", "check its permissions") from None
    try:
        raw = parse(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "YAML"
        raise RecipeError(file, where, f"not valid YAML ({getattr(e, 'problem', None) or e})",
                          "fix the syntax") from None
    except RecursionError:
        raise RecipeError(file, "YAML", "nested too deeply", "a recipe is a few levels of mappings") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(file, "(top level)", "a recipe must be a mapping of sections", "see recipes/demo/sft.yaml")
    return raw
