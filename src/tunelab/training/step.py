"""One optimizer step: forward, loss, backward over the micro-batches, clip, guard, step, schedule, zero-grad.

The loss is normalised once per optimizer step: the task's summed losses of all micro-batches are divided by the
number of units in all of them (loss tokens for sft, rows for classify, pairs for reward; `task.count`), so a
micro-batch with more answer tokens weighs more, as it should. The task's metric sums are divided the same way (one
that brings its own count, kto's rewards by label, by that count: `tasks.task.metric_means`). With
several ranks (training/distributed.py) the count is summed over every rank's micro-batches before the division and
the gradients are summed across ranks, so the step is the one of a single process with all the micro-batches.
The guard (training/guard.py) skips the update when the loss or the gradient norm is NaN/inf: the gradients are
dropped and the optimizer never sees them, whatever the optimizer (fused AdamW, AdamW8bit). In fp16 the loss is
multiplied by a dynamic scale before backward and the gradients divided by it before clipping
(training/loss_scale.py); a finite loss whose scaled gradients overflowed is the scale's to fix, not the guard's:
the update is skipped as an `overflow` and the scale halved.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tunelab.tasks.sft import SFT, loss_tokens, summed_loss  # noqa: F401  (loss_tokens, summed_loss: re-exported)
from tunelab.tasks.sft import mean_loss as evaluate  # noqa: F401  (re-exported: the sft eval loss of eval/, federated/)
from tunelab.tasks.task import Task, metric_means
from tunelab.training.distributed import ONE_PROCESS, Ranks, gradient_sync, replicated, weight
from tunelab.training.graphs import CapturedLoss
from tunelab.training.guard import advance_schedule, update_is_finite
from tunelab.training.loss_scale import LossScale


def train_step(
    model: nn.Module,
    micro_batches: list[dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    max_grad_norm: float,
    task: Task = SFT,
    ranks: Ranks = ONE_PROCESS,
    captured: CapturedLoss | None = None,
    loss_scale: LossScale | None = None,
) -> dict:
    """Returns loss (mean over the step's units), grad_norm (before clipping), count (the units: loss tokens, rows,
    pairs), loss_tokens (the same number, under the name sft callers read), metrics (the task's metric means) and
    skipped: whether the guard dropped the update because the loss or the gradient norm was not finite; with
    `loss_scale` (fp16), overflow: whether the scaled gradients overflowed, so the update was skipped and the scale
    halved (not a skip of the guard's). With several ranks, `micro_batches` are this rank's (training/distributed.py)
    and the figures are the whole step's."""
    # every rank's units; a blank batch (a rank with one micro-batch fewer runs a copy) counts none
    total = int(ranks.sum(sum(task.count(b) for b in micro_batches if weight(b))))
    scale = loss_scale.scale if loss_scale is not None else 1.0  # a power of two: loss * scale is exact
    loss_sum, metric_sums = 0.0, {}
    for i, batch in enumerate(micro_batches):
        if captured is not None:  # one process, every batch weighs 1 (training/graphs.py)
            loss, metrics = captured(model, batch, scale / max(total, 1))
        else:
            with gradient_sync(model, sync=i == len(micro_batches) - 1):  # ranks exchange (sum) gradients once
                loss, metrics = task.loss(model, batch)
                loss = loss * weight(batch)
                (loss * scale / max(total, 1)).backward()
        loss_sum += loss.item()
        for name, value in metrics.items():
            metric_sums[name] = metric_sums.get(name, 0.0) + float(value) * weight(batch)
    loss_sum = ranks.sum(loss_sum)
    metric_sums = {name: ranks.sum(value) for name, value in sorted(metric_sums.items())}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if loss_scale is not None:
        loss_scale.unscale_(params)  # clipping reads the true gradients
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else float("inf"))
    norm = float(replicated(norm))
    applied = ranks.all(update_is_finite(loss_sum, norm))  # all ranks apply or skip together
    # a finite loss whose scaled gradients overflowed is the scale's to fix; at a scale of 1 nothing is left to undo
    finite_loss = math.isfinite(loss_sum)  # summed over the ranks, as the norm is: every rank decides alike
    overflow = loss_scale is not None and finite_loss and not applied and scale > 1
    if loss_scale is not None and finite_loss:
        loss_scale.update(overflow=not applied)
    if applied:
        optimizer.step()
        scheduler.step()
    else:
        advance_schedule(scheduler)  # the schedule follows the step count, as a resumed run does
    optimizer.zero_grad(set_to_none=True)
    metrics = metric_means(metric_sums, max(total, 1))  # a metric with its own count is divided by that
    return {
        "loss": loss_sum / max(total, 1),
        "grad_norm": norm,
        "count": total,
        "loss_tokens": total,
        "metrics": metrics,
        "skipped": not applied and not overflow,
        "overflow": overflow,
    }
