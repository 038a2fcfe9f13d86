"""A config file's YAML: read safely, a key given twice in one mapping refused, the line of each key kept (so that
errors name the line), and its sections flattened to dotted option names ('train.lr')."""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml

from tunelab.config.run import section_types
from tunelab.config.suggest import unknown_section
from tunelab.errors import ConfigError

# The option a section's value most likely meant when given bare (model: NAME, data: [FILE]).
_MAIN_OPTION = {"model": "name", "data": "train", "method": "name"}


def flatten_sections(raw: dict, where: str, lines: dict[str, int] | None = None) -> dict[str, Any]:
    """YAML mapping -> {'train.lr': 1e-4, ...}. Section mappings are flattened one level; dict-valued fields stay whole.
    `lines`: the file's key lines (read_yaml), which name where an option given twice is."""
    sections = section_types()
    flat = {}
    for key, value in raw.items():
        at = f"{where}:{lines[key]}" if lines and key in lines else where  # the line of the key, in a file
        if key in sections:
            if value is None:
                continue
            if not isinstance(value, dict):  # model: smollm2-135m-instruct, data: qa.jsonl
                main = _MAIN_OPTION.get(key)
                shown = f"[{', '.join(map(str, value))}]" if isinstance(value, list) else value
                like = f" like {key}: {{{main}: {shown}}}" if main and isinstance(value, (str, list)) else ""
                raise ConfigError(f"{at}: section '{key}' must be a mapping of options{like}, got {value!r}.")
            for sub, v in value.items():
                _put(flat, f"{key}.{sub}", v, where, lines)
        else:
            if isinstance(value, dict) and (error := unknown_section(str(key), at, value)):
                raise error
            _put(flat, str(key), value, where, lines)
    return flat


def _put(flat: dict[str, Any], name: str, value: Any, where: str, lines: dict[str, int] | None = None) -> None:
    if name in flat:  # 'train.lr' at the top and 'lr' under train:
        both = sorted({lines[key] for key in (name, f"{name}{AGAIN}") if key in lines}) if lines else []
        at = f"{where}:{both[0]}" if both else where
        on = f" (lines {both[0]} and {both[1]})" if len(both) == 2 else ""
        raise ConfigError(f"{at}: option '{name}' is given twice{on}, once as '{name}', once in its section; keep one.")
    flat[name] = value


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (it keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):  # `? [a, b]` or `{a: 1}: x`: YAML allows it, no option is named so
                raise ConfigError(
                    f"{self.name}, line {key_node.start_mark.line + 1}: a key must be a name, not a "
                    f"{'mapping' if isinstance(key, dict) else type(key).__name__}; write the option's name there."
                )
            if key in seen:
                raise ConfigError(
                    f"{self.name}, line {key_node.start_mark.line + 1}: key '{key}' is given twice in one mapping (first "
                    f"on line {seen[key] + 1}); YAML would keep only the last. Keep one."
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path, lines: dict[str, int] | None = None) -> Any:
    """A YAML file's value, safely (no object construction), refusing a key given twice in one mapping and a file
    that is not UTF-8 (naming the line of its first undecodable byte). `lines`, if given, is filled with the line
    (1-based) of each top-level key and of each key of a top-level mapping, by dotted name ('train.lr')."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}, line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8."
        ) from None
    loader = _UniqueKeyLoader(text)
    loader.name = str(path)  # the marks of its errors name the file
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if lines is not None:
            lines.update(_key_lines(node))
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _key_lines(node: yaml.Node, prefix: str = "") -> dict[str, int]:
    """{'train': 3, 'train.lr': 4, ...}: the line of each key of a mapping document, one level into its sections;
    and of each stage of `stages:` and its keys, the same way ('stages.2': 9, 'stages.2.train.lr': 11)."""
    lines: dict[str, int] = {}
    if not isinstance(node, yaml.MappingNode):
        return lines
    for key, value in node.value:
        if isinstance(key, yaml.ScalarNode):
            name = prefix + key.value
            _first_and_again(lines, name, key.start_mark.line + 1)
            if isinstance(value, yaml.MappingNode):
                for sub, _ in value.value:
                    if isinstance(sub, yaml.ScalarNode):
                        _first_and_again(lines, f"{name}.{sub.value}", sub.start_mark.line + 1)
            elif name == "stages" and isinstance(value, yaml.SequenceNode):
                for k, item in enumerate(value.value, 1):
                    lines.setdefault(f"stages.{k}", item.start_mark.line + 1)
                    lines.update(_key_lines(item, f"stages.{k}."))
    return lines


AGAIN = "#again"  # lines' key of the second place of an option given as 'train.lr' and as lr under train:


def _first_and_again(lines: dict[str, int], name: str, line: int) -> None:
    """The line of `name`'s key; where it is given a second time (dotted and in its section), that line as AGAIN."""
    if name in lines:
        lines.setdefault(f"{name}{AGAIN}", line)
    else:
        lines[name] = line
