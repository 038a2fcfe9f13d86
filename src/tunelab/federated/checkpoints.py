"""A federation's round checkpoints, written and verified as `tunelab train`'s step checkpoints are
(training/checkpoint.py).

    checkpoints/round-NNNNNNN/adapter_model.safetensors   the global adapter after round N
    checkpoints/round-NNNNNNN/round.json                  {"round": N, "files": {name: {"bytes", "sha256"}},
                                                           "state": federated.json as it stood after round N}

A round is written in a temporary folder and renamed into place, never with a NaN or inf, and the last two are kept.
`--resume` verifies the round federated.json names (size and sha256); where it was damaged since, the federation
falls back to the round before it, with the state round.json kept of that round (its history, its DP accountant),
and trains the rounds after it again, as train falls back to its previous checkpoint. A round written before
round.json existed is checked by its safetensors header alone, and is no fallback (no state of its own).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tunelab.atomic import ordinary_permissions
from tunelab.config.flags import CLI, Spelling
from tunelab.errors import RunDirError, counted
from tunelab.training.checkpoint import file_digest, no_space_message
from tunelab.training.guard import require_finite

ADAPTER_FILE, ROUND_FILE = "adapter_model.safetensors", "round.json"


def round_folder(run_dir: str | Path, round_: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"round-{round_:07d}"


def save_round(
    run_dir: str | Path,
    round_: int,
    adapter: dict[str, torch.Tensor],
    state: dict,
    keep: int = 2,
    spelling: Spelling = CLI,
) -> Path:
    """The global adapter after `round_` and the federation's `state` then, written to a temporary folder and renamed
    into place; the `keep` newest rounds stay. A full disk leaves the earlier rounds as they were and says so, naming
    how to resume as the caller does (`spelling`)."""
    final = round_folder(run_dir, round_)
    where = f"the checkpoint of round {round_}"
    require_finite(adapter.items(), "the global adapter", where)
    scratch = final.with_name(f".tmp-{final.name}")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        save_file(adapter, str(scratch / ADAPTER_FILE), metadata={"format": "pt"})
        record = {"round": round_, "files": {ADAPTER_FILE: file_digest(scratch / ADAPTER_FILE)}, "state": state}
        (scratch / ROUND_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
        ordinary_permissions(scratch)  # safetensors writes 0600 files: the kept rounds are read by others too
        shutil.rmtree(final, ignore_errors=True)
        os.replace(scratch, final)
    except OSError as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise RunDirError(f"{final}: cannot write the round's checkpoint ({exc.strerror or exc}).") from None
        needed = sum(t.nbytes for t in adapter.values())
        resume = "tunelab federate --resume" if spelling.flags else "tunelab.federate(..., resume=True)"
        raise RunDirError(
            f"{no_space_message(where, final.parent, needed)} The earlier rounds' checkpoints are intact; free some "
            f"space, then continue with {resume}."
        ) from None
    for old in sorted(final.parent.glob("round-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _record(folder: Path) -> dict | None:
    try:
        record = json.loads((folder / ROUND_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def verify_round(folder: Path, round_: int) -> str | None:
    """What is wrong with a round's checkpoint folder, or None when it is intact."""
    path = folder / ADAPTER_FILE
    if not path.is_file():
        return f"{ADAPTER_FILE} is missing"
    if not (folder / ROUND_FILE).exists():  # written before round.json: the safetensors header is all we can check
        try:
            with path.open("rb") as f:
                header = int.from_bytes(f.read(8), "little")
        except OSError as exc:
            return f"{ADAPTER_FILE} cannot be read ({exc})"
        return f"{ADAPTER_FILE} is cut short" if header <= 0 or 8 + header > path.stat().st_size else None
    record = _record(folder) or {}
    files = record.get("files")
    recorded = files.get(ADAPTER_FILE) if isinstance(files, dict) else None
    if record.get("round") != round_ or not isinstance(recorded, dict):
        return f"{ROUND_FILE} is missing or damaged"
    if path.stat().st_size != recorded.get("bytes"):
        return f"{ADAPTER_FILE} has {path.stat().st_size} bytes, {recorded.get('bytes')} were written"
    if file_digest(path)["sha256"] != recorded.get("sha256"):
        return f"{ADAPTER_FILE} does not match its sha256 in {ROUND_FILE}"
    return None


def resume_round(run_dir: str | Path, state: dict, spelling: Spelling = CLI) -> tuple[dict, list[str]]:
    """The federation state --resume continues from, and notes: federated.json's own when the round it names is
    intact; else that of the newest earlier round whose checkpoint is intact and kept its state, its later rounds to
    be trained again. RunDirError when no round can be resumed from."""
    run_dir = Path(run_dir)
    done = int(state["rounds_done"])
    folder = round_folder(run_dir, done)
    problem = verify_round(folder, done)
    if problem is None:
        return state, []
    notes = [f"resume: the checkpoint of round {done} ({folder}) is damaged ({problem}); skipping it"]
    earlier = sorted((p for p in folder.parent.glob("round-*") if p.name < folder.name), reverse=True)
    for candidate in earlier:
        round_ = int(candidate.name.removeprefix("round-"))
        record = _record(candidate)
        if verify_round(candidate, round_) is not None or record is None or not isinstance(record.get("state"), dict):
            continue
        snapshot = record["state"]
        again = f"round {done} is" if done == round_ + 1 else f"rounds {round_ + 1}-{done} are"
        notes.append(f"resume: continuing from round {round_}, the last intact one: {again} trained again")
        best = state.get("best")
        if best and best.get("round", 0) > round_:  # the result saved in the run is that later round's adapter
            snapshot.pop("best", None)
            notes.append(
                f"resume: train.keep_best had kept round {best['round']}, which is trained again: it chooses among "
                f"the rounds from {round_ + 1} on"
            )
        return snapshot, notes
    gone = " is missing" if not folder.exists() else f" is damaged ({problem})"
    others = (
        f"none of the {counted(len(earlier), 'earlier round')} kept is intact with its state"
        if earlier
        else "no earlier round's checkpoint is kept"
    )
    raise RunDirError(
        f"{run_dir}: federated.json says round {done} is done, but its checkpoint {folder}{gone}, and {others}: "
        f"nothing to resume from. Federate it again from the start (drop {spelling.resume}, give {spelling.overwrite})."
    )


def load_round(run_dir: str | Path, round_: int) -> dict[str, torch.Tensor]:
    return load_file(str(round_folder(run_dir, round_) / ADAPTER_FILE))
