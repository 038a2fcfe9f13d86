"""Typed configuration: one dataclass per concern, YAML as their saved form, `--section.key value` as the override.

Every field carries a one-line help text (it feeds `tunelab train --help`) and, where it has them, its allowed
values or range. `load_config` records where each resolved value came from (default, the YAML file, or a flag) so the
run can print and save it.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from tunelab.config.data import DataConfig, DataSource
from tunelab.config.federated import FederatedConfig
from tunelab.config.model import MethodConfig, ModelConfig
from tunelab.config.options import AUTO
from tunelab.config.run import RunConfig, auto_options, iter_options, section_names, section_types
from tunelab.config.tasks import PLACEHOLDER, ClassifyConfig, DpoConfig, GrpoConfig, RewardSpec
from tunelab.config.train import EvalConfig, TrainConfig, check_trackers, parse_size
from tunelab.errors import ConfigError

__all__ = [
    "ACTION_OPTIONS",
    "AUTO",
    "PLACEHOLDER",
    "ClassifyConfig",
    "DataConfig",
    "DataSource",
    "DpoConfig",
    "EvalConfig",
    "FederatedConfig",
    "GrpoConfig",
    "MethodConfig",
    "ModelConfig",
    "ResolvedConfig",
    "RewardSpec",
    "RunConfig",
    "TrainConfig",
    "auto_options",
    "check_trackers",
    "describe",
    "dump_yaml",
    "iter_options",
    "load_config",
    "parse_size",
    "section_names",
    "stage_config",
    "to_dict",
    "unknown_option",
]


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " or ".join(repr(v) for v in typing.get_args(hint))
    return str(hint).replace("typing.", "") if not isinstance(hint, type) else hint.__name__


def _coerce(name: str, value: Any, hint: Any, where: str) -> Any:
    """Check `value` against the type hint, converting where it is unambiguous (int -> float, scalar -> list)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for kind in inner:  # a mapping where the union allows a record (an entry of data.train)
            if dataclasses.is_dataclass(kind) and isinstance(value, (dict, kind)):
                return _record(name, value, kind, where)
        for arm in inner:  # the first type that takes the value: `float | Auto` reads 1e-4 as float, "auto" as Auto
            try:
                return _coerce(name, value, arm, where)
            except ConfigError:
                pass
        names = " or ".join(_type_name(a) for a in inner)
        raise ConfigError(f"{where}: option '{name}' must be {names}, got {value!r} ({type(value).__name__}).")
    if origin is Literal:
        if value in typing.get_args(hint):
            return value
        raise ConfigError(f"{where}: option '{name}' must be {_type_name(hint)}, got {value!r}.")
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: option '{name}' must be a list of {_type_name(item)}, got {value!r}.")
        return [_coerce(name, v, item, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: option '{name}' must be a mapping like {{key: value}}, got {value!r}.")
        keep = typing.get_args(hint)[1:] == (Any,)  # dict[str, Any]: values are checked by whoever reads them
        return {str(k): (v if keep else str(v)) for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{where}: option '{name}' must be {_type_name(hint)}, got {value!r} ({type(value).__name__}).")


def _record(name: str, value: Any, kind: type, where: str) -> Any:
    """A mapping -> an instance of the dataclass `kind`, each key checked like an option ('data.train[].weight')."""
    if isinstance(value, kind):
        return value
    fields = {f.name: f for f in dataclasses.fields(kind)}
    hints = typing.get_type_hints(kind)
    values = {}
    for key, item in value.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=2)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"{where}: option '{name}': an entry has the unknown key '{key}'.{hint} Its keys are "
                f"{', '.join(fields)}."
            )
        item = _coerce(f"{name}[].{key}", item, hints[key], where)
        _check_constraints(f"{name}[].{key}", item, fields[key], where)
        values[key] = item
    return kind(**values)


def _check_constraints(name: str, value: Any, f: dataclasses.Field, where: str) -> None:
    meta = f.metadata
    values = value if isinstance(value, list) else [value]
    for v in values:
        if v is None:
            continue
        if meta.get("choices") and v not in meta["choices"]:
            allowed = ", ".join(map(str, meta["choices"]))
            raise ConfigError(f"{where}: option '{name}' is {v!r}; allowed values: {allowed}.")
        if meta.get("min") is not None and isinstance(v, (int, float)) and v < meta["min"]:
            raise ConfigError(f"{where}: option '{name}' is {v}; it must be >= {meta['min']}.")
        if meta.get("max") is not None and isinstance(v, (int, float)) and v > meta["max"]:
            raise ConfigError(f"{where}: option '{name}' is {v}; it must be <= {meta['max']}.")


# Names other tools (transformers' TrainingArguments, axolotl, torchtune, PEFT) use for our options: a typo suggestion
# by meaning, where spelling alone would point elsewhere (learning_rate is closer to warmup_ratio than to lr).
ALIASES = {
    "learning_rate": "train.lr",
    "num_train_epochs": "train.epochs",
    "num_epochs": "train.epochs",
    "batch_size": "train.micro_batch",
    "per_device_train_batch_size": "train.micro_batch",
    "micro_batch_size": "train.micro_batch",
    "train_batch_size": "train.micro_batch",
    "gradient_accumulation_steps": "train.grad_accum",
    "gradient_accumulation": "train.grad_accum",
    "warmup_steps": "train.warmup_ratio",
    "warmup": "train.warmup_ratio",
    "lr_scheduler_type": "train.scheduler",
    "lr_scheduler": "train.scheduler",
    "optim": "train.optimizer",
    "grad_clip": "train.max_grad_norm",
    "clip_grad_norm": "train.max_grad_norm",
    "gradient_clipping": "train.max_grad_norm",
    "eval_steps": "train.eval_every",
    "save_steps": "train.save_every",
    "save_total_limit": "train.keep_checkpoints",
    "logging_steps": "train.log_every",
    "gradient_checkpointing": "train.checkpointing",
    "activation_checkpointing": "train.checkpointing",
    "lora_r": "method.r",
    "rank": "method.r",
    "lora_rank": "method.r",
    "lora_alpha": "method.alpha",
    "lora_dropout": "method.dropout",
    "lora_target_modules": "method.target_modules",
    "load_in_4bit": "method.quantize_base",
    "qlora": "method.quantize_base",
    "model_name_or_path": "model.name",
    "base_model": "model.name",
    "model_name": "model.name",
    "model_id": "model.name",
    "torch_dtype": "model.dtype",
    "bf16": "model.dtype",
    "fp16": "model.dtype",
    "dataset": "data.train",
    "datasets": "data.train",
    "train_file": "data.train",
    "data_path": "data.train",
    "dataset_path": "data.train",
    "eval_file": "data.eval",
    "validation_file": "data.eval",
    "val_set_size": "data.eval_fraction",
    "validation_split": "data.eval_fraction",
    "test_size": "data.eval_fraction",
    "max_seq_length": "data.max_length",
    "max_seq_len": "data.max_length",
    "sequence_len": "data.max_length",
    "seq_len": "data.max_length",
    "cutoff_len": "data.max_length",
    "model_max_length": "data.max_length",
    "chat_template": "data.template",
    "prompt_template": "data.template",
    "system_message": "data.system_prompt",
    "sample_packing": "data.packing",
    "train_on_inputs": "data.train_on_prompt",
    "separator": "data.delimiter",
    "sep": "data.delimiter",
    "out_dir": "output_dir",
    "output_path": "output_dir",
    "overwrite_output_dir": "overwrite",
}


def suggest(name: str) -> list[str]:
    """Up to three options the user may have meant by `name`: by known alias, then by the last part of the name
    (the right key in the wrong section), then by spelling of the last part, then by spelling of the whole name."""
    options = [n for n, _, _ in iter_options()]
    last = name.rpartition(".")[2].lower().replace("-", "_")
    found = [ALIASES[last]] if last in ALIASES else []
    found += [o for o in options if o.rpartition(".")[2] == last]
    if found:  # the meaning is known: spelling neighbours would only distract
        return [o for o in dict.fromkeys(found) if o != name][:3]
    lasts = sorted({o.rpartition(".")[2] for o in options})
    for close in difflib.get_close_matches(last, lasts, n=3, cutoff=0.7):
        found += [o for o in options if o.rpartition(".")[2] == close]
    found += difflib.get_close_matches(name, options, n=3)
    return [o for o in dict.fromkeys(found) if o != name][:3]


def unknown_option(name: str, where: str, flag: bool = False) -> ConfigError:
    close = [f"--{o}" if flag else o for o in suggest(name)]
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"{where}: unknown option '{name}'.{hint} Run 'tunelab train --help' for the list.")


def _flatten(raw: dict, where: str) -> dict[str, Any]:
    """YAML mapping -> {'train.lr': 1e-4, ...}. Section mappings are flattened one level; dict-valued fields stay whole."""
    sections = section_types()
    flat = {}
    for key, value in raw.items():
        if key in sections:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: section '{key}' must be a mapping of options, got {value!r}.")
            for sub, v in value.items():
                flat[f"{key}.{sub}"] = v
        else:
            flat[str(key)] = value
    return flat


@dataclass
class ResolvedConfig:
    """The config and, for each dotted option, where its value came from ('default', a file, or a flag)."""

    config: RunConfig
    origins: dict[str, str]


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None, base_dir: str | Path | None = None
) -> ResolvedConfig:
    """Defaults <- YAML file <- overrides ({'train.lr': '1e-4'} as typed on the command line, or Python values).

    Relative data/eval paths in a YAML file are resolved against the file's folder, so a config runs from anywhere.
    """
    options = {name: (f, hint) for name, f, hint in iter_options()}
    values: dict[str, Any] = {}
    origins = {name: "default" for name in options}
    layers: list[tuple[str, dict[str, Any], Path | None]] = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found.")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f", line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)}).") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the config must be a mapping of sections (model:, data:, train:, ...).")
        layers.append((str(path), _flatten(raw, str(path)), path.parent))
    if overrides:
        flags = {}
        for name, value in overrides.items():
            if isinstance(value, str):
                try:
                    parsed = yaml.safe_load(value) if value.strip() else value
                except yaml.YAMLError:
                    parsed = value
                # A text option keeps its text when YAML would make a mapping or list of it ('Q: {text} A:')
                text = name in options and options[name][1] in (str, str | None)
                value = value if text and isinstance(parsed, dict | list) else parsed
            flags[name] = value
        layers.append(("flag", flags, Path(base_dir) if base_dir else None))
    for source, flat, folder in layers:
        for name, value in flat.items():
            where = f"--{name}" if source == "flag" else source
            values[name] = _option_value(name, value, options, where, folder if source != "flag" else None)
            origins[name] = where if source == "flag" else source
    config = RunConfig()
    _set_values(config, values)
    _check_consistency(config)
    return ResolvedConfig(config, origins)


def _option_value(name: str, value: Any, options: dict, where: str, folder: Path | None) -> Any:
    """One option's value checked against its type and constraints, paths resolved against `folder` (a YAML file's)."""
    if name not in options:
        raise unknown_option(name, where)
    f, hint = options[name]
    value = _coerce(name, value, hint, where)
    _check_constraints(name, value, f, where)
    if folder is not None and name == "data.transform" and value is not None:
        file, _, function = value.rpartition(":")
        if file.endswith(".py"):  # file.py:function, relative to the YAML file; module:function stays as it is
            value = f"{_resolve_paths(file, folder)}:{function}"
    elif folder is not None and name == "grpo.rewards":  # a function's file.py and a reward run, as data.transform
        value = [_reward_paths(entry, folder) for entry in value]
    elif folder is not None and name in _PATH_OPTIONS:
        value = _resolve_paths(value, folder)
    if name == "stages":
        value = [_stage_entry(entry, f"{where}: stage {k}", options, folder) for k, entry in enumerate(value, 1)]
    return value


def _set_values(config: RunConfig, values: dict[str, Any]) -> None:
    for name, value in values.items():
        section, _, key = name.rpartition(".")
        target = getattr(config, section) if section else config
        setattr(target, key, value)


# What a stage may set besides options, and the options it may not (they belong to the whole run).
STAGE_KEYS = {"continue": ("adapter", "merge"), "name": None}
NOT_PER_STAGE = ("output_dir", "overwrite", "stages")


def _stage_entry(raw: Any, where: str, options: dict, folder: Path | None) -> dict[str, Any]:
    """A stage as written (sections, or dotted names) -> {dotted option: checked value, continue, name}."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a stage must be a mapping of options (data:, method:, train:, ...), got {raw!r}.")
    entry: dict[str, Any] = {}
    for name, value in _flatten(raw, where).items():
        if name in STAGE_KEYS:
            allowed = STAGE_KEYS[name]
            if allowed and value not in allowed:
                raise ConfigError(f"{where}: '{name}' is {value!r}; allowed values: {', '.join(allowed)}.")
            entry[name] = str(value)
        elif name in NOT_PER_STAGE:
            raise ConfigError(f"{where}: '{name}' belongs to the whole run; set it outside stages:.")
        else:
            entry[name] = _option_value(name, value, options, where, folder)
    return entry


def stage_config(resolved: ResolvedConfig, index: int, output_dir: str) -> ResolvedConfig:
    """Stage `index` (0-based) of a staged run as a run config of its own: the run's config without its stages,
    overlaid with the stage's options; written to `output_dir`."""
    config = copy.deepcopy(resolved.config)
    config.stages, config.output_dir, config.overwrite = [], output_dir, False
    entry = resolved.config.stages[index]
    values = {k: copy.deepcopy(v) for k, v in entry.items() if k not in STAGE_KEYS}
    _set_values(config, values)
    origins = dict(resolved.origins) | {name: f"stage {index + 1}" for name in values}
    origins |= {"stages": "the staged run", "output_dir": "the staged run"}
    try:
        _check_consistency(config)
    except ConfigError as exc:
        raise ConfigError(f"stage {index + 1}: {exc}") from None
    return ResolvedConfig(config, origins)


def _reward_paths(entry: str | RewardSpec, folder: Path) -> str | RewardSpec:
    if not isinstance(entry, RewardSpec):
        return entry
    function = entry.function
    if function and function.rpartition(":")[0].endswith(".py"):
        file, _, name = function.rpartition(":")
        function = f"{_resolve_paths(file, folder)}:{name}"
    return dataclasses.replace(entry, function=function, run=_resolve_paths(entry.run, folder))


_PATH_OPTIONS = {
    "data.train",
    "data.eval",
    "eval.questions",
    "model.adapter",
    "federated.clients",
    "federated.split_file",
}


def _resolve_paths(value: Any, folder: Path) -> Any:
    if value is None:
        return None
    if isinstance(value, list):
        return [_resolve_paths(v, folder) for v in value]
    if isinstance(value, DataSource):
        return dataclasses.replace(
            value, path=_resolve_paths(value.path, folder), eval=_resolve_paths(value.eval, folder)
        )
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (folder / p))


def _check_consistency(config: RunConfig) -> None:
    """Rules that involve more than one option, or the environment (a tracker's library must be installed)."""
    check_trackers(config.train.report_to)
    if config.train.offload_activations is True and config.train.checkpointing is False:
        raise ConfigError(
            "option 'train.offload_activations' needs 'train.checkpointing: true' (it offloads the checkpointed layer inputs)."
        )
    if config.train.gpu_memory is not None:
        try:
            parse_size(config.train.gpu_memory)
        except ValueError as exc:
            raise ConfigError(f"option 'train.gpu_memory': {exc}.") from None
    check_head_options(config)
    if config.task == "dpo" and config.dpo.beta <= 0:
        raise ConfigError("option 'dpo.beta' must be > 0 (it scales the log ratios, and ipo divides by it).")
    if config.task == "grpo" and config.train.grad_accum != 1:
        raise ConfigError(
            "option 'train.grad_accum' must be 1 with task grpo: a step trains on grpo.prompts_per_step prompts x "
            "grpo.num_generations answers, in micro-batches of train.micro_batch rows. Set the prompts per step instead."
        )
    if config.train.neftune_alpha and config.task != "sft":
        raise ConfigError(
            f"option 'train.neftune_alpha' adds noise to the embeddings of task sft; option 'task' is {config.task}. "
            "Remove it or set it to 0."
        )
    if config.data.eval and config.data.eval_fraction:
        raise ConfigError(
            "options 'data.eval' and 'data.eval_fraction' are both set; use one way to get an eval split."
        )
    _check_sources(config.data)
    if config.method.use_dora and config.method.name != "lora":
        raise ConfigError(f"option 'method.use_dora' is for method.name lora; method.name is {config.method.name}.")


def check_head_options(config: RunConfig) -> None:
    """classify.prompt_format holds {text} once; it and classify.head_lr are for the head tasks only, head_init for
    classify."""
    c = config.classify
    for name, value in (("prompt_format", c.prompt_format), ("head_lr", c.head_lr)):
        if value is not None and config.task not in ("classify", "reward"):
            raise ConfigError(
                f"option 'classify.{name}' is for tasks classify and reward; option 'task' is {config.task}. Remove it."
            )
    if c.head_init != "random" and config.task != "classify":
        raise ConfigError(
            f"option 'classify.head_init' {c.head_init} is for task classify (a reward head has no label words); "
            f"option 'task' is {config.task}. Remove it."
        )
    if c.prompt_format is not None and c.prompt_format.count(PLACEHOLDER) != 1:
        found = "has no" if PLACEHOLDER not in c.prompt_format else "has more than one"
        raise ConfigError(
            f"option 'classify.prompt_format' is {c.prompt_format!r}: it {found} {PLACEHOLDER} placeholder; write it "
            f"once where the row's text goes, e.g. 'Request: {PLACEHOLDER}\\nDomain:'."
        )


def _check_sources(data: DataConfig) -> None:
    """Each mapping entry of data.train names one place to read (path or hub) and a positive weight."""
    formats = DataConfig.__dataclass_fields__["format"].metadata["choices"]
    for i, source in enumerate(data.train, 1):
        if not isinstance(source, DataSource):
            continue
        where = f"option 'data.train', entry {i}"
        if (source.path is None) == (source.hub is None):
            raise ConfigError(f"{where}: give exactly one of 'path' (a file or folder) and 'hub' (a dataset id).")
        if source.weight is not None and not source.weight > 0:
            raise ConfigError(
                f"{where} ({source.path or source.hub}): weight is {source.weight}; a weight is a positive number (the "
                "source's share of each epoch relative to the others'). Remove the source instead of weighing it 0."
            )
        if source.format is not None and source.format not in formats:
            raise ConfigError(f"{where}: format is {source.format!r}; allowed values: {', '.join(formats)}.")
        if source.streaming and source.hub is None:
            raise ConfigError(f"{where}: streaming reads hub datasets; a local source ({source.path}) is read whole.")


def to_dict(config: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


# Options that say what to do with this invocation, not what the run is: never saved with the run's config.
ACTION_OPTIONS = ("overwrite",)


def dump_yaml(config: RunConfig) -> str:
    """The config's saved form (config.yaml of a run): every option but the ACTION_OPTIONS."""
    values = {k: v for k, v in to_dict(config).items() if k not in ACTION_OPTIONS}
    return yaml.safe_dump(values, sort_keys=False, allow_unicode=True)


def describe(resolved: ResolvedConfig) -> str:
    """The resolved config, one option a line, with where each value came from."""
    lines = []
    for name, _, _ in iter_options():
        section, _, key = name.rpartition(".")
        target = getattr(resolved.config, section) if section else resolved.config
        lines.append(f"  {name:<24} = {getattr(target, key)!r:<40} ({resolved.origins[name]})")
    return "\n".join(lines)
