"""A run's result at the run directory's top, replacing no file tunelab did not put there: a staged run's last stage's
files (adapter or weights, tokenizer, data report) linked or copied beside the run's own files (`publish`), and a single
run's saved result (training/result.py save_final), which `refuse_foreign_saved` guards.

A file at the top named as a result file is the run's own when it is a stage's file of that name published before:
the same file (a hard link) or a copy of its size and modification time (`shutil.copy2` keeps it), as a publish cut
short and resumed, or a finished run resumed with a stage added, leaves it. Anything else of such a name (the user's
own adapter, a tokenizer copied in) would be replaced: `refuse_foreign_results` refuses it by name (exit 2), before
any stage trains where it is there already (--resume), and again just before the publish for one put there while the
stages trained; the result then stays in its stage folder, and --resume publishes it once the file is moved.

A single run's own are the files its last save left, by the size and modification time run.json records of each
(`result_files`; a move keeps both); a finished run saved before they were recorded takes every file of a result's
name there as its own, as nothing tells them apart. Any other is refused by name the same way: before --resume trains,
and by the save for one put there while the run trained (nothing of the result is kept; its checkpoint is).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from tunelab.config.flags import CLI, Spelling
from tunelab.errors import RunDirError
from tunelab.run_info import RunInfo
from tunelab.rundir import CONFIG_FILE, RUN_FILE, STAGE_DIR
from tunelab.training.run_files import RESULT_ENTRIES, file_record, listed, written

# what a single run's save (training/result.py) moves to the top: a result's names less the data report, which the
# run writes when it starts and no save replaces
SAVED_ENTRIES = tuple(name for name in RESULT_ENTRIES if name != "data_report.json")

# a stage's own files, which stay in its folder: the run has its own of these names (not the result, nor its data report)
STAGE_ONLY = ("checkpoints", "metrics.jsonl", CONFIG_FILE, "loss.png", RUN_FILE)


def published_names(last: Path) -> list[str]:
    """The names of the last stage's files that `publish` puts at the run directory's top."""
    return sorted(
        item.name
        for item in last.iterdir()
        if item.is_file() and item.name not in STAGE_ONLY and not item.name.startswith(".")
    )


def foreign_results(run_dir: Path, names: list[str] | None = None) -> list[str]:
    """The entries at the top of `run_dir` that a publish would replace and that no stage of the run published there:
    those of `names` (the publish's own, `published_names`), or (None, before the stages have trained) of any name a
    stage's result may have (run_files.RESULT_ENTRIES), sorted; a folder with a trailing /."""
    stages = [p for p in run_dir.iterdir() if STAGE_DIR.fullmatch(p.name) and p.is_dir()]
    return _in_the_way(run_dir, names, RESULT_ENTRIES, lambda entry: _published(entry, stages))


def _in_the_way(run_dir: Path, names: list[str] | None, patterns: tuple[str, ...], ours) -> list[str]:
    """The entries at the top of `run_dir` named as one of `names` (or, None, matching `patterns`) for which `ours`
    is false, sorted; a folder with a trailing /."""
    found = []
    for entry in sorted(run_dir.iterdir()):
        wanted = entry.name in names if names is not None else written(entry.name, patterns)
        if wanted and not ours(entry):
            found.append(entry.name + ("/" if entry.is_dir() and not entry.is_symlink() else ""))
    return found


def saved_files(folder: Path, names: list[str] | None = None) -> dict[str, dict[str, int]]:
    """The record (`file_record`) of each plain file at the top of `folder` among `names`, or (None) of every one
    named as a single run's result (`SAVED_ENTRIES`)."""
    records = {
        entry.name: file_record(entry)
        for entry in folder.iterdir()
        if (entry.name in names if names is not None else written(entry.name, SAVED_ENTRIES))
    }
    return {name: record for name, record in sorted(records.items()) if record is not None}


def owned_results(run_dir: Path, info: RunInfo) -> dict[str, dict[str, int]]:
    """The files at the top of `run_dir` that are a single run's result as tunelab saved it: run.json's record of them
    (`result_files`); for a finished run that records none (saved before 2026-12-06), every file there of a result's
    name, which nothing tells from a file of the user's."""
    return info.result_files if info.result_files or not info.finished else saved_files(run_dir)


def refuse_foreign_saved(
    run_dir: Path, owned: dict[str, Any], names: list[str] | None = None, left: str = "", spelling: Spelling = CLI
) -> None:
    """RunDirError naming the files at the top of `run_dir` that a single run's save would replace and that are not
    its own (`owned`, as `owned_results` gives it): among `names` (the save's files, `left` saying what is left of the
    run once it refuses them), or (None, before --resume trains) among every name its result may have."""

    def ours(entry: Path) -> bool:
        record = file_record(entry)
        return record is not None and owned.get(entry.name) == record

    foreign = _in_the_way(run_dir, names, SAVED_ENTRIES, ours)
    if not foreign:
        return
    where = f"{run_dir} holds {listed(foreign)} that tunelab did not write there"
    if names is None:
        raise RunDirError(
            f"{where}, named as the run's result, which its save at the end of training replaces. Move them out of "
            f"{run_dir} (or rename them), then {spelling.rerun}; nothing was trained."
        )
    raise RunDirError(
        f"{where} (put there while the run trained), named as the run's result, which its save would replace: "
        f"nothing of the result was saved. Move them out of {run_dir} (or rename them). {left}"
    )


def _published(entry: Path, stages: list[Path]) -> bool:
    """Whether `entry` is a stage's file of its name, linked or copied there by a publish."""
    if entry.is_symlink() or not entry.is_file():
        return False
    mine = entry.stat()
    for folder in stages:
        source = folder / entry.name
        if source.is_symlink() or not source.is_file():
            continue
        theirs = source.stat()
        if (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino):
            return True
        if (mine.st_size, mine.st_mtime_ns) == (theirs.st_size, theirs.st_mtime_ns):
            return True
    return False


def refuse_foreign_results(
    run_dir: Path, last: Path | None = None, spelling: Spelling = CLI, names: list[str] | None = None
) -> None:
    """RunDirError naming the files at the top of `run_dir` that the publish of the last stage's result would replace
    and that tunelab did not put there (`foreign_results`). `last`: the last stage's folder once it has trained (its
    result waits there, and `names` are its files to publish); None before the stages train."""
    foreign = foreign_results(run_dir, names)
    if not foreign:
        return
    where = f"{run_dir} holds {listed(foreign)} that tunelab did not write there"
    if last is None:
        raise RunDirError(
            f"{where}, named as the run's result, which the last stage's result replaces at the run directory's top "
            f"once every stage has trained. Move them out of {run_dir} (or rename them), then run again; nothing "
            "was trained."
        )
    raise RunDirError(
        f"{where} (put there while the stages trained), named as the run's result, which the last stage's result "
        f"would replace. The result is saved in {last}; move them out of {run_dir} (or rename them), then "
        f"{spelling.rerun} publishes it (no stage trains again)."
    )


def publish(run_dir: Path, last: Path, spelling: Spelling = CLI) -> None:
    """The last stage's result (adapter or weights, tokenizer, data report) into the run directory itself, hard
    links where the file system allows; RunDirError, nothing replaced, where a file of the user's is in the way."""
    names = published_names(last)
    refuse_foreign_results(run_dir, last, spelling, names)
    for name in names:
        target = run_dir / name
        target.unlink(missing_ok=True)
        try:
            os.link(last / name, target)
        except OSError:
            shutil.copy2(last / name, target)
