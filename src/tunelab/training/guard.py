"""The non-finite guard: a NaN or inf never reaches the weights, the optimizer state, or a file the run writes.

`train_step` asks `update_is_finite` before `optimizer.step()`: when the step's loss or gradient norm is NaN/inf, the
update is skipped (gradients dropped, optimizer untouched; the learning-rate schedule still advances, so a resumed
run stays exact). `BadSteps` counts skipped steps; `train.max_bad_steps` of them in a row stop the run with
`TrainingStopped` (exit code 3) and one paragraph naming the steps, the rows of the first bad batch, the likely causes
and the last good checkpoint. Because every applied update was finite, every checkpoint is good; `require_finite`
checks again before anything is written, so no adapter, weight or checkpoint file ever holds a non-finite value.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from tunelab.errors import TrainingStopped

SHOWN_ROWS = 8  # rows named in the stop message; the rest are counted


def update_is_finite(loss: float, grad_norm: float) -> bool:
    """May this step's update be applied? Only when both its loss and its gradient norm are finite numbers."""
    return math.isfinite(loss) and math.isfinite(grad_norm)


def advance_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """scheduler.step() for a skipped update. torch warns when a scheduler steps before any optimizer step (as after
    a skipped first step); here that order is meant, so the warning is silenced for this call only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
        scheduler.step()


@dataclass
class BadStep:
    step: int
    loss: float
    grad_norm: float
    rows: list[str]  # file:line of every example in the step's micro-batches


@dataclass
class BadSteps:
    """Skipped steps: the run's total, and the current run of consecutive ones."""

    limit: int
    skipped: int = 0
    streak: list[BadStep] = field(default_factory=list)

    def record(self, step: int, stats: dict, rows: list[str]) -> bool:
        """Note the outcome of `step`; True when the limit of consecutive bad steps is reached."""
        if not stats["skipped"]:
            self.streak.clear()
            return False
        self.skipped += 1
        self.streak.append(BadStep(step, stats["loss"], stats["grad_norm"], rows))
        return len(self.streak) >= self.limit

    def saved(self) -> list[dict]:
        """The current streak as a checkpoint's position keeps it (`bad_streak`), so that a resumed run goes on
        counting it and stops at the step an uninterrupted run stops at."""
        return [
            {"step": s.step, "loss": repr(s.loss), "grad_norm": repr(s.grad_norm), "rows": s.rows} for s in self.streak
        ]

    @classmethod
    def resumed(cls, limit: int, position: dict) -> BadSteps:
        """The count and the streak a run's position holds (a checkpoint written before streaks were kept: none)."""
        streak = [
            BadStep(int(s["step"]), float(s["loss"]), float(s["grad_norm"]), [str(r) for r in s["rows"]])
            for s in position.get("bad_streak", [])
        ]
        return cls(limit, position["skipped_steps"], streak)


def _listed(rows: list[str]) -> str:
    shown = ", ".join(rows[:SHOWN_ROWS])
    return shown + (f" and {len(rows) - SHOWN_ROWS} more" if len(rows) > SHOWN_ROWS else "")


def stop_message(streak: list[BadStep], total_steps: int, lr: float, checkpoint: str | None) -> str:
    """The paragraph printed when the run stops: what happened, where, why it may have, and what is left."""
    first, last = streak[0], streak[-1]
    steps = f"step {first.step}" if first is last else f"steps {first.step}-{last.step}"
    values = f"loss {last.loss:g}, gradient norm {last.grad_norm:g}"
    same_rows = all(sorted(s.rows) == sorted(first.rows) for s in streak)
    rows = f"The rows of step {first.step}, the first bad one: {_listed(first.rows)}."
    if len(streak) > 1 and not same_rows:
        rows += " Each bad step had other rows, so one row alone is an unlikely cause."
    kept = f"The last good checkpoint is {checkpoint}." if checkpoint else "No checkpoint was written before it."
    return (
        f"training stopped at step {last.step} of {total_steps}: the loss or the gradient norm was not finite "
        f"(NaN or inf) in {len(streak)} optimizer steps in a row ({steps}; at the last, {values}), the limit "
        f"train.max_bad_steps. Those updates were skipped, so no weight or optimizer state holds NaN. {rows} "
        f"Likely causes: a learning rate too high for this model (train.lr is {lr:g}; try 10x lower); untrained "
        "embedding rows for tokens the data uses (keep model.fix_untrained_tokens true; `tunelab check` lists them); "
        "fp16 overflow (use model.dtype bf16 or fp32); or rows with unusual content (try the rows above alone). "
        f"{kept}"
    )


def first_non_finite(tensors: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or inf, or None when all are finite."""
    for name, tensor in tensors:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def require_finite(tensors: Iterable[tuple[str, torch.Tensor]], what: str, where: str) -> None:
    """TrainingStopped (nothing written) when one of `tensors` holds a NaN or inf."""
    bad = first_non_finite(tensors)
    if bad is not None:
        raise TrainingStopped(
            f"{where}: {what} hold NaN or inf values (first: {bad}), so nothing was written. The training went "
            "numerically wrong; lower train.lr, or see `tunelab check` for untrained tokens."
        )
