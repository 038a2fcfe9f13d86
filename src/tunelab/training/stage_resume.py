"""What --resume of a staged run (training/stages.py) checks and mends before any stage trains: the stages' options
against the run's config.yaml (`refuse_changed_stage`, naming the stage's file and line), a run with nothing left to
train (`refuse_nothing_to_train`), and a run moved to another folder, whose saved stage configs name the stages before
them by their old paths (`follow_move`). `stage_dir` is where stage k lives in a run directory.

A stage's data is compared by content, as a plain run's (training/resume.py): its files may move, and the rows they
give must be those the stage recorded in its run.json; a finished stage, which is skipped, by `check_finished_data`,
the stage --resume continues by the recipe's own resume.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from tunelab.config import ResolvedConfig, as_trained, stage_where, trained_stages
from tunelab.config.flags import CLI, Spelling
from tunelab.config.load import STAGE_PREFIX
from tunelab.config.overrides import is_override
from tunelab.config_digest import check_config
from tunelab.data.formats import eval_said_as
from tunelab.errors import ConfigError
from tunelab.models.base_record import recorded_commit
from tunelab.run_info import RunInfo
from tunelab.rundir import CONFIG_FILE, is_run_dir, read_info, run_file, write_config
from tunelab.training.prepare import load_inputs
from tunelab.training.resume import (
    CONTENT,
    check_resume_config,
    check_same_data,
    data_digest,
    file_digests,
    flags_over_stages,
    split_changed,
)


def stage_dir(run_dir: Path, k: int) -> Path:
    return run_dir / f"{STAGE_PREFIX}{k}"


def follow_move(run_dir: Path, plans: list[ResolvedConfig]) -> None:
    """A staged run moved or copied to another folder: each later stage's saved config names the stage before it by
    its old absolute path, which --resume would read as another adapter (or base). Point those at this run's own
    stages, with a note; nothing else in the saved configs changes."""
    inside = run_dir.expanduser().absolute()
    for k, plan in enumerate(plans[1:], 2):
        here = stage_dir(run_dir, k)
        if not (here / CONFIG_FILE).is_file():
            continue
        saved = saved_config(here)
        model = saved.get("model") if isinstance(saved, dict) else None
        if not isinstance(model, dict):
            continue  # a damaged config: the stage's own resume check says so
        moved = []
        for key in ("name", "adapter"):
            old, new = model.get(key), getattr(plan.config.model, key)
            if not (isinstance(old, str) and new and old != new and Path(new).is_relative_to(inside)):
                continue  # not a path into this run (the base model), or unchanged
            tail = Path(new).relative_to(inside).parts  # ('stage-1',) or ('stage-1', 'merged')
            if Path(old).parts[-len(tail) :] == tail:
                model[key] = new
                moved.append(f"model.{key} {old} -> {new}")
        if moved:
            write_config(here, yaml.safe_dump(saved, sort_keys=False, allow_unicode=True))
            print(f"{here}: the run was moved; its saved config now names this run's stages ({'; '.join(moved)})")


def check_finished_data(plan: ResolvedConfig, here: Path, info: RunInfo) -> None:
    """DataChanged when the data of the finished stage in `here` (its files moved or not) no longer gives the rows it
    trained on (`info`: its run.json): the run would be neither the one it started as nor a new one. The rows are read
    as the stage read them, over its own model (the result of the stage before, or the run's base)."""
    if not (info.data_sha256 or info.eval_sha256):
        return  # a stage written before the digests were recorded
    inputs = load_inputs(plan.config, commit=recorded_commit(here), spelling=plan.spelling)
    split = split_changed(info, inputs.source)  # a GGUF base's older tokenizer conversion, as the recipe's resume says
    for what, recorded, files, rows in (
        ("training", info.data_sha256, info.data_files, inputs.data.train),
        ("eval", info.eval_sha256, info.eval_files, inputs.data.eval),
    ):
        digest = data_digest(rows) if rows else ""
        check_same_data(here, recorded, digest, what, (files, file_digests(rows or [])), split)


def _as_saved(value: Any) -> Any:
    """A stage's option value as config.yaml holds it: a RewardSpec as its mapping, a tuple as a list. Compared as
    they are, grpo.rewards read from the file never equalled the config's, and was listed as changed beside the option
    that was."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, list | tuple):
        return [_as_saved(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_saved(v) for k, v in value.items()}
    return value


def _shown(stage: dict, key: str) -> str:
    """The stage's value of `key` for the message; an option the stage does not set is said so, not shown as None."""
    return repr(stage[key]) if key in stage else "not set"


def check_staged_resume(run_dir: Path, resolved: ResolvedConfig) -> list[str]:
    """--resume's check of a staged run's config against the run's config.yaml, each compared as the run saves it
    (`as_trained`: its stages as they train): the notes on the allowed changes (training/resume.py
    `check_resume_config`), or ConfigError naming the first stage whose options changed, and its line."""
    try:
        return check_resume_config(
            run_dir, as_trained(resolved), by_content=CONTENT, spelling=resolved.spelling, flagged=_flagged(resolved)
        )
    except ConfigError:
        refuse_changed_stage(run_dir, resolved)
        raise


def _flagged(resolved: ResolvedConfig) -> set[str]:
    """The options given as flags that win over the run's stages (none where the stages came so too: stage_values)."""
    if is_override(resolved.origins.get("stages", "")):
        return set()
    return {name for name, origin in resolved.origins.items() if is_override(origin)}


def refuse_changed_stage(run_dir: Path, resolved: ResolvedConfig) -> None:
    """ConfigError naming the first stage (its file and line) whose options differ from that stage in the run's
    config.yaml, each old -> new: --resume refused the whole `stages:` list, old and new, leaving the user to find
    the change. A stage's name may change (it only labels the stage); more or fewer stages are left to the caller."""
    saved = flags_over_stages(saved_config(run_dir), _flagged(resolved)).get("stages")
    now = trained_stages(resolved)  # as config.yaml saves them
    if not isinstance(saved, list) or len(saved) != len(now):
        return
    for k, (old, new) in enumerate(zip(saved, now), 1):
        if not isinstance(old, dict):
            return
        new = {key: _as_saved(value) for key, value in new.items()}
        keys = sorted((old.keys() | new.keys()) - {"name"})
        changed = [f"{key}: {_shown(old, key)} -> {_shown(new, key)}" for key in keys if old.get(key) != new.get(key)]
        if not changed:
            continue
        base = (
            " model.revision names the base every stage trains over, so it stays as the run started."
            if any(line.startswith("model.revision:") for line in changed)
            else ""
        )
        raise ConfigError(
            f"{stage_where(resolved, k)}: {resolved.spelling.resume} continues the run with the config it started "
            f"with, and stage {k}'s options differ from {run_dir / CONFIG_FILE}: {'; '.join(changed)}.{base} Put them "
            f"back to resume, or start a new run (another output_dir, or {resolved.spelling.overwrite})."
        )


def refuse_nothing_to_train(run_dir: Path, count: int, spelling: Spelling = CLI) -> None:
    """ConfigError for --resume of a staged run whose every stage has finished: a finished stage keeps its steps, so
    nothing would train, and the run's result used to be published again with exit 0. A run stopped after its last
    stage was saved but before the run's own result was written (its run.json not finished) is let through: --resume
    skips the stages and writes that result."""
    if not read_info(run_dir, require_finished=False).finished:
        return
    for k in range(1, count + 1):
        here = stage_dir(run_dir, k)
        if not (is_run_dir(here) and read_info(here, require_finished=False).finished):
            return
    raise ConfigError(
        f"{run_dir}: every one of the {count} stages has finished, so {spelling.resume} has nothing to train (a "
        f"finished stage keeps its steps). Add a stage to train on, or start the run again with {spelling.overwrite}."
    )


def saved_config(here: Path) -> dict:
    """A stage's (or the staged run's) config.yaml as saved, checked against its run.json's digest (`check_config`)."""
    check_config(here / CONFIG_FILE, run_file(here))
    return yaml.safe_load((here / CONFIG_FILE).read_text(encoding="utf-8"))


def stage_named(k: int, names: list[str]) -> str:
    """How an error names stage k (1-based) of the stages `names`: stage 2 of 3 (qa)."""
    return f"stage {k} of {len(names)} ({names[k - 1]})"


def stage_error(exc: Exception, k: int, names: list[str], spelling: Spelling, run_dir: str | Path) -> Exception:
    """`exc`, raised reading stage k's data, named by its stage (`stage_named`), its advice to score questions naming
    eval of `run_dir` as the caller runs it (`eval_said_as`)."""
    exc.args = (f"{stage_named(k, names)}: {exc}",)
    return eval_said_as(exc, spelling, run_dir)
