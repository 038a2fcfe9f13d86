"""--resume: continue a run exactly where it stopped, or refuse and say what differs.

The config given to --resume is compared with the run's saved config.yaml, option by option:

- options that only say how the run is watched, saved or held in memory (eval/save/log intervals, checkpoints kept,
  activation checkpointing, the questions asked at the end, ...) may change; the change is printed;
- train.max_steps and train.epochs may change (to no fewer steps than the checkpoint has done): the run continues
  to the new length, with the learning-rate schedule recomputed for it from the checkpoint on; this is said;
- every other change (the model, the data, the method, the optimizer and its schedule, the seed) would make the
  resumed run a different run, so it is refused with the list of differences (exit code 2).

The training data is compared by content too: run.json records a digest of the tokenized training rows.
"""

from __future__ import annotations

import hashlib
from array import array
from pathlib import Path
from typing import Any

import yaml

from tunelab.config import ACTION_OPTIONS, RunConfig, iter_options, section_names, to_dict
from tunelab.errors import ConfigError, RunDirError
from tunelab.rundir import CONFIG_FILE

ALLOWED = {
    "output_dir",
    "model.device",
    "train.eval_every",
    "train.save_every",
    "train.keep_checkpoints",
    "train.keep_checkpoints_after_finish",
    "train.log_every",
    "train.checkpointing",
    "train.offload_activations",
    "train.max_bad_steps",
    "eval.questions",
    "eval.refusal",
    "eval.max_new_tokens",
    *ACTION_OPTIONS,
}
LENGTH = {"train.max_steps", "train.epochs"}
PATHS = {"data.train", "data.eval", "eval.questions"}


def _flat(values: dict) -> dict[str, Any]:
    flat, sections = {}, set(section_names())
    for key, value in values.items():
        if isinstance(value, dict) and key in sections:
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def _same(name: str, old: Any, new: Any) -> bool:
    if old == new:
        return True
    if name in PATHS and old is not None and new is not None:
        olds, news = (v if isinstance(v, list) else [v] for v in (old, new))
        return len(olds) == len(news) and all(Path(a).resolve() == Path(b).resolve() for a, b in zip(olds, news))
    return False


def config_changes(saved: dict, cfg: RunConfig) -> tuple[list[str], list[str]]:
    """(refused, allowed): one 'option: old -> new' line per difference between the saved and the new config."""
    current = _flat(to_dict(cfg))
    defaults = _flat(to_dict(RunConfig()))
    saved = _flat(saved)
    refused, allowed = [], []
    for name, _, _ in iter_options():
        old = saved.get(name, defaults[name])  # an option newer than the run: it ran with the default
        new = current[name]
        if _same(name, old, new):
            continue
        line = f"{name}: {old!r} -> {new!r}"
        (allowed if name in ALLOWED | LENGTH else refused).append(line)
    return refused, allowed


def check_resume_config(run_dir: Path, cfg: RunConfig) -> list[str]:
    """ConfigError listing the changes that break exactness; otherwise the notes to print about allowed ones."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise RunDirError(
            f"{path}: the run's saved config cannot be read ({exc}), so --resume cannot check it."
        ) from None
    if not isinstance(saved, dict):
        raise RunDirError(f"{path}: the run's saved config is damaged, so --resume cannot check it.")
    refused, allowed = config_changes(saved, cfg)
    if refused:
        raise ConfigError(
            f"{run_dir}: --resume continues the run with the config it started with, and these options differ from "
            f"{path}: {'; '.join(refused)}. They change what is trained, so the result would be neither the old run "
            "nor a new one. Put them back to resume, or start a new run (another output_dir, or --overwrite)."
        )
    notes = []
    for line in allowed:
        name = line.split(":")[0]
        if name in LENGTH:
            notes.append(f"resume: {line}; the run continues to the new length, its learning-rate schedule recomputed")
        elif name == "model.device":
            notes.append(f"resume: {line} (allowed: the remaining steps run there, not bit-identical to staying put)")
        else:
            notes.append(f"resume: {line} (allowed: it changes how the run is watched or saved, not what it learns)")
    return notes


def data_digest(rows: list) -> str:
    """sha256 over the token ids and labels of the training rows, in order."""
    h = hashlib.sha256()
    for row in rows:
        h.update(array("q", row.input_ids).tobytes())
        h.update(array("q", row.labels).tobytes())
    return h.hexdigest()


def check_same_data(run_dir: Path, recorded: str, digest: str) -> None:
    if recorded and recorded != digest:
        raise ConfigError(
            f"{run_dir}: --resume needs the training data the run started with, but the tokenized training rows "
            "differ (a data file, the tokenizer or the template changed). Restore the data, or start a new run."
        )
