"""Where a run is written, and the rules that keep `--overwrite` from destroying anything else.

`plan_output_dir` runs before anything is loaded and writes nothing. It refuses an output_dir that

- is a file, or cannot be created (no write permission, a file in its path);
- is the working directory or a folder above it (a run directory holds config.yaml, metrics and weights of its own,
  and replacing it would delete everything beside them);
- holds the config, a data file, the eval questions or the model (replacing it would delete them), or lies inside a
  data folder (the next run would read its metrics.jsonl as training data);
- exists and is not empty, unless --overwrite (or --resume) is given; with --overwrite, it must be a run directory
  tunelab wrote (its run.json is the marker) unless --overwrite-non-run says to replace any folder.

`start_run_dir` is called only once the new run can start (config, data and model all loaded): an existing run
moves aside to `NAME.previous` and is deleted by `finish_replacement` when the new run has finished. If the new
run fails or is interrupted, the previous one is still there, and the message says how to put it back.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import RunDirError
from tunelab.rundir import RUN_FILE, is_run_dir

PREVIOUS_SUFFIX = ".previous"


@dataclass
class OutputPlan:
    run_dir: Path
    replace: bool  # an existing run directory is moved aside once the new run can start
    resume: bool

    @property
    def previous(self) -> Path:
        return previous_dir(self.run_dir)


def previous_dir(run_dir: Path) -> Path:
    """Where an existing run waits while a new run replaces it."""
    return run_dir.with_name(run_dir.name + PREVIOUS_SUFFIX)


def _writable_ancestor(path: Path) -> Path:
    """The nearest existing folder above `path` (or path itself); RunDirError if a file stands in the way."""
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                raise RunDirError(
                    f"output_dir {path}: {folder} is a file, so no folder can be created there; choose another output_dir."
                )
            return folder
    return Path("/")


def _check_creatable(path: Path) -> None:
    folder = _writable_ancestor(path.parent if path.is_dir() else path)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RunDirError(
            f"output_dir {path}: {folder} is not writable, so the run cannot be written there; choose a folder you can "
            "write to (e.g. runs/NAME under your working directory)."
        )


def plan_output_dir(
    run_dir: str | Path,
    *,
    overwrite: bool,
    resume: bool,
    protected: dict[str, list[str]],
    overwrite_non_run: bool = False,
) -> OutputPlan:
    """Validate output_dir for this run without writing anything (see the module docstring).

    protected: {what: [paths]} the run must never delete, e.g. {"data file": [...], "config": [...]}; folders among
    them are data folders, which output_dir must not lie inside either."""
    path = Path(run_dir).expanduser()
    where = f"output_dir {run_dir}"
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{where} is a file, not a folder; choose a folder name for the run (e.g. runs/NAME).")
    target = path.resolve()
    if resume:
        if not is_run_dir(path):
            raise RunDirError(
                f"{where}: nothing to resume: it is not a run directory tunelab wrote (no {RUN_FILE}). Drop --resume "
                "to start a new run, or point output_dir at the run to continue."
            )
        return OutputPlan(path, replace=False, resume=True)
    if Path.cwd().resolve().is_relative_to(target):
        raise RunDirError(
            f"{where} is the working directory or a folder above it. A run directory holds its own config.yaml, "
            "metrics and weights, and replacing it would delete everything in it; choose a new folder, e.g. runs/NAME."
        )
    for what, paths in protected.items():
        for p in paths:
            held = Path(p).expanduser().resolve()
            if held.is_relative_to(target):
                raise RunDirError(
                    f"{where} holds the {what} {p}; a run directory is replaced as a whole by --overwrite, which "
                    f"would delete it. Choose an output_dir that holds none of your files, e.g. runs/NAME."
                )
            if held.is_dir() and target.is_relative_to(held) and what.startswith("data"):
                raise RunDirError(
                    f"{where} lies inside the data folder {p}: the run's own files (metrics.jsonl, data_report.json) "
                    "would be read as training data by the next run. Choose an output_dir outside it, e.g. runs/NAME."
                )
    exists = path.is_dir() and any(path.iterdir())
    if not exists:
        _check_creatable(path)
        return OutputPlan(path, replace=False, resume=False)
    if not overwrite:
        raise RunDirError(
            f"{where}: the run directory exists and is not empty. Pass --overwrite to replace it (the old run is kept "
            "until the new one finishes), --resume to continue it, or choose another output_dir."
        )
    if not is_run_dir(path) and not overwrite_non_run:
        raise RunDirError(
            f"{where} is not a run directory tunelab wrote (it has no {RUN_FILE}), so --overwrite will not replace it: "
            "it may hold files of yours. Choose another output_dir, or add --overwrite-non-run if everything in it "
            "may be deleted."
        )
    previous = previous_dir(path)
    if previous.exists() and not is_run_dir(previous) and not overwrite_non_run:
        raise RunDirError(
            f"{where}: {previous} exists and is not a run directory, so the old run cannot be moved aside there. "
            "Move or delete it, then run again."
        )
    _check_creatable(path.parent)
    return OutputPlan(path, replace=True, resume=False)


def start_run_dir(plan: OutputPlan) -> None:
    """Make the run directory, moving an existing run aside to NAME.previous. Call only once the run can start."""
    path = plan.run_dir
    try:
        if plan.replace:
            if plan.previous.exists():
                # An earlier replacement did not finish: NAME.previous still holds the last run from before it, and
                # NAME the unfinished attempt that this run was asked to overwrite.
                shutil.rmtree(path)
            else:
                os.replace(path, plan.previous)
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"output_dir {path}: cannot be created ({exc.strerror or exc}).") from None


def finish_replacement(plan: OutputPlan) -> str | None:
    """Delete the run this one replaced, now that this one has finished; return what was done, to print."""
    if plan.replace and plan.previous.exists():
        shutil.rmtree(plan.previous)
        return f"replaced the previous run in {plan.run_dir}"
    if plan.resume and is_run_dir(plan.previous):
        return f"{plan.previous} holds the run this one replaces; delete it once you no longer need it"
    return None


def failure_note(plan: OutputPlan) -> str | None:
    """What to tell the user about the previous run when the new one fails after start_run_dir."""
    if plan.replace and plan.previous.exists():
        return (
            f"the previous run is kept in {plan.previous} until a run in {plan.run_dir} finishes; to get it back: "
            f"rm -r {plan.run_dir} && mv {plan.previous} {plan.run_dir}"
        )
    return None
