"""The eval metrics a run records: its own eval split (`eval_loss` and the task's `eval_<metric>`s), and the eval
loss on named sets beside it:
each source of a mixture (`eval_loss/<source>`) and, in a staged run, every earlier stage's eval data
(`eval_loss/stage-<j>`, the forgetting matrix's row of this stage; training/stages.py).

Each named set is evaluated on its own (its mean token loss), so a source's loss does not depend on how its rows were
batched with other sources'; a mixture's own `eval_loss` is still the loss over all its eval rows, as without one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from tunelab.data.loader import Datasets
from tunelab.tasks.task import Task


@dataclass
class EvalSets:
    own: list[dict]  # batches of the run's eval split
    named: dict[str, list[dict]] = field(default_factory=dict)  # name -> batches

    def __bool__(self) -> bool:
        return bool(self.own or self.named)


def _batches(task: Task, rows: list, micro_batch: int, pad_id: int, device: torch.device) -> list[dict]:
    return [
        {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        for batch in task.make_batches(rows, micro_batch, pad_id, shuffle=False, seed=0, epoch=0)
    ]


def eval_sets(
    task: Task, data: Datasets, extra: dict[str, list] | None, micro_batch: int, pad_id: int, device: torch.device
) -> EvalSets:
    """The run's eval batches, its sources' (when it has two or more with eval rows) and `extra` named rows."""
    named = dict(data.eval_sets) if len(data.eval_sets) > 1 else {}
    named |= extra or {}
    return EvalSets(
        _batches(task, data.eval, micro_batch, pad_id, device),
        {name: _batches(task, rows, micro_batch, pad_id, device) for name, rows in named.items() if rows},
    )


def eval_record(task: Task, model: nn.Module, sets: EvalSets) -> dict[str, float]:
    """{"eval_loss": ..., "eval_<metric>": ..., "eval_loss/<name>": ...} for the sets there are."""
    record = task.evaluate(model, sets.own) if sets.own else {}
    for name, batches in sets.named.items():
        record[f"eval_loss/{name}"] = task.evaluate(model, batches)["eval_loss"]
    return record
