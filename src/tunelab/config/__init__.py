"""Typed configuration: one dataclass per concern, YAML as their saved form, `--section.key value` as the override.

Every field carries a one-line help text (it feeds `tunelab train --help`) and, where it has them, its allowed
values or range. `load_config` records where each resolved value came from (default, the YAML file, or a flag) so the
run can print and save it.

The package's modules, each imported only by those after it:
  options     `opt` (a field with help, choices and range), `Auto` / `AUTO`
  model data train tasks federated
              the sections: model: and method:; data: (DataSource); train: and eval: (with the trackers of
              train.report_to and `parse_size` of train.gpu_memory); classify:, dpo:, grpo: (RewardSpec); federated:
  run         RunConfig and the walk over its options (`iter_options`, `section_names`, `auto_options`)
  values      one value against its field's type hint and constraints
  suggest     unknown option names and what was meant (ALIASES)
  paths       relative paths of a YAML file resolved against its folder
  validate    rules across options (`check_consistency`, `check_head_options`)
  yaml_file   a config file's YAML (`read_yaml`: keys given twice refused, each key's line) flattened to dotted names
  overrides   flags and Python overrides read as their options' types (`FlagValues`, `read_text_value`), and named
  load        `load_config` -> ResolvedConfig (values with their origins), stages (`stage_config`)
  render      `dump_yaml` (the saved form, a staged run's `as_trained`), `describe` (the printed form), `to_dict`, ACTION_OPTIONS
  flags       the command line's arguments before argparse reads them (`join_negative_values`, `refuse_repeated`)

This module re-exports the names the rest of tunelab, the tests, examples and benchmarks import from `tunelab.config`.
"""

from tunelab.config.data import DataConfig, DataSource
from tunelab.config.federated import ClientSource, FederatedConfig
from tunelab.config.load import ResolvedConfig, load_config, stage_config, stage_name, stage_where
from tunelab.config.model import MethodConfig, ModelConfig
from tunelab.config.options import AUTO
from tunelab.config.render import ACTION_OPTIONS, as_trained, describe, dump_yaml, to_dict, trained_stages
from tunelab.config.run import RunConfig, auto_options, iter_options, section_names
from tunelab.config.suggest import unknown_option
from tunelab.config.tasks import PLACEHOLDER, ClassifyConfig, DpoConfig, GrpoConfig, RewardSpec
from tunelab.config.train import EvalConfig, TrainConfig, check_trackers, parse_size

__all__ = [
    "ACTION_OPTIONS",
    "AUTO",
    "PLACEHOLDER",
    "ClassifyConfig",
    "ClientSource",
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
    "as_trained",
    "trained_stages",
    "auto_options",
    "check_trackers",
    "describe",
    "dump_yaml",
    "iter_options",
    "load_config",
    "parse_size",
    "section_names",
    "stage_config",
    "stage_name",
    "stage_where",
    "to_dict",
    "unknown_option",
]
