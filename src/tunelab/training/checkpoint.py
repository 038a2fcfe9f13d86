"""Checkpoints: trainable weights, optimizer state, RNG states and the loop position, written atomically and verified.

Everything is safetensors or JSON (nothing is pickled). A checkpoint is written to a temporary folder and renamed
into place, so a crash mid-write leaves the previous checkpoint intact, and `latest` never names a partial one.
state.json records the size and sha256 of each tensor file; `intact_checkpoint` checks them and falls back to the
previous checkpoint (the reason `keep_checkpoints` keeps more than one) when the newest was damaged afterwards.
No tensor holding a NaN or inf is ever written (guard.require_finite), and a full disk leaves the earlier
checkpoints as they were and says how much space was needed. `save_trainable` writes the trainable tensors alone
into one file, atomically, with metadata in its header (train.keep_best's weights, training/best.py).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from tunelab.atomic import new_file_mode, ordinary_permissions, temporary_sibling
from tunelab.config.flags import CLI, Spelling
from tunelab.errors import RunDirError
from tunelab.training.guard import require_finite
from tunelab.training.run_files import CHECKPOINT_ENTRIES, written

STEP_PREFIX = "step-"
STATE_FILE = "state.json"
TENSOR_FILES = ("trainable.safetensors", "optimizer.safetensors")
SCRATCH = re.compile(r"\.tmp-step-[0-9]{7}")  # a checkpoint being written (save_checkpoint, sharded_checkpoint.save)
SCRATCH_FILES = re.compile(r"(trainable|optimizer)\.safetensors|state\.json|shards|rng-[0-9]+\.safetensors")


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = optimizer.state_dict()
    tensors = {}
    for index, per_param in sd["state"].items():
        for key, value in per_param.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"state.{index}.{key}"] = t.detach().contiguous().cpu()
    return tensors, sd["param_groups"]


def rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    return tensors


def file_digest(path: Path) -> dict:
    with path.open("rb") as f:
        return {"bytes": path.stat().st_size, "sha256": hashlib.file_digest(f, "sha256").hexdigest()}


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**28 else f"{n / 2**20:.1f} MB"


def no_space_message(what: str, where: Path, needed: int) -> str:
    free = shutil.disk_usage(where if where.exists() else where.parent).free
    return (
        f"no space left on the device while writing {what} in {where}: it needs about {_gb(needed)} and "
        f"{_gb(free)} are free."
    )


def save_checkpoint(
    run_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    position: dict,
    keep: int,
    spelling: Spelling = CLI,
) -> Path:
    folder = Path(run_dir) / "checkpoints"
    final = folder / f"{STEP_PREFIX}{position['step']:07d}"
    trainable = _trainable(model)
    tensors, groups = _optimizer_tensors(optimizer)
    where = f"checkpoint of step {position['step']}"
    require_finite(trainable.items(), "the trainable weights", where)
    require_finite(tensors.items(), "the optimizer state", where)
    scratch = folder / f".tmp-{final.name}"
    for note in remove_cut_short(run_dir):
        print(note, flush=True)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        save_file(trainable, str(scratch / TENSOR_FILES[0]))
        save_file(tensors | rng_tensors(), str(scratch / TENSOR_FILES[1]))
        files = {name: file_digest(scratch / name) for name in TENSOR_FILES}
        state = {"position": position, "param_groups": groups, "files": files}
        (scratch / STATE_FILE).write_text(json.dumps(state, indent=2))
        ordinary_permissions(scratch)  # safetensors writes 0600 files: a kept checkpoint is read by others too
        shutil.rmtree(final, ignore_errors=True)
        os.replace(scratch, final)
    except OSError as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        needed = sum(t.nbytes for t in trainable.values()) + sum(t.nbytes for t in tensors.values())
        raise checkpoint_failed(run_dir, final, exc, needed, spelling) from None
    prune_checkpoints(run_dir, final, keep)
    return final


def checkpoint_failed(run_dir: Path, final: Path, exc: OSError, needed: int, spelling: Spelling = CLI) -> RunDirError:
    """The error for a checkpoint (`final`, of about `needed` bytes) the system refused to write, its scratch folder
    already removed: a full disk says how much space was needed and which earlier checkpoints --resume can use
    (named as `spelling` names it: the flag, or train's argument)."""
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return RunDirError(f"{final}: cannot write the checkpoint ({exc.strerror or exc}).")
    step = int(final.name.removeprefix(STEP_PREFIX))
    earlier = [p.name for p in checkpoints(run_dir)]
    then = (
        f"The earlier checkpoints are intact ({', '.join(earlier)}); free some space, then continue with "
        f"{spelling.rerun}."
        if earlier
        else "No checkpoint was written before it, so nothing can be resumed: free some space and train the run again."
    )
    return RunDirError(f"{no_space_message(f'checkpoint of step {step}', final.parent, needed)} {then}")


def remove_cut_short(run_dir: Path) -> list[str]:
    """Remove what a save stopped mid-write (the process killed) left in checkpoints/: the .tmp-step-N folders holding
    nothing but what a checkpoint holds, which no later save of another step would replace. A note for each, and
    for any folder of that name holding other files, which is left alone."""
    notes = []
    for path in sorted((Path(run_dir) / "checkpoints").glob(".tmp-step-*")):
        if not (SCRATCH.fullmatch(path.name) and path.is_dir() and not path.is_symlink()):
            continue
        if not all(SCRATCH_FILES.fullmatch(p.name) for p in path.iterdir()):
            notes.append(f"left {path} alone: it holds files a checkpoint does not (remove it yourself if not needed)")
            continue
        shutil.rmtree(path, ignore_errors=True)
        notes.append(f"removed {path}: a checkpoint whose save was cut short (the process stopped while writing it)")
    return notes


def prune_checkpoints(run_dir: Path, written: Path, keep: int) -> None:
    """After `written` is in place: keep it and the keep-1 checkpoints before it. Those after it were passed over
    as damaged by the resume that led here (it starts from the newest intact one), so they go too: kept, they
    would be counted among the newest `keep` and push out the one just written."""
    found = checkpoints(run_dir)
    newer = [p for p in found if p.name > written.name]
    older = [p for p in found if p.name <= written.name]
    for old in newer + older[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def checkpoints(run_dir: Path) -> list[Path]:
    """Completed checkpoint folders, oldest first."""
    return sorted(p for p in (Path(run_dir) / "checkpoints").glob(f"{STEP_PREFIX}*") if p.is_dir())


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def verify_checkpoint(folder: Path) -> str | None:
    """What is wrong with a checkpoint folder, or None when it is intact (sizes and sha256 as state.json records)."""
    try:
        state = json.loads((folder / STATE_FILE).read_text())
        position = state["position"]
        int(position["step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{STATE_FILE} is missing or damaged ({type(exc).__name__}: {exc})"
    if problem := _state_problem(state, folder):
        return f"{STATE_FILE} is damaged ({problem})"
    sharded = state.get("format") == "sharded"  # several ranks' checkpoint (training/sharded_checkpoint.py)
    for name in state["files"] if sharded else TENSOR_FILES:
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        recorded = state.get("files", {}).get(name)
        if recorded is None:  # written before checksums were recorded: the safetensors header is all we can check
            try:
                with open(path, "rb") as f:
                    header = int.from_bytes(f.read(8), "little")
                if header <= 0 or 8 + header > path.stat().st_size:
                    return f"{name} is cut short"
            except OSError as exc:
                return f"{name} cannot be read ({exc})"
            continue
        if path.stat().st_size != recorded["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, {recorded['bytes']} were written"
        if file_digest(path)["sha256"] != recorded["sha256"]:
            return f"{name} does not match its sha256 in {STATE_FILE}"
    return None


def _state_problem(state: dict, folder: Path) -> str | None:
    """What in state.json is not as tunelab writes it: the step a positive whole number equal to the folder's (an
    edited step resumed at the wrong place), the other counters whole numbers >= 0, the optimizer's parameter
    groups a non-empty list of mappings, the file records mappings of bytes and sha256; in fp16, the loss scale a
    positive number."""
    position = state["position"]
    if not isinstance(position, dict):
        return "its position is not a mapping"
    step = position.get("step")
    if type(step) is not int or step < 1 or folder.name != f"{STEP_PREFIX}{step:07d}":
        return f"its step {step!r} is not the folder's"
    for name in ("epoch", "batch_in_epoch"):
        if name in position and (type(position[name]) is not int or position[name] < 0):
            return f"its {name} {position[name]!r} is not a whole number >= 0"
    if "overflow_steps" in position and (type(position["overflow_steps"]) is not int or position["overflow_steps"] < 0):
        return f"its overflow_steps {position['overflow_steps']!r} is not a whole number >= 0"
    scale = position.get("loss_scale", {"scale": 1.0, "good_steps": 0})  # fp16 runs' (training/loss_scale.py)
    if not (
        isinstance(scale, dict)
        and type(scale.get("scale")) is float
        and 0 < scale["scale"] < float("inf")
        and type(scale.get("good_steps")) is int
        and scale["good_steps"] >= 0
    ):
        return f"its loss_scale {scale!r} is not a positive scale with a whole number of good steps"
    streak = position.get("bad_streak", [])
    if not isinstance(streak, list) or not all(
        isinstance(s, dict) and {"step", "loss", "grad_norm"} <= s.keys() and isinstance(s.get("rows"), list)
        for s in streak
    ):
        return "its bad_streak is not a list of skipped steps"
    early = position.get("early_stop", {"best_loss": None, "waited": []})  # train.early_stopping_patience's count
    if not (
        isinstance(early, dict)
        and (early.get("best_loss") is None or type(early.get("best_loss")) in (int, float))
        and isinstance(early.get("waited"), list)
        and all(type(s) is int and s >= 0 for s in early["waited"])
    ):
        return "its early_stop is not a best eval loss with the steps evaluated since"
    groups = state.get("param_groups", [])
    if not isinstance(groups, list) or (state.get("format") != "sharded" and not groups):
        return "its param_groups are not a list of the optimizer's groups"
    if not all(isinstance(g, dict) for g in groups):
        return "its param_groups are not a list of the optimizer's groups"
    files = state.get("files", {})
    if not isinstance(files, dict) or not all(
        isinstance(r, dict) and type(r.get("bytes")) is int and isinstance(r.get("sha256"), str) for r in files.values()
    ):
        return "its files are not recorded with their bytes and sha256"
    return None


def intact_checkpoint(run_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that verifies, and a note for each newer one that did not."""
    notes = []
    for folder in reversed(checkpoints(run_dir)):
        problem = verify_checkpoint(folder)
        if problem is None:
            return folder, notes
        notes.append(f"checkpoint {folder} is damaged ({problem}); skipping it")
    return None, notes


def load_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore weights, optimizer and RNG states in place; return the saved loop position."""
    meta = json.loads((folder / STATE_FILE).read_text())
    try:
        trainable = load_file(str(folder / TENSOR_FILES[0]))
        tensors = load_file(str(folder / TENSOR_FILES[1]))
    except (SafetensorError, OSError) as exc:
        raise RunDirError(
            f"{folder}: the checkpoint cannot be read ({exc}); delete it to resume from an earlier one."
        ) from None
    _copy_trainable(model, trainable, f"{folder}: checkpoint", "; was the config changed?")
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError, TypeError) as exc:  # another number of parameter groups, an edited state.json
        raise RunDirError(
            f"{folder}: the checkpoint's optimizer state does not fit this run ({exc}); delete it to resume from an "
            "earlier one."
        ) from None
    restore_rng(tensors)
    return meta["position"]


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    """Set the RNG states `rng_tensors` saved: the CPU's, and each CUDA device's in device order (rng.cuda.10 after
    rng.cuda.9, not after rng.cuda.1)."""
    torch.set_rng_state(tensors["rng.cpu"])
    cuda = sorted((int(k.removeprefix("rng.cuda.")), v) for k, v in tensors.items() if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state for _, state in cuda][: torch.cuda.device_count()])


def delete_checkpoints(run_dir: Path) -> tuple[int, list[str]]:
    """Remove the step checkpoints of a finished run (with keep_best's file and what a write cut short left), then
    the checkpoints folder; returns how many checkpoints there were, and what is left in the folder: the entries
    tunelab did not write there (`run_files.CHECKPOINT_ENTRIES`), which stay, and the folder with them."""
    found = checkpoints(run_dir)
    folder = Path(run_dir) / "checkpoints"
    left = []
    for entry in sorted(folder.iterdir()) if folder.is_dir() and not folder.is_symlink() else ():
        if not written(entry.name, CHECKPOINT_ENTRIES):
            left.append(entry.name + "/" * (entry.is_dir() and not entry.is_symlink()))
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    if not left:
        shutil.rmtree(folder, ignore_errors=True)
    return len(found), left


def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def _copy_trainable(model: nn.Module, tensors: dict[str, torch.Tensor], what: str, hint: str = "") -> None:
    """Copy saved trainable tensors into the model in place; RunDirError when the names differ from its trainable
    parameters."""
    params = dict(model.named_parameters())
    mismatch = sorted(set(tensors) ^ {n for n, p in params.items() if p.requires_grad})
    if mismatch:
        raise RunDirError(f"{what} does not match the model being trained (e.g. {mismatch[0]}){hint}")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)


def save_trainable(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """The trainable tensors alone, in one safetensors file written atomically; `metadata` rides in its header."""
    path = Path(path)
    trainable = _trainable(model)
    require_finite(trainable.items(), "the trainable weights", str(path))
    scratch = temporary_sibling(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(trainable, str(scratch), metadata=metadata)
        os.chmod(scratch, new_file_mode(path.parent))  # not safetensors' 0600
        os.replace(scratch, path)
    except OSError as exc:
        scratch.unlink(missing_ok=True)
        why = (
            no_space_message(path.name, path.parent, sum(t.nbytes for t in trainable.values()))
            if exc.errno in (errno.ENOSPC, errno.EDQUOT)
            else f"cannot write it ({exc.strerror or exc})."
        )
        raise RunDirError(f"{path}: {why}") from None
    return path


def read_trainable_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def load_trainable(model: nn.Module, path: Path) -> None:
    """Copy the tensors of a `save_trainable` file into the model's trainable parameters, in place."""
    try:
        trainable = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise RunDirError(f"{path}: the saved weights cannot be read ({exc}).") from None
    _copy_trainable(model, trainable, f"{path}: the saved weights", ".")
