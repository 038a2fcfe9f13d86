"""Resolving a run's config: defaults <- YAML file <- overrides (flags as typed, or Python values), each value checked
and its origin recorded (`load_config` -> ResolvedConfig); and a staged run's stages, read the same way, each turned
into a config of its own (`stage_config`).
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tunelab.config.flags import CLI, PYTHON, Spelling
from tunelab.config.overrides import (
    FlagValues,
    check_overrides,
    from_python,
    is_override,
    override_where,
    python_value,
    read_text_value,
)
from tunelab.config.paths import PATH_OPTIONS, empty_path_entry, resolve_paths, reward_paths, working_module_file
from tunelab.config.run import RunConfig, iter_options, section_types
from tunelab.config.suggest import list_tail, unknown_option
from tunelab.config.validate import STAGED_RUN, check_consistency, option_default, read_by
from tunelab.config.values import ESCAPED_FLAGS, checked, read_escapes
from tunelab.config.yaml_file import flatten_sections, read_yaml
from tunelab.errors import ConfigError, TunelabError, article, not_text


def _unset_hint(name: str, where: str, variable: str) -> str:
    """Where an empty value likely came from: a shell variable unset in its flag, or in Python one read unset."""
    if from_python(where):
        return f'an unset environment variable, like os.environ.get("{variable}", "")?'
    return f'an unset variable in --{name} "${variable}"?'


@dataclass
class ResolvedConfig:
    """The config, for each dotted option where its value came from ('default', a file, or a flag), and the YAML file
    it was read from (None for a config made in Python): a run directory must never hold that file. `spelling`: how
    its caller names the run's own arguments in messages (the CLI's flags, or Python's)."""

    config: RunConfig
    origins: dict[str, str]
    path: Path | None = None
    spelling: Spelling = PYTHON


def locate(error: TunelabError, origins: dict[str, str]) -> TunelabError:
    """`error` with the YAML file that set the option it names: "qa.jsonl:1: option 'data.fields' (set in run.yaml)
    maps ...". The data reader's errors know the option, not where it was set. Kept as it is when the option came
    from a flag (whose name is its place), from Python or its default."""
    text = str(error)
    found = re.search(r"option '([\w.]+)'", text)
    origin = origins.get(found.group(1), "default") if found else "default"
    if found and origin not in ("default", "python") and not is_override(origin):
        error.args = (f"{text[: found.end()]} (set in {origin}){text[found.end() :]}",)
    return error


# Files that data.train reads and no config is (a .json file may be either: a JSON mapping is valid YAML)
DATA_SUFFIXES = (".jsonl", ".csv", ".tsv", ".parquet", ".txt", ".md", ".markdown")


def _as_data(path: Path, typed: bool) -> str:
    """What to do with data given where a config was expected (`tunelab train qa.jsonl`), as the caller gives it: a
    flag on the command line (`typed`), an override's key in Python."""
    given = f"--data.train {path}" if typed else f"overrides {{'data.train': ['{path}']}}"
    return f"to train on it without a config, give it as {given}."


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    base_dir: str | Path | None = None,
    *,
    saved: bool = False,
) -> ResolvedConfig:
    """Defaults <- YAML file <- overrides ({'train.lr': '1e-4'} as typed on the command line, or Python values).
    Overrides are named in origins and errors by their key (overrides['train.lr']); FlagValues, as the CLI gives
    them, by their flag (--train.lr).
    `saved`: the file is a run's own config.yaml, read back: an option of a task section its task does not read is
    let be there (a run saved before such options were refused must still open).

    Relative data/eval paths in a YAML file are resolved against the file's folder, so a config runs from anywhere;
    those of flags against base_dir, or the working directory. Both are kept absolute, so that the run's saved
    config.yaml names the same files wherever a later command (resume, export's self-check) runs.
    """
    options = {name: (f, hint) for name, f, hint in iter_options()}
    values: dict[str, Any] = {}
    origins = {name: "default" for name in options}
    layers: list[tuple[str, dict[str, Any], Path | None]] = []
    lines: dict[str, int] = {}  # a YAML file's option -> the line of its key
    if path is not None and not isinstance(path, str | os.PathLike):
        raise ConfigError(
            f"load_config takes a YAML file's path (or None), got {article(type(path).__name__)}; options go in overrides, "
            "with dotted names: load_config(None, {'train.lr': 1e-4})."
        )
    typed = isinstance(overrides, FlagValues)  # the CLI's flags, or a Python caller's keys
    if path is not None:
        path = Path(path)
        if path.is_dir():  # tunelab train runs/faq: a run's own config is runs/faq/config.yaml
            if (path / "config.yaml").is_file():
                raise ConfigError(
                    f"{path}: is a folder, not a config file; give the YAML file (a run's own is its config.yaml)."
                )
            raise ConfigError(
                f"{path}: a folder, not a config file (a YAML file: model:, data:, ...); {_as_data(path, typed)}"
            )
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found.")
        if path.suffix.lower() in DATA_SUFFIXES:
            raise ConfigError(
                f"{path}: a data file, not a config file (a YAML file: model:, data:, ...); {_as_data(path, typed)}"
            )
        try:
            raw = read_yaml(path, lines) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f", line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)}).") from None
        if not isinstance(raw, dict):
            data = f"; if it is data, {_as_data(path, typed)}" if path.suffix.lower() == ".json" else "."
            raise ConfigError(f"{path}: the config must be a mapping of sections (model:, data:, train:, ...){data}")
        layers.append((str(path), flatten_sections(raw, str(path), lines), path.parent))
    if overrides := check_overrides(overrides):
        flags = {}
        for name, value in overrides.items():
            hint = options[name][1] if name in options else None
            if typed and name in ESCAPED_FLAGS and isinstance(value, str):  # a flag's \n: a newline, as in YAML's "..."
                value = read_escapes(value)
            if isinstance(value, str) and (problem := not_text(value)):  # YAML could not read it as a value
                raise ConfigError(f"{override_where(name, typed)}: option '{name}': {problem}. Fix the text.")
            flags[name] = read_text_value(value, hint) if isinstance(value, str) else python_value(value)
        layers.append(("flag", flags, Path(base_dir) if base_dir else None))
    for source, flat, folder in layers:
        # An override is named by its flag (or its key in Python), a YAML file's value by the file and the line of
        # its key (run.yaml:7)
        wheres = {
            n: override_where(n, typed) if source == "flag" else f"{source}:{lines[n]}" if n in lines else source
            for n in flat
        }
        _refuse_unknown([(name, wheres[name], value) for name, value in flat.items() if name not in options])
        for name, value in flat.items():
            where = wheres[name]
            # A flag's relative path is the working directory's (or base_dir's), a YAML file's its folder's
            values[name] = _option_value(
                name, value, options, where, folder or Path.cwd(), None if source == "flag" else (source, lines)
            )
            origins[name] = where if source == "flag" else source
    config = RunConfig()
    _set_values(config, values)
    try:
        stages = [stage_values(entry, origins) for entry in config.stages]
        check_consistency(config, task_options=not saved, spelling=CLI if typed else PYTHON, stages=stages)
    except ConfigError as exc:
        raise _placed(exc, origins, lines) from None
    return ResolvedConfig(config, origins, path, CLI if typed else PYTHON)


def _refuse_unknown(unknown: list[tuple[str, str, Any]]) -> None:
    """Every unknown option of one file (or of the flags) in one error, a line each: a config written for another
    tool has several, and one error a run would take as many runs to read."""
    if not unknown:
        return
    errors = [
        str(unknown_option(name, where, value=value, python=from_python(where))) for name, where, value in unknown
    ]
    tail = list_tail("train", from_python(unknown[0][1]))  # one file's or one call's: all from one place
    raise ConfigError("\n".join([e.removesuffix(tail) for e in errors[:-1]] + errors[-1:]))


def _placed(error: ConfigError, origins: dict[str, str], lines: dict[str, int]) -> ConfigError:
    """A rule across options (check_consistency) broken: its message with where the first option it names that was
    given came from, as a single option's bad value is named: "run.yaml:7: option ..." for a file's (the line of
    its key), "--train.report_to: option ..." for a flag's. Kept as it is when every option it names is a default."""
    for name in re.findall(r"'([\w.]+)", str(error)):
        origin = origins.get(name, "default")
        if origin == "default":
            continue
        where = origin if is_override(origin) else f"{origin}:{lines[name]}" if name in lines else origin
        return ConfigError(f"{where}: {error}")
    return error


def _option_value(
    name: str, value: Any, options: dict, where: str, folder: Path | None, file: tuple[str, dict] | None = None
) -> Any:
    """One option's value checked against its type and constraints, paths resolved against `folder` (a YAML file's).
    `file`: the YAML file the value came from and its key lines (read_yaml), which name a stage's own lines."""
    if name not in options:
        raise unknown_option(name, where, value=value, python=from_python(where))
    if name == "stages" and isinstance(value, list):  # a stage that is no mapping, named by its own line
        for k, entry in enumerate(value, 1):
            if not isinstance(entry, dict):
                raise ConfigError(f"{_stage_where(k, where, file)('')}: {NOT_A_STAGE} got {entry!r}.")
    f, hint = options[name]
    value = checked(name, value, hint, f, where)
    if name in PATH_OPTIONS and (entry := empty_path_entry(value)) is not None:
        which = f", entry {entry}," if isinstance(value, list) else ""  # data.eval is one path, data.train a list
        raise ConfigError(
            f"{where}: option '{name}'{which} is an empty path ({_unset_hint(name, where, 'DATA')}); "
            "it would read the whole folder it resolves to. Give a file or folder name."
        )
    if name == "model.name" and not value.strip():
        raise ConfigError(
            f"{where}: option '{name}' is empty ({_unset_hint(name, where, 'MODEL')}); it would load the "
            "current folder. Give a hub id, a model folder or a .gguf file."
        )
    if name == "output_dir" and not value.strip():
        raise ConfigError(
            f"{where}: option 'output_dir' is empty ({_unset_hint(name, where, 'OUT')}); it would name the "
            "current folder. Give the run directory's path, like runs/faq."
        )
    if folder is not None and name == "data.transform" and value is not None:
        file, _, function = value.rpartition(":")
        if file.endswith(".py"):  # file.py:function, relative to the YAML file
            value = f"{resolve_paths(file, folder)}:{function}"
        else:  # MODULE.py in the working directory is kept by its path, as data.train's files are
            value = working_module_file(value) or value
    elif folder is not None and name == "grpo.rewards":  # a function's file.py and a reward run, as data.transform
        value = [reward_paths(entry, folder) for entry in value]
    elif folder is not None and name in PATH_OPTIONS:
        value = resolve_paths(value, folder)
    if name == "stages":
        value = [_stage_entry(entry, _stage_where(k, where, file), options, folder) for k, entry in enumerate(value, 1)]
        _refuse_same_names(value, where, file)
    return value


def _set_values(config: RunConfig, values: dict[str, Any]) -> None:
    for name, value in values.items():
        section, _, key = name.rpartition(".")
        target = getattr(config, section) if section else config
        setattr(target, key, value)


# What a stage may set besides options, and the options it may not (they belong to the whole run).
STAGE_KEYS = {"continue": ("adapter", "merge"), "name": None}
# the run pushes its final result (train.push_to), not each stage its own
NOT_PER_STAGE = ("output_dir", "overwrite", "stages", "train.push_to", "train.push_private")
NOT_A_STAGE = "a stage must be a mapping of options (data:, method:, train:, ...),"
STAGE_PREFIX = "stage-"  # a stage without name: is stage-K, as its folder in the run directory


def stage_name(entry: dict, k: int) -> str:
    """Stage k's (1-based) name: its name:, else stage-k."""
    return str(entry.get("name") or f"{STAGE_PREFIX}{k}")


def _refuse_same_names(stages: list[dict], where: str, file: tuple[str, dict] | None) -> None:
    """Two stages of one name (given, or the stage-K of an unnamed one) made the forgetting matrix, the stage headers
    and run.json's stages ambiguous: which 'after one' row is which."""
    first: dict[str, int] = {}
    for k, entry in enumerate(stages, 1):
        name = stage_name(entry, k)
        if name in first:
            j = first[name]
            at = _stage_where(k, where, file)("name" if "name" in entry else "")
            raise ConfigError(
                f"{at}: the stage's name is {name!r}, which stage {j} has too; the forgetting matrix and the "
                f"reports name each stage by its name, so they would not say which is which. Give each stage its own "
                "name: (a stage without one is stage-K)."
            )
        first[name] = k


def _stage_where(k: int, where: str, file: tuple[str, dict] | None) -> Callable[[str], str]:
    """Where stage k's key ('train.lr'; '' for the stage itself) is: its file and own line (c.yaml:11: stage 2)
    where the file gave them, else `where` (c.yaml:1, --stages) and the stage."""

    def at(key: str) -> str:
        line = file[1].get(f"stages.{k}.{key}" if key else f"stages.{k}") if file else None
        return f"{file[0]}:{line}: stage {k}" if file and line else f"{where}: stage {k}"

    return at


def _stage_entry(raw: Any, where_of: Callable[[str], str], options: dict, folder: Path | None) -> dict[str, Any]:
    """A stage as written (sections, or dotted names) -> {dotted option: checked value, continue, name}; `where_of`
    names where a key of it is (_stage_where)."""
    where = where_of("")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {NOT_A_STAGE} got {raw!r}.")
    sections = section_types()
    for key, value in raw.items():  # named by the section's own line (flatten_sections knows only the stage's)
        if key in sections and value is not None and not isinstance(value, dict):
            raise ConfigError(f"{where_of(str(key))}: section '{key}' must be a mapping of options, got {value!r}.")
    entry: dict[str, Any] = {}
    for name, value in flatten_sections(raw, where).items():
        here = where_of(name)
        if name in STAGE_KEYS:
            allowed = STAGE_KEYS[name]
            if name == "name" and (
                isinstance(value, bool) or not isinstance(value, str | int | float) or not str(value).strip()
            ):
                raise ConfigError(  # was kept as the text 'None' or "['a', 'b']" in the reports
                    f"{here}: 'name' is {value!r}; a stage's name is a text, like name: docs (without name:, stage K "
                    "is stage-K)."
                )
            if allowed and value not in allowed:
                raise ConfigError(f"{here}: '{name}' is {value!r}; allowed values: {', '.join(allowed)}.")
            entry[name] = str(value)
        elif name in NOT_PER_STAGE:
            raise ConfigError(f"{here}: '{name}' belongs to the whole run; set it outside stages:.")
        elif name.startswith("eval."):  # eval.questions was read by tunelab check and never asked; the others unread
            raise ConfigError(
                f"{here}: '{name}' belongs to the whole run: eval.questions are asked once, of the last stage's "
                "model, with the run's eval options; set it outside stages:."
            )
        elif name.startswith("federated."):  # was refused only once the stages before it had trained
            raise ConfigError(
                f"{here}: '{name}': a stage is not federated; federated options belong to a tunelab federate "
                "config, without stages:."
            )
        elif name not in options and (close := difflib.get_close_matches(name, list(STAGE_KEYS), n=1, cutoff=0.7)):
            raise ConfigError(
                f"{here}: unknown key '{name}'. Did you mean '{close[0]}'? A stage takes options (data:, train:, "
                "...), continue: adapter | merge, and name:."
            )
        else:
            entry[name] = _option_value(name, value, options, here, folder)
    return entry


def stage_values(entry: dict[str, Any], origins: dict[str, str]) -> dict[str, Any]:
    """The options a stage's entry sets over the run's config (its name: and continue: aside), given the run's
    `origins`. A flag wins over the file, its stages included: a stage's value for an option given as a flag (or a key
    of the API's overrides) is dropped, unless the stages themselves came so: then the stage's own value is the more
    specific one. What each stage trains with (`stage_config`), and what the check of train.push_to reads."""
    flagged = not is_override(origins.get("stages", ""))
    return {
        k: copy.deepcopy(v)
        for k, v in entry.items()
        if k not in STAGE_KEYS and not (flagged and is_override(origins.get(k, "")))
    }


def stage_config(resolved: ResolvedConfig, index: int, output_dir: str) -> ResolvedConfig:
    """Stage `index` (0-based) of a staged run as a run config of its own: the run's config without its stages,
    overlaid with the stage's options; written to `output_dir`."""
    config = copy.deepcopy(resolved.config)
    config.stages, config.output_dir, config.overwrite = [], output_dir, False
    config.train.push_to, config.train.push_private = None, False  # the run pushes its last stage's result
    values = stage_values(resolved.config.stages[index], resolved.origins)
    _set_values(config, values)
    if index > 0:  # model.adapter outside stages: is stage 1's start; a later one starts from the stage before it
        config.model.adapter = None
    # The run's options for its other stages' tasks (dpo.beta in a run whose stage 2 is dpo) are not this stage's:
    # they go back to their defaults, so that the stage's saved config holds what it uses. Its own are checked.
    for name, f, _ in iter_options():
        if name not in values and not read_by(name, {config.task}):
            section, _, key = name.partition(".")
            setattr(getattr(config, section), key, copy.deepcopy(option_default(f)))
    origins = dict(resolved.origins) | {name: f"stage {index + 1}" for name in values}
    origins |= {"stages": STAGED_RUN, "output_dir": STAGED_RUN}
    try:
        check_consistency(config)
    except ConfigError as exc:
        raise ConfigError(f"{stage_where(resolved, index + 1)}: {exc}") from None
    return ResolvedConfig(config, origins, resolved.path, resolved.spelling)


def stage_where(resolved: ResolvedConfig, k: int) -> str:
    """Where stage k (1-based) was written: its file and line (c.yaml:9: stage 2) when the stages came from a file, else the
    flag (--stages: stage 2)."""
    origin = resolved.origins.get("stages", "")
    if is_override(origin):
        return f"{origin}: stage {k}"
    if origin in ("", "default", "python"):  # a RunConfig built in Python: no file to name
        return f"stage {k}"
    lines: dict[str, int] = {}
    try:
        read_yaml(Path(origin), lines)
    except (OSError, TunelabError, yaml.YAMLError):  # changed or gone since it was loaded: the file alone
        return f"{origin}: stage {k}"
    return _stage_where(k, origin, (origin, lines))("")
