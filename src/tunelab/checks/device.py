"""What `tunelab train` says about the GPU and the trackers before its first step, said by `tunelab check` from the
same functions: the memory budget against this GPU (`training.plan.device_budget`: a train.gpu_memory above the GPU's
memory is refused, exit 2, as plan and train refuse it), the memory other processes hold of it
(`training.plan.free_memory_note`), and where each tracker of train.report_to reports (`training.tracking.destination`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tunelab.config import RunConfig
from tunelab.data.checks import CheckItem
from tunelab.errors import counted
from tunelab.models.load import load_hf_config, pick_device
from tunelab.training.build import pick_impl
from tunelab.training.memory import gib
from tunelab.training.plan import DEFAULT_BUDGET_FRACTION, device_budget, free_memory_note
from tunelab.training.tracking import destination


def gpu_item(cfg: RunConfig, inputs, planned: bool) -> CheckItem | None:
    """The budget train would plan with on this machine's GPU (ConfigError where train refuses it), a warning when
    other processes hold part of it and train plans memory (`planned`: `training.plan.plans_memory`; with every
    memory option given, train reads no free memory and says nothing of it); None where train has no budget (the
    CPU, the generic path) and none is set."""
    name = "gpu memory"
    on_cuda = cfg.model.device != "cpu" and torch.cuda.is_available()
    if not on_cuda:
        if cfg.train.gpu_memory is None:
            return None
        return CheckItem(
            name,
            "info",
            f"train.gpu_memory {cfg.train.gpu_memory}: no GPU here; train checks it against the GPU it runs on",
        )
    if pick_impl(cfg.model.impl, load_hf_config(inputs.source, cfg.model.trust_remote_code)) != "fast":
        return None  # train plans no memory on the generic path, and reads no budget
    device = pick_device(cfg.model.device)
    budget = device_budget(cfg.train, device)
    props = torch.cuda.get_device_properties(device)
    given = (
        f"train.gpu_memory {cfg.train.gpu_memory}"
        if cfg.train.gpu_memory is not None
        else f"{DEFAULT_BUDGET_FRACTION:.2f} of it, train.gpu_memory unset"
    )
    summary = f"budget {gib(budget)} of this GPU's {gib(props.total_memory)} ({props.name}; {given})"
    note = free_memory_note(budget, device) if planned else None
    return CheckItem(name, "warn", summary, [note]) if note else CheckItem(name, "pass", summary)


def tracker_item(cfg: RunConfig) -> CheckItem | None:
    """Where each tracker of train.report_to reports, as train says at its start."""
    if not cfg.train.report_to:
        return None
    run_dir = Path(cfg.output_dir)
    lines = [f"report_to {name}: {destination(name, run_dir)}" for name in cfg.train.report_to]
    return CheckItem(
        "trackers",
        "info",
        f"{counted(len(lines), 'tracker')} {'reports' if len(lines) == 1 else 'report'} the run's metrics",
        lines,
    )


def start_items(cfg: RunConfig, inputs, planned: bool) -> list[CheckItem]:
    return [item for item in (gpu_item(cfg, inputs, planned), tracker_item(cfg)) if item is not None]
