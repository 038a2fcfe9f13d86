"""Relative paths in a YAML file resolved against the file's folder, so a config runs from anywhere (those given as
flags against the working directory), and kept absolute: the options that name files (PATH_OPTIONS), the files and
eval files of data.train's sources, the path of a federated.clients mapping, a data.transform or reward function's
file.py (and a data.transform's MODULE.py of the working directory), and a reward run."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

from tunelab.config.data import DataSource
from tunelab.config.federated import ClientSource
from tunelab.config.tasks import RewardSpec


def reward_paths(entry: str | RewardSpec, folder: Path) -> str | RewardSpec:
    if not isinstance(entry, RewardSpec):
        return entry
    function = entry.function
    if function and function.rpartition(":")[0].endswith(".py"):
        file, _, name = function.rpartition(":")
        function = f"{resolve_paths(file, folder)}:{name}"
    return dataclasses.replace(entry, function=function, run=resolve_paths(entry.run, folder))


PATH_OPTIONS = {
    "data.train",
    "data.eval",
    "eval.questions",
    "model.adapter",
    "federated.clients",
    "federated.split_file",
}


def empty_path_entry(value: Any) -> int | None:
    """The 1-based entry of a path option that is an empty string (which would name the current folder, or the
    config's, and read everything under it), or None."""
    entries = value if isinstance(value, list) else [value]
    for i, entry in enumerate(entries, 1):
        paths = (
            [entry.path, entry.eval]
            if isinstance(entry, DataSource)
            else [entry.path]
            if isinstance(entry, ClientSource)
            else [entry]
        )
        if any(isinstance(p, str) and not p.strip() for p in paths):
            return i
    return None


def resolve_paths(value: Any, folder: Path) -> Any:
    if value is None:
        return None
    if isinstance(value, list):
        return [resolve_paths(v, folder) for v in value]
    if isinstance(value, DataSource):
        return dataclasses.replace(
            value, path=resolve_paths(value.path, folder), eval=resolve_paths(value.eval, folder)
        )
    if isinstance(value, ClientSource):
        return dataclasses.replace(value, path=resolve_paths(value.path, folder))
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (folder / p).absolute())


def function_file(spec: str) -> str | None:
    """The local file of a `module:function` or `file.py:function` spec (data.transform, a grpo reward), if any."""
    module, _, _ = spec.rpartition(":")
    local = Path(module if module.endswith(".py") else module.replace(".", "/") + ".py").expanduser()
    return str(local) if module and local.is_file() else None


def working_module_file(spec: str) -> str | None:
    """`module:function` whose module is MODULE.py in the working directory, not an importable module, as the path
    `/abs/MODULE.py:function` (loaded alike, `data.transform.load_transform`), so that a run's config.yaml names the
    same file wherever a later command runs, as it does data.train's files; None for any other spec."""
    module, _, function = spec.rpartition(":")
    if not module or module.endswith(".py") or not (local := function_file(spec)):
        return None
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a dotted name whose parent is no package: no module of that name either
        found = None
    # `python -m tunelab` puts the working directory on sys.path: the module found there is that same file
    if found is not None and (found.origin is None or Path(found.origin).resolve() != Path(local).resolve()):
        return None
    return f"{Path(local).absolute()}:{function}"
