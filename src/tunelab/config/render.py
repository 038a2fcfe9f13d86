"""The config written out: its saved form (`dump_yaml`, a run's config.yaml, without the ACTION_OPTIONS; a staged run's
stages as they train, `as_trained` / `trained_stages`) and its printed form (`describe`: one option a line, with where its value came
from)."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import yaml

from tunelab.config.load import STAGE_KEYS, ResolvedConfig, stage_values
from tunelab.config.run import RunConfig, iter_options
from tunelab.config.validate import unread_options, unused_notes


def to_dict(config: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


# Options that say what to do with this invocation, not what the run is: never saved with the run's config.
ACTION_OPTIONS = ("overwrite",)


def dump_yaml(config: RunConfig) -> str:
    """The config's saved form (config.yaml of a run): every option but the ACTION_OPTIONS."""
    values = {k: v for k, v in to_dict(config).items() if k not in ACTION_OPTIONS}
    return yaml.safe_dump(values, sort_keys=False, allow_unicode=True)


def trained_stages(resolved: ResolvedConfig) -> list[dict[str, Any]]:
    """Each stage's entry as it trains: only the values the stage trains with (load.stage_values), its name: and
    continue:. An option a flag won over a stage's own (--method.name full over stages of method lora) is left to the
    top level, which holds the flag's value."""
    return [
        {k: copy.deepcopy(v) for k, v in entry.items() if k in STAGE_KEYS} | stage_values(entry, resolved.origins)
        for entry in resolved.config.stages
    ]


def as_trained(resolved: ResolvedConfig) -> RunConfig:
    """The run's config as it trains, the form its config.yaml saves: its stages as `trained_stages` gives them. Saved
    as written, the file read back without the flag would train other stages, as a file's stages win over its top
    level."""
    config = copy.deepcopy(resolved.config)
    config.stages = trained_stages(resolved)
    return config


def describe(resolved: ResolvedConfig) -> str:
    """The resolved config, one option a line, with where each value came from; then a note for each option set that
    the run does not read (method.r beside method full). The options the run never reads (federated.* outside a
    federation, dpo.* of an sft run: validate.unread_options) are left out while at their defaults, counted in one
    line; the saved config.yaml holds them all."""
    lines = []
    stages = trained_stages(resolved)  # each stage as it trains: a flag over them may leave options unread
    unread = unread_options(resolved.config, stages)
    left_out: dict[str, int] = {}
    for name, _, _ in iter_options():
        section, _, key = name.rpartition(".")
        if name in unread and resolved.origins[name] == "default":
            group = (
                f"{section}.*"
                if section and all(n in unread for n, _, _ in iter_options() if n.startswith(f"{section}."))
                else name
            )
            left_out[group] = left_out.get(group, 0) + 1
            continue
        target = getattr(resolved.config, section) if section else resolved.config
        lines.append(f"  {name:<24} = {_shown(getattr(target, key))!r:<40} ({resolved.origins[name]})")
    if left_out:
        groups = ", ".join(group if n == 1 else f"{group} ({n})" for group, n in left_out.items())
        lines.append(
            f"  ... and {sum(left_out.values())} options at their defaults that this run does not read: {groups} "
            "(every option is in the run's config.yaml, and in --help)"
        )
    lines += unused_notes(resolved.config, resolved.origins, stages)
    return "\n".join(lines)


def _shown(value: Any) -> Any:
    """A value as the printed config shows it: a data.train source (a mapping in the YAML) as the keys that differ
    from their defaults, as it was written, not as a dataclass holding every key (`split='train'`, `hub=None`)."""
    if isinstance(value, list):
        return [_shown(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: getattr(value, f.name)
            for f in dataclasses.fields(value)
            if getattr(value, f.name) != (f.default if f.default is not dataclasses.MISSING else f.default_factory())
        }
    return value
