"""Static checks of recipe values against dataclass fields: unknown keys and wrong types.

Written by hand because neither TRL's `TrlParser` nor `HfArgumentParser.parse_dict` reports *which file and key*
is wrong (they raise on the first unknown key without a path, and coerce or ignore most type errors).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import types
import typing
from typing import Any, Literal, Union


class RecipeError(ValueError):
    """A recipe problem, rendered as one line: `<file>: <key>: <problem>. Fix: <fix>`."""

    def __init__(self, file: str | None, key: str, problem: str, fix: str = ""):
        self.file, self.key, self.problem, self.fix = file, key, problem, fix
        where = f"{file}: " if file else ""
        tail = f". Fix: {fix}" if fix else ""
        super().__init__(f"{where}{key}: {problem}{tail}".replace("\n", " "))


def suggest(key: str, known: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else "remove it (see the recipe reference, docs/recipe-reference.md)"


def describe(annotation: Any) -> str:
    """A short human name for a type annotation (`int`, `float or null`, `one of 'a', 'b'`)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in annotation)
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(annotation, "__name__", str(annotation))


def matches(value: Any, annotation: Any) -> bool:
    """Whether a YAML value fits a dataclass field annotation. Unknown exotic types are accepted."""
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if origin is Literal:
        return value in args
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:  # YAML `1` for a float field is fine; `1e-5` without a dot parses as str in YAML 1.1
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        return not args or all(matches(v, args[0]) for v in value)
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            return False
        key_type, value_type = args if len(args) == 2 else (Any, Any)
        return all(matches(k, key_type) and matches(v, value_type) for k, v in value.items())
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return value in {m.value for m in annotation} or isinstance(value, annotation)
    if dataclasses.is_dataclass(annotation):
        return isinstance(value, dict)
    return True


def coerce_scalar(value: Any, annotation: Any) -> Any:
    """Numbers as the field wants them. YAML 1.1 reads `2e-5` as a string and `0` as an int; a float field takes
    both as floats, because TRL's configs validate types strictly and reject an int where they declare a float."""
    if isinstance(value, str) and not matches(value, annotation) and matches(1.0, annotation):
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(value, int) and not isinstance(value, bool) and not _admits_int(annotation) \
            and matches(1.0, annotation):
        return float(value)
    if isinstance(value, list):  # list[float] fields (DPO's loss_weights): each element likewise
        element = _list_element(annotation)
        if element is not None:
            return [coerce_scalar(v, element) for v in value]
    return value


def _list_element(annotation: Any) -> Any:
    """The element type of a list annotation (also inside `list[X] | None`), or None."""
    if typing.get_origin(annotation) is list and typing.get_args(annotation):
        return typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (Union, types.UnionType):
        found = [e for e in map(_list_element, typing.get_args(annotation)) if e is not None]
        return found[0] if found else None
    return None


def _admits_int(annotation: Any) -> bool:
    if annotation is int:
        return True
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return any(_admits_int(a) for a in typing.get_args(annotation))
    return annotation is Any
