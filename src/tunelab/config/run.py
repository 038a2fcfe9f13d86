"""The whole run's config (RunConfig: the top-level options and one field per section) and the walk over its options
in declaration order (`iter_options`), which `--help`, `describe`, loading and resume all follow.

Type hints are read with `typing.get_type_hints`, which evaluates each class's annotations in its own module: a
section's module imports what its annotations name (`Auto`, `DataSource`, `RewardSpec`).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any

from tunelab.config.data import DataConfig
from tunelab.config.federated import FederatedConfig
from tunelab.config.model import MethodConfig, ModelConfig
from tunelab.config.options import Auto, opt
from tunelab.config.tasks import ClassifyConfig, DpoConfig, GrpoConfig
from tunelab.config.train import EvalConfig, TrainConfig


@dataclass
class RunConfig:
    output_dir: str = opt("runs/run", "run directory for the adapter or weights, checkpoints, metrics and plots")
    overwrite: bool = opt(False, "replace an existing run directory")
    task: str = opt(
        "sft",
        "what to train: generate answers (sft), a label per text with a head on the last token (classify), a "
        "scalar reward from preference pairs (reward), prefer chosen over rejected answers (dpo), or learn from rewards "
        "of sampled answers (grpo)",
        choices=("sft", "classify", "reward", "dpo", "grpo"),
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    grpo: GrpoConfig = field(default_factory=GrpoConfig)
    federated: FederatedConfig = field(default_factory=FederatedConfig)
    stages: list[dict[str, Any]] = opt(
        [],
        "train in stages, one after another in output_dir (stage-1/, ...): each entry a partial config (sections as "
        "above) plus continue: adapter | merge, applied over the rest of this config (README: Stages)",
    )


def section_types() -> dict[str, type]:
    return dict(_section_types())


@functools.cache
def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(RunConfig)
    return {name: hint for name, hint in hints.items() if dataclasses.is_dataclass(hint)}


def section_names() -> tuple[str, ...]:
    """The names of the config's sections (model, data, ...), in declaration order."""
    return tuple(section_types())


def iter_options() -> list[tuple[str, dataclasses.Field, Any]]:
    """Every option as (dotted name, field, type hint), in declaration order: top-level first, then per section."""
    return list(_options())


@functools.cache
def _options() -> tuple[tuple[str, dataclasses.Field, Any], ...]:
    """iter_options' walk, made once: the classes do not change, and typing.get_type_hints evaluates every annotation
    again at each call (a run's config is rendered, checked and saved with a walk per option, hundreds a run)."""
    options = []
    top_hints = typing.get_type_hints(RunConfig)
    sections = _section_types()
    for f in dataclasses.fields(RunConfig):
        if f.name not in sections:
            options.append((f.name, f, top_hints[f.name]))
    for name, cls in sections.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            options.append((f"{name}.{f.name}", f, hints[f.name]))
    return tuple(options)


def auto_options() -> list[str]:
    """Dotted names of the options that take `auto` (typed `... | Auto`)."""
    return [name for name, _, hint in iter_options() if Auto in typing.get_args(hint)]
