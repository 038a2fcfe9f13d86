"""Overrides: options given as flags on the command line (`FlagValues`, as typed) or as a Python mapping, each
value read as its option's type would be read from YAML, and named in messages by where it came from (--train.lr, or
overrides['train.lr'])."""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Mapping
from typing import Any

import yaml

from tunelab.errors import ConfigError

NULL = ("null", "Null", "NULL", "~")


def _arms(hint: Any) -> set:
    """The types a hint allows: a union's members, or the hint itself."""
    return set(typing.get_args(hint)) if typing.get_origin(hint) in (typing.Union, types.UnionType) else {hint}


def unsets_by_null(hint: Any) -> bool:
    """Is an option of type `hint` an optional text, which a flag's null (or ~) unsets (see flag_text)?"""
    return _arms(hint) == {str, type(None)}


def flag_text(text: str) -> str | None:
    """A command-line flag's text for an optional text option: null (or ~) unsets it, as in a YAML file; any other
    text is passed on as typed. Only the command line reads text so: in the Python API a str is the text itself
    ('null' included) and None unsets."""
    return None if text.strip() in NULL else text


def read_text_value(text: str, hint: Any) -> Any:
    """An override given as text (a flag's, or a str among the Python API's overrides) as a value for an option of
    type `hint`. A text option keeps the text as typed, where YAML would read 0010 as 8, 3.10 as 3.1, 1_000 as 1000,
    2024-05-01 as a date, No as False and null as None (a flag's null is read before, by flag_text). A list of texts
    takes one text as a list of one, and the text of each entry of a [flow, list] that is not a mapping; a mapping of
    texts ({prompt: q}) keeps its keys' and values' text. Any other option reads the text as YAML: 1e-4, true,
    [a, b], {path: a.jsonl, weight: 2}."""
    if str in _arms(hint) and _arms(hint) <= {str, type(None)}:
        return text
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader) if text.strip() else None
    except yaml.YAMLError:
        return text
    if node is None:  # blank, or only a comment
        return text
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list and str in _arms(args[0]):
        if text.strip() in NULL:  # as YAML's null: no list (refused by name), not a list of one file named null
            return None
        if isinstance(node, yaml.ScalarNode):
            return [text]
        if isinstance(node, yaml.SequenceNode):
            return [v.value if isinstance(v, yaml.ScalarNode) else _construct(v) for v in node.value]
    if origin is dict and args == (str, str) and isinstance(node, yaml.MappingNode):
        if all(isinstance(n, yaml.ScalarNode) for pair in node.value for n in pair):
            return {k.value: v.value for k, v in node.value}
    return _construct(node)


def _construct(node: yaml.Node) -> Any:
    return yaml.SafeLoader("").construct_document(node)


class FlagValues(dict):
    """Overrides typed on the command line (tunelab's CLI gives its flags so): their values and errors are named by
    their flags (--train.lr). Any other mapping of overrides is the Python API's, named by its key
    (overrides['train.lr'])."""


def override_where(name: str, flags: bool) -> str:
    """Where an override of option `name` was given: its flag on the command line, its key in Python."""
    return f"--{name}" if flags else f"overrides[{name!r}]"


def is_override(origin: str) -> bool:
    """Did a value of this origin come as an override (a flag or a key of the API's overrides), not from a file?"""
    return origin.startswith(("--", "overrides["))


def from_python(where: str) -> bool:
    """Was the value at `where` (override_where, a stage of it) given in Python, as a key of the API's overrides?"""
    return where.startswith("overrides[")


def check_overrides(overrides: Any) -> dict[str, Any]:
    """The overrides argument as a dict, or a ConfigError saying what it must be."""
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise ConfigError(
            "overrides must be a mapping of dotted option names to values, like {'train.lr': 1e-4}; got a "
            f"{type(overrides).__name__}."
        )
    for name in overrides:
        if not isinstance(name, str):
            raise ConfigError(f"overrides: an option's name is text, like 'train.lr'; got {name!r}.")
    return dict(overrides)


def python_value(value: Any) -> Any:
    """A Python override as YAML would give it: a path (pathlib.Path) as its text, a tuple as a list."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, list | tuple):
        return [python_value(v) for v in value]
    if isinstance(value, dict):
        return {k: python_value(v) for k, v in value.items()}
    return value
