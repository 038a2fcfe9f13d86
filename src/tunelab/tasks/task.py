"""The task seam: what a training objective supplies to the one loop (`training/loop.py`, set up by
`training/recipe.py`) and step (`training/step.py`).

A task is a data schema, a collate function, a loss with its metrics, and what gets saved. Each task module
(`tasks/sft.py`, `tasks/classify.py`, ...) builds one frozen `Task` of plain functions; there is no base class and no
hook a task could override. The loop calls them in this order:

    data    = task.build_data(cfg, tokenizer, seed)          # rows, DataReport, template, facts (labels, ...)
    built   = build_model(...)                                # the method (LoRA, full, layers) is applied here
    task.prepare(built, data, cfg)                            # e.g. swap the LM head for a classification head
    batches = task.make_batches(data.train, micro_batch, pad_id, shuffle=..., seed=..., epoch=...)
    per optimizer step: train_step(model, micro_batches, ..., task)
        total = sum(task.count(b) for b in micro_batches)    # the units the loss is normalised by
        loss_sum, metric_sums = task.loss(model, batch)       # SUMS over the batch's units; divided once by total
    every eval: task.evaluate(model, eval_batches) -> {"eval_loss": ..., "eval_<metric>": ...}
    at the end: task.save(folder, built, tokenizer, cfg, data)     # into a staging folder, moved in once complete

Contracts every task keeps:
- `make_batches` orders rows by a pure function of (seed, epoch) (see `data.batches.epoch_order`; `epoch_chunks` cuts
  that order into batches of whole rows), so a resumed run takes the batches the uninterrupted one took; every batch
  has an `attention_mask` (B, T) of its real tokens.
- `loss` returns the SUM over the batch's units (loss tokens for sft, rows for classify, pairs for reward) as a 0-dim
  fp32 tensor, and metric sums over the same units (tensors or floats); the step divides both by the step's total
  `count` once (STYLE.md habit 9), so micro-batches of any size weigh as one big batch would. A metric summed over
  part of the units only gives its own count beside it, `<name>:count` (kto's rewards by label: that label's rows),
  and is divided by that count's sum instead (`metric_means`).
- `evaluate` returns means over the eval batches' units, keys prefixed `eval_`, always with `eval_loss`.
- Every trainable parameter is a parameter of `built.model` after `prepare`, so checkpoints (which save trainable
  parameters by name) and the optimizer see all of them.
- `rollout` (online tasks only, None otherwise) turns the step's batches of prompts into its training micro-batches
  before the step (grpo samples answers, scores them and attaches what its loss reads); one named line in the loop.
- Rows of every task carry `input_ids` (every token id the row feeds the model) and `labels` (its targets as ints):
  the untrained-token scan and the resume digest (`training/resume.data_digest`) read these two. Batches carry
  `sources`, per row the file:line of its examples, which the non-finite guard names when it stops a run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunelab.data.formats import trained_system
from tunelab.data.templates import resolve_template, trained_chat_template

Batch = dict[str, Any]  # tensors (B, ...) and plain per-row lists (e.g. packed doc_lengths)


OWN_COUNT = ":count"  # the key suffix of a metric's own count (`metric_means`)


def metric_means(sums: dict[str, float], total: float) -> dict[str, float]:
    """Each metric sum divided by the step's (or eval split's) units, or by its own count where `sums` holds one
    (`<name>:count`); the counts themselves are left out, and so is a metric whose own count is 0 (a step without a
    row of that label has no mean to show)."""
    means = {}
    for name, value in sums.items():
        if name.endswith(OWN_COUNT):
            continue
        count = sums.get(name + OWN_COUNT, total)
        if count:
            means[name] = value / count
    return means


@dataclass(frozen=True)
class Task:
    name: str
    build_data: Callable[..., Any]
    """(cfg: RunConfig, tokenizer, seed) -> Datasets: rows, report, template and facts of the task."""
    make_batches: Callable[..., list[Batch]]
    """(rows, micro_batch, pad_id, *, shuffle, seed, epoch) -> one epoch of batches."""
    count: Callable[[Batch], int]
    """The units of a batch the loss is normalised by."""
    loss: Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, dict[str, Any]]]
    """(model, batch) -> (loss sum, metric sums), both summed over the batch's units."""
    prepare: Callable[..., None]
    """(built: BuiltModel, data, cfg) -> None: adapt the built model to the task, in place (may do nothing)."""
    save: Callable[..., None]
    """(folder, built, tokenizer, cfg, data) -> None: write the run's result into `folder` (an empty staging folder;
    `training/result.save_final` checks the weights are finite first and moves the files into the run directory once
    complete)."""
    evaluate: Callable[[torch.nn.Module, list[Batch]], dict[str, float]]
    """(model, batches) -> {"eval_loss": mean, "eval_<metric>": mean, ...}."""
    rollout: Callable[..., list[Batch]] | None = None
    """(model, prompt_batches, step, micro_batch) -> the step's micro-batches, for online tasks that generate their
    training data (the step number seeds the sampling, so a resumed run draws what an uninterrupted one drew); None
    otherwise."""
    learning_rates: Callable[..., dict[str, float]] | None = None
    """(cfg) -> {parameter-name prefix: learning rate} for parameters that do not take train.lr (a head's
    classify.head_lr); None when every trainable parameter takes train.lr."""
    checks: Callable[..., list] | None = None
    """(cfg, inputs) -> [CheckItem]: the cheap data checks `tunelab train` runs before loading the model (sft: those
    of `tunelab check`); None when the task has none beyond what build_data refuses."""
    eval_at_start: bool = False
    """With an eval split, evaluate once before the first step too (logged as step 0), so that the verdict can tell
    a run whose held-out figure ended below the model's own before training (grpo: its train reward can rise while
    the held-out reward falls)."""


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode (no dropout, no training-only noise) for the block, then back in the mode it was in,
    also when the block raises: how every task evaluates and computes its fixed log-probs."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def save_tokenizer(tokenizer, folder: Path, cfg, data=None) -> None:
    """The tokenizer into a run's `folder` with the chat template training wrote (the template of `data`, the task's
    Datasets, else data.template resolved for this tokenizer as training resolves it; with the run's
    data.system_prompt where a conversation brings no system message: `trained_chat_template`), so that
    `apply_chat_template` on the run's tokenizer (transformers + PEFT, vLLM) prompts the model as it learned, not
    with the base model's default system prompt. The tokenizer in memory keeps its own template."""
    template = data.template if data is not None else resolve_template(cfg.data.template, tokenizer)
    own = tokenizer.chat_template
    tokenizer.chat_template = trained_chat_template(template, tokenizer, trained_system(cfg.data.system_prompt))
    try:
        tokenizer.save_pretrained(folder)
    finally:
        tokenizer.chat_template = own
