"""A run's base model: what training records of it and how later commands open the same weights again.

Training records the base by a name that opens from any folder (`recorded_name`), a fingerprint of its weight files
(`models.load.fingerprint`), and for a hub id the commit its revision resolved to (`hub_commit`), which training
loads (`pinned_source`) and --resume loads again (`recorded_commit`). `run_base` opens the base of a finished run and
refuses one whose weights are no longer those it trained over; a GGUF base file that is gone is replaced by its
converted copy when that holds the same weights.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from tunelab.config.model import EMBEDDED
from tunelab.errors import ModelError, RunDirError
from tunelab.models.converted import converted_copies
from tunelab.models.load import ModelSource, fingerprint, resolve_source
from tunelab.run_info import RunInfo
from tunelab.rundir import read_info


def hub_source(name: str, revision: str | None) -> ModelSource:
    """The hub id `name` at `revision`, whatever this folder holds: a run that recorded its base as a hub id (its
    base_source) is not opened over a local folder that happens to have the same name here."""
    return ModelSource(name, name, revision=revision or None, kind="hub")


def recorded_name(name: str) -> str:
    """The base model's name as a run records it: a local directory or .gguf file as its absolute path, since later
    commands open the run from any folder (a relative path would name another model there, or a hub id); an alias
    or hub id as written."""
    if name in EMBEDDED:
        return name
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def hub_commit(source: ModelSource) -> str:
    """The commit a hub id's files are read from (its revision resolved: a branch or tag moves, a commit does not):
    the snapshot folder huggingface_hub keeps its config.json in, fetched from the hub or read from its cache when
    offline. '' for another source, or when the hub id cannot be reached (loading it says why)."""
    if source.kind != "hub":
        return ""
    from huggingface_hub import hf_hub_download

    try:
        path = Path(hf_hub_download(source.path, "config.json", revision=source.revision))
    except Exception:  # noqa: BLE001 - unreachable, unknown or gated: the load that follows names the error
        return ""
    return path.parent.name if path.parent.parent.name == "snapshots" else ""


def base_record(name: str, revision: str | None = None) -> dict[str, str]:
    """RunInfo's base_model, base_fingerprint, base_source and base_revision for the model the config names: a hub
    id's revision is the commit it resolved to (else the revision pinned), so later commands load those weights."""
    source = resolve_source(name, revision)
    return {
        "base_model": recorded_name(name),
        "base_fingerprint": fingerprint(source),
        "base_source": source.kind,
        "base_revision": hub_commit(source) or (revision or ""),
    }


def pinned_source(name: str, revision: str | None, weights: bool = True) -> ModelSource:
    """The source training loads: a hub id at the commit `base_record` records (resolved once), so a branch that moves
    while the run starts does not give it other weights than its run.json names. `weights`: as resolve_source's."""
    source = resolve_source(name, revision, weights)
    commit = hub_commit(source)
    return dataclasses.replace(source, revision=commit or revision)


def recorded_commit(run_dir: str | Path) -> str | None:
    """The hub commit a run recorded for its base (None: another base, or none recorded): --resume loads that one,
    whatever the branch model.revision names holds now, since the checkpoint trained over those weights."""
    try:
        info = read_info(run_dir, require_finished=False)
    except RunDirError:
        return None  # the resume's own checks say what is wrong with the run
    return (info.base_revision or None) if info.base_source == "hub" else None


def run_base(info: RunInfo) -> ModelSource:
    """The base a run trained over, refused (ModelError) when its weights are no longer those it trained over: an
    adapter over other weights gives other answers, and a merge would fold it into them without a word. A base kept
    as typed by an old run that names no model from here is refused with `info.base_problem` (RunDirError). A .gguf
    base file that is gone is replaced by its converted copy when that recorded the same fingerprint (`_gone_base`).
    The fingerprint is not checked in runs written before it was kept."""
    base_model, recorded = info.base_model, info.base_fingerprint
    if info.base_problem:
        raise RunDirError(info.base_problem)
    if Path(base_model).is_absolute() and not Path(base_model).exists():  # recorded_name keeps local bases absolute
        return _gone_base(base_model, recorded)
    if info.base_source == "hub":  # the hub id it trained from, at the commit it recorded, whatever this folder holds
        return hub_source(base_model, info.base_revision)
    source = resolve_source(base_model)  # an alias or local base; a run written before base_source: as named
    if recorded and (now := fingerprint(source)) != recorded:
        raise ModelError(
            f"model '{base_model}': its weights are not those the run trained over (fingerprint {now}, the run "
            f"recorded {recorded}); the files were replaced or changed since. Put the original base back, or train "
            "again over this one."
        )
    return source


def _gone_base(base_model: str, recorded: str) -> ModelSource:
    """The converted copy of a GGUF base file that is gone, when the cache holds one whose recorded fingerprint is the
    one the run recorded (the weights it trained over, as `run_base` requires), with a note; else ModelError saying
    what is missing (and of a copy that cannot be told to hold those weights, why)."""
    file = Path(base_model)
    copies = converted_copies(file) if file.suffix.lower() == ".gguf" else []
    same = [folder for folder, mark in copies if recorded and mark == recorded]
    if same:
        print(
            f"model '{base_model}': the GGUF file is gone; using its converted copy {same[0]}, which holds the weights "
            f"the run trained over (fingerprint {recorded}). `tunelab cache clear` would remove it for good.",
            file=sys.stderr,
            flush=True,
        )
        return ModelSource(base_model, str(same[0]))
    why = ""
    if copies:
        folder, mark = copies[0]
        why = (
            f" The conversion cache holds a copy of it, {folder}, but "
            + (
                "the run recorded no fingerprint of its base"
                if not recorded
                else "made before tunelab recorded the fingerprint of the file converted"
                if not mark
                else f"of another file at that path (fingerprint {mark}, the run recorded {recorded})"
            )
            + ", so it cannot be told to hold the weights the run trained over."
        )
    raise ModelError(
        f"model '{base_model}': the base model the run trained over is not there any more (moved or deleted); "
        f"the run holds only what training changed.{why} Put the base back at that path (or link it there)."
    )
