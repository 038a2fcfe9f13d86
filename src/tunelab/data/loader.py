"""The data pipeline in one call (`build_datasets`) and the batches of one epoch (`make_batches`).

    files -> records -> examples -> [eval split] -> rendered rows (ids + labels) -> [packed rows]

The eval split is taken over examples, before rendering, by a shuffle seeded with the run's seed, so the same
config and seed always hold out the same examples. The training order is shuffled per epoch in `make_batches`,
seeded by (seed, epoch): resuming at an epoch replays exactly the batches it would have had.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tunelab.config import DataConfig
from tunelab.data.formats import Example, to_examples
from tunelab.data.packing import Packed, pack
from tunelab.data.render import IGNORE, Rendered, render_examples
from tunelab.data.report import DataReport, SplitStats, location
from tunelab.data.sources import Record, read_records
from tunelab.data.templates import Template, resolve_template
from tunelab.errors import ConfigError, DataError


@dataclass
class Datasets:
    train: list[Rendered | Packed]
    eval: list[Rendered | Packed]
    template: Template
    report: DataReport
    examples: list[Example] = field(default_factory=list)  # the training examples before rendering (tunelab check)
    facts: dict[str, Any] = field(default_factory=dict)  # what a task learnt from the data (e.g. its labels)


def split_eval(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Hold out round(fraction * n) examples (at least 1 when fraction > 0), chosen by a shuffle seeded with seed.
    Both parts keep the file order."""
    if fraction <= 0:
        return examples, []
    k = max(1, round(len(examples) * fraction))
    if k >= len(examples):
        raise DataError(
            f"data.eval_fraction={fraction} holds out {k} of {len(examples)} usable examples and leaves none to train on; "
            "add data, lower data.eval_fraction, or give a separate data.eval file."
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:k])
    train = [ex for i, ex in enumerate(examples) if i not in held]
    return train, [ex for i, ex in enumerate(examples) if i in held]


def _nothing_usable(what: str, paths: list[str], report: DataReport) -> DataError:
    reasons = "; ".join(
        f"{s.count} {reason} (e.g. {s.locations[0]})" for reason, s in report.skips.items() if s.locations
    )
    why = f" Skipped: {reasons}." if reasons else ""
    return DataError(
        f"{', '.join(paths)}: no usable {what} examples ({report.total_read} records read).{why} Fix the records, or raise "
        "data.max_length / set data.overlong=truncate if they were too long."
    )


def _stats(rows: list[Rendered | Packed], examples: int, used: int) -> SplitStats:
    return SplitStats(
        examples=examples,
        used=used,
        rows=len(rows),
        tokens=sum(len(r.input_ids) for r in rows),
        loss_tokens=sum(sum(1 for label in r.labels if label != IGNORE) for r in rows),
    )


def build_datasets(
    cfg: DataConfig, tokenizer, seed: int, select: Callable[[list[Record]], list[Record]] | None = None
) -> Datasets:
    """Read, convert, split, render and (optionally) pack the data of `cfg`; every skip is in the returned report.

    `select` keeps a subset of the training records before anything else sees them (a federated client's shard of
    a shared file); the report then describes that subset only."""
    if not cfg.train:
        raise ConfigError(
            "option 'data.train' is empty; give one or more data files or folders (jsonl, json, csv, parquet, txt)."
        )
    report = DataReport(max_length=cfg.max_length, packed=cfg.packing)
    template = resolve_template(cfg.template, tokenizer)
    records = read_records(cfg.train, cfg.delimiter)
    if select is not None:
        records = select(records)
    examples = to_examples(records, cfg.format, cfg.fields, cfg.system_prompt, report)
    if not examples:
        raise _nothing_usable("training", cfg.train, report)
    if cfg.eval:
        eval_examples = to_examples(
            read_records([cfg.eval], cfg.delimiter), cfg.format, cfg.fields, cfg.system_prompt, report
        )
        if not eval_examples:
            raise _nothing_usable("eval", [cfg.eval], report)
        report.eval_source = "file"
    else:
        examples, eval_examples = split_eval(examples, cfg.eval_fraction, seed)
        report.eval_source = "fraction" if eval_examples else "none"
    is_chat = any(ex.messages is not None for ex in examples + eval_examples)
    report.template = template.name if is_chat else "none (text only)"

    used = report.total_used
    train = render_examples(examples, tokenizer, template, cfg, report)
    if not train:
        raise _nothing_usable("training", cfg.train, report)
    used_train, used = report.total_used - used, report.total_used
    evals = render_examples(eval_examples, tokenizer, template, cfg, report)
    used_eval = report.total_used - used
    if cfg.packing:
        train, evals = pack(train, cfg.max_length), pack(evals, cfg.max_length)
    report.train = _stats(train, len(examples), used_train)
    report.eval = _stats(evals, len(eval_examples), used_eval)
    return Datasets(train, evals, template, report, examples)


def epoch_order(n: int, *, shuffle: bool, seed: int, epoch: int) -> list[int]:
    """The order of n rows in an epoch: 0..n-1, or a shuffle that is a pure function of (seed, epoch)."""
    order = list(range(n))
    if shuffle:
        random.Random(f"tunelab-epoch:{seed}:{epoch}").shuffle(order)  # str seeds hash with sha512: stable across runs
    return order


def make_batches(
    rows: list[Rendered | Packed], micro_batch: int, pad_id: int, *, shuffle: bool, seed: int, epoch: int
) -> list[dict[str, torch.Tensor]]:
    """One epoch of right-padded batches of `micro_batch` rows (the last may be smaller), in an order fixed by
    (seed, epoch). Keys: input_ids, labels (-100 on padding), attention_mask, position_ids, all (B, T) int64 with T
    the longest row of the batch; sources, a list per row of the file:line of its examples (for messages about a
    batch); for packed rows also doc_lengths, a list per row of its documents' lengths (padding not included), from
    which the model builds cu_seqlens."""
    order = epoch_order(len(rows), shuffle=shuffle, seed=seed, epoch=epoch)
    batches = []
    for start in range(0, len(order), micro_batch):
        chunk = [rows[i] for i in order[start : start + micro_batch]]
        shape = (len(chunk), max(len(r.input_ids) for r in chunk))
        input_ids = torch.full(shape, pad_id, dtype=torch.long)
        labels = torch.full(shape, IGNORE, dtype=torch.long)
        attention_mask = torch.zeros(shape, dtype=torch.long)
        position_ids = torch.zeros(shape, dtype=torch.long)
        for b, row in enumerate(chunk):
            n = len(row.input_ids)
            input_ids[b, :n] = torch.tensor(row.input_ids)
            labels[b, :n] = torch.tensor(row.labels)
            attention_mask[b, :n] = 1
            position_ids[b, :n] = torch.tensor(row.position_ids) if isinstance(row, Packed) else torch.arange(n)
        batch = {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "sources": [row_sources(row) for row in chunk],
        }
        if any(isinstance(row, Packed) for row in chunk):
            batch["doc_lengths"] = [
                list(row.doc_lengths) if isinstance(row, Packed) else [len(row.input_ids)] for row in chunk
            ]
        batches.append(batch)
    return batches


def row_sources(row: Rendered | Packed) -> list[str]:
    """Where the examples of a row came from, as file:line."""
    return list(row.sources) if isinstance(row, Packed) else [location(row.path, row.line)]
