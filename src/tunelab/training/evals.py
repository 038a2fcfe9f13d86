"""The eval metrics a run records: its own eval split (`eval_loss` and the task's `eval_<metric>`s), and the eval
loss on named sets beside it:
each source of a mixture (`eval_loss/<source>`) and, in a staged run, every earlier stage's eval data
(`eval_loss/stage-<j>`, the forgetting matrix's row of this stage; training/forgetting.py).

Each named set is evaluated on its own (its mean token loss), so a source's loss does not depend on how its rows were
batched with other sources'; a mixture's own `eval_loss` is still the loss over all its eval rows, as without one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from tunelab.data.loader import Datasets
from tunelab.tasks.sft import SFT
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


def eval_line(task: Task, metrics: dict[str, float], class_weighted: bool = False) -> str:
    """The end-of-training eval line: the loss (with its perplexity for sft's token loss; named class-weighted for a
    classify run with class or label weights, as `tunelab eval` names it) and the task's metrics; a run whose eval
    loss is its held-out reward negated (grpo) shows the reward alone."""
    loss = metrics["eval_loss"]
    name = "eval loss (class-weighted)" if class_weighted else "eval loss"
    line = f"{name} {loss:.4f}" + (f" (perplexity {math.exp(min(loss, 50)):.2f})" if task is SFT else "")
    others = [f"{name.removeprefix('eval_')} {value:.4f}" for name, value in metrics.items() if "eval_loss" not in name]
    if "eval_reward" in metrics:
        line = f"held-out reward {metrics['eval_reward']:.4f}"
        others = [o for o in others if not o.startswith("reward ")]
    return ", ".join([line, *others])
