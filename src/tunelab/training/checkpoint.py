"""Checkpoints: trainable weights, optimizer state, RNG states and the loop position, written atomically.

Everything is safetensors or JSON (nothing is pickled). A checkpoint is written to a temporary folder and renamed
into place, so a crash mid-write leaves the previous checkpoint intact, and `latest` never names a partial one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from tunelab.atomic import temporary_sibling
from tunelab.errors import RunDirError

STEP_PREFIX = "step-"


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = optimizer.state_dict()
    tensors = {}
    for index, per_param in sd["state"].items():
        for key, value in per_param.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"state.{index}.{key}"] = t.detach().contiguous().cpu()
    return tensors, sd["param_groups"]


def _rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    return tensors


def save_checkpoint(
    run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, position: dict, keep: int
) -> Path:
    folder = Path(run_dir) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{STEP_PREFIX}{position['step']:07d}"
    scratch = folder / f".tmp-{final.name}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    trainable = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    save_file(trainable, str(scratch / "trainable.safetensors"))
    tensors, groups = _optimizer_tensors(optimizer)
    save_file(tensors | _rng_tensors(), str(scratch / "optimizer.safetensors"))
    (scratch / "state.json").write_text(json.dumps({"position": position, "param_groups": groups}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(scratch, final)
    for old in sorted(folder.glob(f"{STEP_PREFIX}*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((Path(run_dir) / "checkpoints").glob(f"{STEP_PREFIX}*"))
    return found[-1] if found else None


def load_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore weights, optimizer and RNG states in place; return the saved loop position."""
    meta = json.loads((folder / "state.json").read_text())
    trainable = load_file(str(folder / "trainable.safetensors"))
    params = dict(model.named_parameters())
    mismatch = sorted(set(trainable) ^ {n for n, p in params.items() if p.requires_grad})
    if mismatch:
        raise RunDirError(
            f"{folder}: checkpoint does not match the model being trained (e.g. {mismatch[0]}); was the config changed?"
        )
    with torch.no_grad():
        for name, value in trainable.items():
            params[name].copy_(value)
    tensors = load_file(str(folder / "optimizer.safetensors"))
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.cpu"])
    cuda_states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    return meta["position"]


def save_trainable(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """The trainable tensors alone, in one safetensors file written atomically; `metadata` rides in its header."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    trainable = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    scratch = temporary_sibling(path)
    save_file(trainable, str(scratch), metadata=metadata)
    os.replace(scratch, path)
    return path


def read_trainable_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def load_trainable(model: nn.Module, path: Path) -> None:
    """Copy the tensors of a `save_trainable` file into the model's trainable parameters, in place."""
    trainable = load_file(str(path))
    params = dict(model.named_parameters())
    mismatch = sorted(set(trainable) ^ {n for n, p in params.items() if p.requires_grad})
    if mismatch:
        raise RunDirError(f"{path}: the saved weights do not match the model being trained (e.g. {mismatch[0]}).")
    with torch.no_grad():
        for name, value in trainable.items():
            params[name].copy_(value)
