"""Where a run is written, and the rules that keep `--overwrite` from destroying anything else.

`plan_output_dir` runs before anything is loaded and writes nothing. It refuses an output_dir that

- is a file, or cannot be created (no write permission, a file in its path, a symbolic link to nothing);
- is the working directory or a folder above it (a run directory holds config.yaml, metrics and weights of its own,
  and replacing it would delete everything beside them);
- holds the config, a data file, the eval questions or the model (replacing it would delete them), or lies inside a
  data folder (the next run would read its metrics.jsonl as training data);
- lies inside another run directory (but for a staged run's own stage-K folders, written by the staged run
  itself: `stage_of`): that run's --overwrite would stop at it (--overwrite-non-run delete it), and a stage folder
  replaced from outside breaks the staged run (its later stages, its resume and its report read the stage as it
  trained);
- exists and is not empty, unless --overwrite (or --resume) is given; with --overwrite, it must be a run directory
  tunelab wrote (its run.json is the marker) holding no other run directory and no file or folder tunelab did not
  write there (`run_files.foreign_entries`: notes or data of the user's), unless --overwrite-non-run says to
  replace any folder.

`start_run_dir` is called only once the new run can start (config, data and model all loaded): an existing run
moves aside to `NAME.previous`, marked as moved there by tunelab (`REPLACED_FILE`), and is deleted by
`finish_replacement` when the new run has finished (resumed or not), unless it was resumed in NAME.previous meanwhile
(`_taken_up`), or something tunelab did not write was put there meanwhile. If the new run fails or is interrupted,
the previous one is still there, and the message says how to put it back. A `NAME.previous` tunelab did not move there
(a run or folder of the user's) is never deleted, and neither is a finished run in NAME: --overwrite refuses both.

While a run writes its directory it holds a lock on `NAME/.tunelab.lock` (`hold_lock`, where the system has
`fcntl.flock`): a second run started on the same output_dir, to train, resume or replace it, is refused instead of
writing its metrics, checkpoints and weights among the first one's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tunelab.config.flags import CLI, Spelling
from tunelab.errors import RunDirError
from tunelab.run_info import RUN_FILE
from tunelab.rundir import STAGE_DIR, federation_stopped, is_run_dir, read_info
from tunelab.training.interrupt import sigterm_raises
from tunelab.training.run_files import foreign_entries, listed

PREVIOUS_SUFFIX = ".previous"
REPLACED_FILE = ".tunelab-replaced.json"  # in NAME.previous: tunelab moved it there, to be replaced by NAME
LOCK_FILE = ".tunelab.lock"
_held: dict[str, int] = {}  # resolved folder -> the open file whose flock this process holds


@dataclass
class OutputPlan:
    run_dir: Path
    replace: bool  # an existing run directory is moved aside once the new run can start
    resume: bool
    anything: bool = False  # --overwrite-non-run: what tunelab did not write may go with the run it replaces

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


def _check_creatable(path: Path, shown: Path | None = None) -> None:
    """RunDirError unless files can be written in folder `path` (or, where it does not exist yet, it can be made)."""
    folder = _writable_ancestor(path)
    path = shown or path
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RunDirError(
            f"output_dir {path}: {folder} is not writable, so the run cannot be written there; choose a folder you can "
            "write to (e.g. runs/NAME under your working directory)."
        )


def _finished_for_good(path: Path) -> bool:
    """A run directory whose run finished and keeps no step checkpoint (its own or a stage's): --resume of it is
    refused (`resume.resume_checkpoint`), so the advice for it leaves --resume out. A run.json that cannot be read
    is left to the checks that name it."""
    try:
        finished = is_run_dir(path) and read_info(path, require_finished=False).finished
    except RunDirError:
        return False
    kept = [*path.glob("checkpoints/step-*"), *path.glob("stage-*/checkpoints/step-*")]
    return finished and not any(p.is_dir() for p in kept)


def plan_output_dir(
    run_dir: str | Path,
    *,
    overwrite: bool,
    resume: bool,
    protected: dict[str, list[str]],
    overwrite_non_run: bool = False,
    stage_of: Path | None = None,
    command: str = "train",
    spelling: Spelling = CLI,
) -> OutputPlan:
    """Validate output_dir for this run without writing anything (see the module docstring).

    command: the tunelab command (and Python function) the messages name; only train and check offer
    --overwrite-non-run, so the others' messages say to empty the folder instead. spelling: how the caller names
    resume (--resume, or resume=True in Python).

    protected: {what: [paths]} the run must never delete, e.g. {"data file": [...], "config": [...]}; folders among
    them are data folders, which output_dir must not lie inside either. stage_of: the staged run training this
    stage, whose stage-K folder output_dir may be."""
    path = Path(run_dir).expanduser()
    where = f"output_dir {run_dir}"
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{where} is a file, not a folder; choose a folder name for the run (e.g. runs/NAME).")
    if path.is_symlink() and not path.exists():  # found only when the run starts, as "cannot be created (File exists)"
        raise RunDirError(
            f"{where} is a symbolic link to {os.readlink(path)}, which does not exist; create that folder, or give "
            "another output_dir."
        )
    target = path.resolve()
    if resume:
        if not is_run_dir(path):
            why = (
                f"it is not a run directory tunelab wrote (no {RUN_FILE})"
                if path.exists()
                else "the folder does not exist"
            )
            raise RunDirError(
                f"{where}: nothing to resume: {why}. Drop {spelling.resume} to start a new run, or point output_dir at "
                "the run to continue."
            )
        _check_creatable(path)
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
                    f"{where} holds the {what} {p}; a run directory is replaced as a whole (--overwrite refuses "
                    "while it holds files tunelab did not write, --overwrite-non-run deletes them with it). Choose an "
                    "output_dir that holds none of your files, e.g. runs/NAME."
                )
            if held.is_dir() and target.is_relative_to(held) and what.startswith("data"):
                raise RunDirError(
                    f"{where} lies inside the data folder {p}: the run's own files (metrics.jsonl, data_report.json) "
                    "would be read as training data by the next run. Choose an output_dir outside it, e.g. runs/NAME."
                )
    _refuse_inside_a_run(path, target, where, stage_of, spelling)
    exists = path.is_dir() and any(p.name != LOCK_FILE for p in path.iterdir())  # a run that failed before any file
    if not exists:
        _check_creatable(path)
        return OutputPlan(path, replace=False, resume=False)
    overwrite_, non_run_ = (
        ("--overwrite", "--overwrite-non-run") if spelling.flags else (spelling.overwrite, "overwrite_non_run=True")
    )
    if overwrite and path.is_symlink():
        raise RunDirError(
            f"{where} is a symbolic link to {target}: {overwrite_} moves the run aside and writes a new folder in its "
            f"place, which would replace the link, not the run it points to. Give the folder itself: {target}."
        )
    if not overwrite and overwrite_non_run:
        raise RunDirError(
            f"{where}: the folder exists and is not empty, and {non_run_} replaces nothing by itself: it only "
            f"lets {overwrite_} replace a folder that is not a run. Give {overwrite_} as well to replace it, or choose "
            "another output_dir."
        )
    non_run = (  # what to do when every file there may go
        f"add {non_run_} if everything in it may be deleted"
        if command in ("train", "check")
        else f"delete it yourself if everything in it may go "
        f"({f'tunelab {command}' if spelling.flags else f'{command}()'} replaces run directories only)"
    )
    if not overwrite and not is_run_dir(path):  # neither --overwrite alone nor --resume would take it
        both = (
            f"give {overwrite_} and {non_run_} together if everything in it may be deleted"
            if command in ("train", "check")
            else non_run
        )
        raise RunDirError(
            f"{where} exists, is not empty and is not a run directory tunelab wrote (it has no {RUN_FILE}): it may "
            f"hold files of yours. Choose another output_dir, or {both}."
        )
    if not overwrite and _finished_for_good(path):  # --resume would be refused: nothing to continue from
        raise RunDirError(
            f"{where}: a finished run is there (its step checkpoints deleted at its end or never written, so "
            f"{spelling.resume} has nothing to continue from). Pass {overwrite_} to replace it (the old run is kept "
            "until the new one finishes), or choose another output_dir."
        )
    if not overwrite:
        raise RunDirError(
            f"{where}: the run directory exists and is not empty. Pass {overwrite_} to replace it (the old run is "
            f"kept until the new one finishes), {spelling.resume} to continue it, or choose another output_dir."
        )
    if not is_run_dir(path) and not overwrite_non_run:
        raise RunDirError(
            f"{where} is not a run directory tunelab wrote (it has no {RUN_FILE}), so {overwrite_} will not replace "
            f"it: it may hold files of yours. Choose another output_dir, or {non_run}."
        )
    nested = _runs_inside(path)
    if nested and not overwrite_non_run:
        raise RunDirError(
            f"{where} holds another run directory, {nested}: {overwrite_} replaces {path} as a whole, which would "
            f"delete that run too. Move it out of the folder first, or {non_run.replace('everything in it', 'it')}."
        )
    if not overwrite_non_run:
        forced = f"add {non_run_} if they may be deleted" if command in ("train", "check") else ""
        _refuse_foreign(path, where, overwrite_, forced)
    previous = previous_dir(path)
    if previous.exists() or previous.is_symlink():
        _check_previous(path, previous, where)
    _check_creatable(path.parent, path)
    return OutputPlan(path, replace=True, resume=False, anything=overwrite_non_run)


def _refuse_foreign(path: Path, where: str, overwrite_: str = "--overwrite", otherwise: str = "") -> None:
    """RunDirError when the run directory `path` holds files or folders tunelab did not write there (`foreign_entries`),
    which replacing the run would delete with it. `otherwise`: the caller's way to let them go."""
    foreign = foreign_entries(path)
    if foreign:
        raise RunDirError(
            f"{where} holds {listed(foreign)} that tunelab did not write there: {overwrite_} replaces the run "
            f"directory as a whole, which would delete them with it. Move them out of {path}, or choose another "
            f"output_dir{f', or {otherwise}' if otherwise else ''}."
        )


def _refuse_inside_a_run(path: Path, target: Path, where: str, stage_of: Path | None, spelling: Spelling) -> None:
    """RunDirError when a new run's folder lies inside another run directory (other than as a stage-K folder of the
    staged run `stage_of`, which writes it): that run's --overwrite would stop at it. `spelling`: how
    the caller names overwrite and resume."""
    own = stage_of is not None and Path(stage_of).expanduser().resolve() == target.parent
    for folder in target.parents:
        if folder == target.parent and STAGE_DIR.fullmatch(target.name) and is_run_dir(folder) and not own:
            raise RunDirError(
                f"{where} is the stage folder {target.name} of the staged run {folder}, which only that run writes "
                "(its later stages, a resume and report read the stage as it trained). Train the staged run again "
                f"(its config, with {spelling.overwrite} or {spelling.resume}), or choose an output_dir outside {folder}."
            )
        if is_run_dir(folder) and not (own and folder == target.parent and STAGE_DIR.fullmatch(target.name)):
            raise RunDirError(
                f"{where} lies inside the run directory {folder}, where another run stops that run's replacement "
                f"({spelling.overwrite}: refused, naming it). Choose an output_dir outside it, e.g. a folder beside it."
            )


def _runs_inside(path: Path) -> Path | None:
    """A run directory inside `path` other than its stage-K folders (a staged run's own): the first one found."""
    for file in sorted(path.rglob(RUN_FILE)):
        folder = file.parent
        if folder != path and not STAGE_DIR.fullmatch(folder.relative_to(path).parts[0]) and is_run_dir(folder):
            return folder
    return None


def _check_previous(path: Path, previous: Path, where: str) -> None:
    """An existing NAME.previous may stay only as what an unfinished replacement left: the run tunelab moved aside
    there for the attempt now in NAME, which did not finish (that attempt is what --overwrite replaces, and the run
    before it stays kept). Anything else would be lost: a folder or run of the user's that happens to have the
    name, or (NAME being finished) an older run the user may still want, with NAME itself."""
    if not (previous / REPLACED_FILE).is_file() or previous.is_symlink():
        raise RunDirError(
            f"{where}: {previous} exists, and tunelab did not move it there: --overwrite moves the run it replaces "
            "to that name until the new run finishes, and will not delete what is there. Rename or move it, then "
            "run again."
        )
    if _finished(path):
        raise RunDirError(
            f"{where}: {previous} holds an older run, which the finished run in {path} replaced. Delete {previous} "
            "(or move it) if you no longer need it, then run again: --overwrite keeps one run aside at a time."
        )


def _finished(path: Path) -> bool:
    try:
        return read_info(path, require_finished=False).finished
    except Exception:  # a damaged run.json: not a finished run
        return False


def hold_lock(folder: Path) -> None:
    """Take the lock of the run in `folder` for this process, until `release_lock` (or the process ends); RunDirError
    when another process holds it. This process's own earlier hold (a run of the folder that ended or failed) is
    given up first, unless it is a hold of the same lock file: then it is kept, since letting go and taking it again
    fails while a child this process forked has not yet exec'd (it shares the held file, and so the lock; the
    federation's server takes the lock its CLI took while Ray starts processes). Does nothing where the system has no
    flock."""
    try:
        import fcntl
    except ImportError:
        return
    key = str(folder.resolve())
    if key in _held and _same_file(_held[key], folder / LOCK_FILE):
        return
    release_lock(folder)
    handle = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(handle)
        raise RunDirError(
            f"output_dir {folder}: another tunelab process is writing this run now (it holds {folder / LOCK_FILE}). "
            "Wait for it to end, or choose another output_dir."
        ) from None
    _held[key] = handle


def _locked_elsewhere(folder: Path) -> bool:
    """True when another process holds the lock of the run in `folder` now (False where there is no flock)."""
    try:
        import fcntl

        handle = os.open(folder / LOCK_FILE, os.O_RDWR)
    except (ImportError, OSError):
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(handle)
    return False


def _same_file(handle: int, path: Path) -> bool:
    try:
        held, there = os.fstat(handle), os.stat(path)
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)


def release_lock(folder: Path) -> None:
    handle = _held.pop(str(folder.resolve()), None)
    if handle is not None:
        os.close(handle)


def start_run_dir(plan: OutputPlan) -> None:
    """Make the run directory and hold its lock, moving an existing run aside to NAME.previous (or, after an
    unfinished replacement, deleting the unfinished attempt: `_check_previous`). Call only once the run can start;
    the rules of `plan_output_dir` are checked again, since another process may have written there meanwhile."""
    path = plan.run_dir
    try:
        if plan.replace:
            hold_lock(path)  # not while another process writes the run about to be moved aside
            if not plan.anything:  # put there since plan_output_dir looked
                try:
                    _refuse_foreign(path, f"output_dir {path}")
                except RunDirError:
                    release_lock(path)
                    raise
            previous = plan.previous
            if previous.exists() or previous.is_symlink():
                _check_previous(path, previous, f"output_dir {path}")
                print(
                    f"replacing: deleting {_described(path)} in {path}, an unfinished replacement of the run in "
                    f"{previous}, which stays there until this run finishes",
                    flush=True,
                )
                release_lock(path)
                shutil.rmtree(path)
            else:
                print(
                    f"replacing: moving {_described(path)} in {path} to {previous}, deleted once this run finishes",
                    flush=True,
                )
                release_lock(path)
                os.replace(path, previous)
                (previous / REPLACED_FILE).write_text(json.dumps({"replaced_by": str(path.resolve())}) + "\n")
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"output_dir {path}: cannot be created ({exc.strerror or exc}).") from None
    hold_lock(path)
    if [p for p in path.iterdir() if p.name != LOCK_FILE]:  # filled since plan_output_dir found it empty
        release_lock(path)
        raise RunDirError(
            f"output_dir {path}: another process wrote into it since the run was planned; choose another output_dir."
        )


def _described(path: Path) -> str:
    """What --overwrite replaces in `path`, in words: a federation stopped early (its global adapter of the last round
    goes with it), an unfinished run and the step it reached, a finished run, or a folder that is no run."""
    try:
        info = read_info(path, require_finished=False)
    except Exception:  # a damaged run.json, or --overwrite-non-run of a folder that is no run
        return "the folder" if not is_run_dir(path) else "the run (its run.json cannot be read)"
    stopped = federation_stopped(info.extra)
    if stopped:
        return f"the federation stopped after round {stopped[0]} of {stopped[1]} (with its adapter of that round)"
    if info.finished:
        return "the finished run"
    how = {  # run.json's end: why it stopped
        "interrupted": "interrupted after step",
        "non_finite": "stopped by the non-finite guard at step",
        "error": "stopped by an error after step",
    }.get(info.end.get("reason"), "stopped at step")
    return f"the unfinished run ({how} {info.steps})" if info.steps else "the unfinished run"


def finish_replacement(plan: OutputPlan, spelling: Spelling = CLI) -> str | None:
    """Delete the run this one replaced, now that this one has finished (also when it finished on --resume), and let
    go of the run's lock; return what was done, to print, naming output_dir and resume as `spelling` does."""
    release_lock(plan.run_dir)
    if (plan.replace or plan.resume) and (plan.previous / REPLACED_FILE).is_file() and not plan.previous.is_symlink():
        if _taken_up(plan.previous):
            there = f"--output_dir {plan.previous}" if spelling.flags else f"output_dir {plan.previous} and"
            return (
                f"kept {plan.previous}: the run moved aside there was resumed since ({there} {spelling.resume}), so it "
                "is not deleted; delete it yourself if you no longer need it"
            )
        foreign = [e for e in foreign_entries(plan.previous) if e != REPLACED_FILE] if not plan.anything else []
        if foreign:
            return (
                f"kept {plan.previous}: it holds {listed(foreign)} that tunelab did not write there, put there since "
                "the run was moved aside; move them out, then delete it yourself"
            )
        shutil.rmtree(plan.previous)
        return f"replaced the previous run in {plan.run_dir}"
    return None


def _taken_up(previous: Path) -> bool:
    """The run in NAME.previous was resumed there after tunelab moved it aside (its run.json is newer than the mark),
    or a process is resuming it now: the user's run again, not the replaced one waiting to be deleted."""
    try:
        marked, described = (previous / REPLACED_FILE).stat().st_mtime_ns, (previous / RUN_FILE).stat().st_mtime_ns
    except OSError:
        return _locked_elsewhere(previous)
    return described > marked or _locked_elsewhere(previous)


@contextlib.contextmanager
def failure_noted(plan: OutputPlan | None, main: bool = True) -> Iterator[None]:
    """Around the work after `plan` (from loading to saving): when it raises, `failure_note` on stderr (`main`: the
    process that writes the run; None: a resume, which replaces nothing), then the error goes on. SIGTERM raises too
    (`sigterm_raises`), so that the note is printed however the run stops before it is established; only SIGKILL
    goes without it."""
    try:
        with sigterm_raises():
            yield
    except BaseException:
        note = failure_note(plan) if plan is not None and main else None
        if note:
            print(note, file=sys.stderr, flush=True)
        raise


def failure_note(plan: OutputPlan) -> str | None:
    """What to tell the user about the previous run when the new one fails after start_run_dir (whose lock is let
    go: the run may be resumed, or replaced, by the next command). None while another process writes the run (a
    second --overwrite refused by its lock): NAME is that process's run, which the way back would delete."""
    release_lock(plan.run_dir)
    if plan.replace and (plan.previous / REPLACED_FILE).is_file() and not _locked_elsewhere(plan.run_dir):
        return (
            f"the previous run is kept in {plan.previous} until a run in {plan.run_dir} finishes; to get it back: "
            f"rm -r {plan.run_dir} && mv {plan.previous} {plan.run_dir}"
        )
    return None
