"""Checkpoints of a run on several ranks: torch.distributed.checkpoint (DCP), in safetensors, resharded on load.

`save` and `load` are what the loop calls on any rank count. One process (no process group) writes and reads the
single-file checkpoints of training/checkpoint.py, unchanged. Several ranks write a sharded checkpoint:

    checkpoints/step-0000012/
        shards/shard-0000R-model-00001-of-00001.safetensors   each rank's part: its FSDP2 shards, and (DCP
                                                               deduplicates) one copy of every replicated tensor
        rng-R.safetensors                                      rank R's RNG states
        state.json                                             position, optimizer param_groups, world_size,
                                                               "format": "sharded", size + sha256 of every file

Tensors are keyed by fully qualified name (`model.<param>`, `optim.<param>.<exp_avg|exp_avg_sq|step>`), as
`torch.distributed.checkpoint.state_dict` names them, so they do not depend on the wrapper or the rank count. DCP's
HuggingFace storage writes safetensors with each shard's offsets in its header; its reader assembles whatever
slices the loading ranks ask for. That is how a checkpoint of N ranks resumes on M (one process included: DCP loads
without a process group), and no file is a pickle (DCP's default `.metadata` file would be one).

A sharded run resuming a single-file checkpoint (1 rank -> N) reads the full tensors on every rank and lets
`set_model_state_dict`/`set_optimizer_state_dict` (full_state_dict) keep each rank's part. RNG states are restored
when the rank count is the same; otherwise each rank keeps its own seeded stream (dropout draws then differ from an
uninterrupted run; without dropout the run is the same).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint import CheckpointException, HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from tunelab.atomic import ordinary_permissions
from tunelab.config.flags import CLI, Spelling
from tunelab.errors import RunDirError, TrainingStopped
from tunelab.training.checkpoint import (
    STATE_FILE,
    STEP_PREFIX,
    TENSOR_FILES,
    checkpoint_failed,
    file_digest,
    load_checkpoint,
    load_trainable,
    prune_checkpoints,
    remove_cut_short,
    restore_rng,
    rng_tensors,
    save_checkpoint,
)
from tunelab.training.distributed import Ranks, local, unwrap
from tunelab.training.guard import first_non_finite

FORMAT = "sharded"
SHARDS = "shards"
TRAINABLE = StateDictOptions(ignore_frozen_params=True)  # a LoRA run saves its adapters, not the base


def save(
    run_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    position: dict,
    keep: int,
    ranks: Ranks,
    spelling: Spelling = CLI,
):
    """A checkpoint of the step in `position`, on every rank together; the folder written. A write the system refuses
    on any rank (a full disk) stops every rank with the same RunDirError, as the single-file save does, and leaves no
    part of the checkpoint: the scratch folder is removed, the earlier checkpoints are as they were. `spelling`: how
    that error names --resume."""
    if ranks.world == 1:
        return save_checkpoint(run_dir, unwrap(model), optimizer, position, keep, spelling)
    folder = Path(run_dir) / "checkpoints"
    final = folder / f"{STEP_PREFIX}{position['step']:07d}"
    scratch = folder / f".tmp-{final.name}"
    tensors, groups = _state(model, optimizer)
    bad = first_non_finite((k, local(v)) for k, v in tensors.items())
    if ranks.any(bad is not None):  # every rank stops, or none: the others would wait in the save
        raise TrainingStopped(
            f"checkpoint of step {position['step']}: the weights or optimizer state hold NaN or inf values (first "
            f"on rank {ranks.rank}: {bad}), so nothing was written; lower train.lr."
        )
    needed = sum(v.numel() * v.element_size() for v in tensors.values())  # a DTensor's numel is the whole tensor's

    def agree(failed: OSError | None) -> None:  # on every rank at once: a collective
        _stop_if_any(ranks, failed, run_dir, final, scratch, needed, spelling)

    agree(_attempt(lambda: _fresh(scratch)) if ranks.main else None)
    try:
        dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(str(scratch / SHARDS), save_distributed=True))
    except CheckpointException as exc:  # raised on every rank, with every rank's failure
        failed = next((e for e, _ in exc.failures.values() if isinstance(e, OSError)), None)
        if failed is None:
            raise
        if ranks.main:
            shutil.rmtree(scratch, ignore_errors=True)
        raise checkpoint_failed(run_dir, final, failed, needed, spelling) from None
    agree(_attempt(lambda: save_file(rng_tensors(), str(scratch / f"rng-{ranks.rank}.safetensors"))))
    agree(_attempt(lambda: _publish(scratch, final, position, ranks.world, groups)) if ranks.main else None)
    if ranks.main:
        prune_checkpoints(run_dir, final, keep)
    ranks.barrier()
    return final


def _fresh(scratch: Path) -> None:
    for note in remove_cut_short(scratch.parent.parent):
        print(note, flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)


def _publish(scratch: Path, final: Path, position: dict, world: int, groups: list[dict]) -> None:
    """state.json, written last (a folder without it is no checkpoint), then the folder renamed into place."""
    files = {str(p.relative_to(scratch)): file_digest(p) for p in sorted(scratch.rglob("*")) if p.is_file()}
    state = {"position": position, "format": FORMAT, "world_size": world, "param_groups": groups}
    (scratch / STATE_FILE).write_text(json.dumps(state | {"files": files}, indent=2))
    ordinary_permissions(scratch)  # safetensors writes the RNG files 0600: a kept checkpoint is read by others too
    shutil.rmtree(final, ignore_errors=True)
    os.replace(scratch, final)


def _attempt(write) -> OSError | None:
    """Run `write`; the OSError it raised, if any (for every rank to learn of it before any stops)."""
    try:
        write()
    except OSError as exc:
        return exc
    return None


def _stop_if_any(
    ranks: Ranks, failed: OSError | None, run_dir: Path, final: Path, scratch: Path, needed: int, spelling: Spelling
) -> None:
    """Every rank together: when a write failed on any, rank 0 removes the scratch folder and every rank raises the
    error of the first rank that failed."""
    if not ranks.any(failed is not None):
        return
    reasons = ranks.gather(None if failed is None else [failed.errno, failed.strerror or str(failed)])
    errno_, why = next(r for r in reasons if r is not None)
    if ranks.main:
        shutil.rmtree(scratch, ignore_errors=True)
    raise checkpoint_failed(run_dir, final, OSError(errno_, why), needed, spelling) from None


def load(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ranks: Ranks) -> dict:
    """Restore weights, optimizer state and (same rank count) RNG states from either kind of checkpoint; returns
    the saved loop position."""
    meta = json.loads((folder / STATE_FILE).read_text())
    if meta.get("format") != FORMAT:
        if ranks.world == 1:
            return load_checkpoint(folder, unwrap(model), optimizer)
        return _load_single_file(folder, meta, model, optimizer)
    tensors, _ = _state(model, optimizer)  # the targets: this rank's shards (DTensor) or whole tensors
    expected = set(tensors)
    reader = HuggingFaceStorageReader(str(folder / SHARDS))
    saved = set(reader.read_metadata().state_dict_metadata)
    if saved != expected:
        differ = sorted(saved ^ expected)
        raise RunDirError(
            f"{folder}: checkpoint does not match the model being trained (e.g. {differ[0]}); was the config changed?"
        )
    with warnings.catch_warnings():  # one process loading is meant here; DCP warns about it every time
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        dcp.load(tensors, storage_reader=reader, no_dist=ranks.world == 1)  # in place, each rank its slices
    _apply(model, optimizer, tensors, meta["param_groups"], StateDictOptions(ignore_frozen_params=True, strict=False))
    rng = folder / f"rng-{ranks.rank}.safetensors"
    if meta["world_size"] == ranks.world and rng.is_file():
        restore_rng(load_file(str(rng)))
    return meta["position"]


def load_weights(folder: Path, model: nn.Module) -> None:
    """The trainable weights of a checkpoint of either kind into `model`, in one process and without its optimizer
    state: what predict and eval score an unfinished run with. DCP's reader assembles a sharded checkpoint's slices
    into whole tensors, as a resume on one rank does; a single-file checkpoint is read as it was written."""
    meta = json.loads((folder / STATE_FILE).read_text())
    if meta.get("format") != FORMAT:
        load_trainable(model, folder / TENSOR_FILES[0])
        return
    tensors = {f"model.{name}": p.data for name, p in model.named_parameters() if p.requires_grad}
    reader = HuggingFaceStorageReader(str(folder / SHARDS))
    saved = {key for key in reader.read_metadata().state_dict_metadata if key.startswith("model.")}
    if saved != set(tensors):
        differ = sorted(saved ^ set(tensors))
        raise RunDirError(
            f"{folder}: checkpoint does not match the model the run's config builds (e.g. {differ[0]}); was the "
            "run's config.yaml changed?"
        )
    with warnings.catch_warnings():  # one process loading is meant here; DCP warns about it every time
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        dcp.load(tensors, storage_reader=reader, no_dist=True)  # in place, into the parameters


def full_weights(model: nn.Module, ranks: Ranks, trainable_only: bool = False) -> dict[str, torch.Tensor] | None:
    """All weights gathered on rank 0's CPU (None on the others) where FSDP2 shards them; None on one rank or
    under DDP, where rank 0's model holds them whole. `trainable_only`: the trainable ones alone (a QLoRA run's
    adapters: its NF4 base is never gathered). Every rank must call it."""
    if ranks.world == 1 or unwrap(model) is not model:
        return None
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
    state = get_model_state_dict(model, options=options)
    if trainable_only:  # the frozen parameters are left out above; buffers (NF4 offsets) are dropped here
        names = {name for name, p in model.named_parameters() if p.requires_grad}
        state = {k: v for k, v in state.items() if k in names}
    return state if ranks.main else None


def _state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """The trainable weights and optimizer state as one flat {name: tensor}, and the optimizer's param_groups
    (JSON: learning rates, betas, the parameters' names)."""
    weights = _trainable(model)
    optim = get_optimizer_state_dict(model, optimizer, options=TRAINABLE)
    tensors = {f"model.{name}": value for name, value in weights.items()}
    for name, per_param in optim["state"].items():
        for key, value in per_param.items():
            tensors[f"optim.{name}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, optim["param_groups"]


def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable weights by name, each once: tied weights (a head sharing the embedding) are one parameter
    under two names, kept under the first, as `named_parameters` and the single-file checkpoints name them."""
    names = {name for name, p in unwrap(model).named_parameters() if p.requires_grad}
    return {k: v for k, v in get_model_state_dict(model, options=TRAINABLE).items() if k in names}


def _apply(model, optimizer, tensors: dict[str, torch.Tensor], groups: list[dict], options) -> None:
    """Load flat `tensors` (as `_state` names them) and `groups` into the model and the optimizer."""
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    state: dict[str, dict] = {}
    names = {name for group in groups for name in group["params"]}
    for key, value in tensors.items():
        if key.startswith("optim."):
            name, field = _split_optim_key(key.removeprefix("optim."), names)
            state.setdefault(name, {})[field] = value
    set_model_state_dict(model, weights, options=options)
    current = [set(group) for group in optimizer.param_groups]  # the hyperparameters this optimizer has now
    known = [{k: v for k, v in group.items() if k in keys} for group, keys in zip(groups, current, strict=True)]
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": known}, options=options)
    for group, saved in zip(optimizer.param_groups, groups, strict=True):  # and those a scheduler added (initial_lr)
        group.update({k: v for k, v in saved.items() if k != "params"})


def _split_optim_key(key: str, names: set[str]) -> tuple[str, str]:
    """'layers.0.w.exp_avg' -> ('layers.0.w', 'exp_avg'): the longest parameter name that prefixes the key."""
    name, _, field = key.rpartition(".")
    while name not in names and "." in name:
        head, _, last = name.rpartition(".")
        name, field = head, f"{last}.{field}"
    return name, field


def _load_single_file(folder: Path, meta: dict, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """A one-process checkpoint into a sharded run: full tensors on every rank, each keeps its part. Optimizer
    state is keyed by index there (torch's optimizer.state_dict): index i is the i-th parameter over the
    param_groups, the same order in this run, whose names `get_optimizer_state_dict` gives."""
    trainable = load_file(str(folder / TENSOR_FILES[0]))
    saved = load_file(str(folder / TENSOR_FILES[1]))
    current = get_optimizer_state_dict(model, optimizer, options=TRAINABLE)
    order = [name for group in current["param_groups"] for name in group["params"]]
    expected = set(_trainable(model))
    if set(trainable) != expected or len(order) != sum(len(g["params"]) for g in meta["param_groups"]):
        differ = sorted(set(trainable) ^ expected) or ["the optimizer's parameters"]
        raise RunDirError(
            f"{folder}: checkpoint does not match the model being trained (e.g. {differ[0]}); was the config changed?"
        )
    tensors = {f"model.{k}": v for k, v in trainable.items()}
    for key, value in saved.items():
        if key.startswith("state."):
            _, index, field = key.split(".", 2)
            tensors[f"optim.{order[int(index)]}.{field}"] = value
    groups, start = [], 0
    for group in meta["param_groups"]:
        count = len(group["params"])
        groups.append(group | {"params": order[start : start + count]})
        start += count
    _apply(
        model,
        optimizer,
        tensors,
        groups,
        StateDictOptions(full_state_dict=True, ignore_frozen_params=True, strict=False),
    )
    return meta["position"]
