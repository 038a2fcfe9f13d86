"""The batches of one epoch: the rows' order as a pure function of (seed, epoch) (`epoch_order`), cut into chunks
for the tasks that collate whole rows (`epoch_chunks`), or padded into the LM tasks' tensors (`make_batches`, with
`group_by_length`)."""

from __future__ import annotations

import random

import torch

from tunelab.data.packing import Packed
from tunelab.data.render import IGNORE, Rendered
from tunelab.data.report import location

# group_by_length sorts rows by length within windows of this many micro-batches of the shuffled order (as
# transformers' LengthGroupedSampler does with 50): the batches stay a random draw, their rows of similar length.
LENGTH_GROUP = 64


def _chunks(order: list[int], rows: list, micro_batch: int, group_by_length: bool, rng: random.Random | None):
    """The epoch's micro-batches as lists of row indices: consecutive slices of `order`, or, grouped by length,
    slices of each window sorted longest first, the micro-batches then shuffled (rng) so lengths do not trend."""
    if not group_by_length:
        return [order[start : start + micro_batch] for start in range(0, len(order), micro_batch)]
    window = LENGTH_GROUP * micro_batch
    chunks = []
    for begin in range(0, len(order), window):
        ranked = sorted(
            order[begin : begin + window], key=lambda i: -len(rows[i].input_ids)
        )  # stable: ties stay shuffled
        chunks += [ranked[start : start + micro_batch] for start in range(0, len(ranked), micro_batch)]
    if rng is not None:
        rng.shuffle(chunks)
    return chunks


def epoch_order(n: int, *, shuffle: bool, seed: int, epoch: int) -> list[int]:
    """The order of n rows in an epoch: 0..n-1, or a shuffle that is a pure function of (seed, epoch)."""
    order = list(range(n))
    if shuffle:
        random.Random(f"tunelab-epoch:{seed}:{epoch}").shuffle(order)  # str seeds hash with sha512: stable across runs
    return order


def epoch_chunks(rows: list, size: int, *, shuffle: bool, seed: int, epoch: int) -> list[list]:
    """The rows of one epoch in `epoch_order`, cut into consecutive chunks of `size` (the last may be shorter): what
    the tasks that batch whole rows (classify, reward, dpo, grpo) collate, one batch per chunk."""
    order = epoch_order(len(rows), shuffle=shuffle, seed=seed, epoch=epoch)
    return [[rows[i] for i in order[start : start + size]] for start in range(0, len(order), size)]


def make_batches(
    rows: list[Rendered | Packed],
    micro_batch: int,
    pad_id: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    group_by_length: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """One epoch of right-padded batches of `micro_batch` rows (the last may be smaller), in an order fixed by
    (seed, epoch); with `group_by_length`, rows of similar length share a batch (`_chunks`). Keys: input_ids, labels
    (-100 on padding), attention_mask, position_ids, all (B, T) int64 with T
    the longest row of the batch; sources, a list per row of the file:line of its examples (for messages about a
    batch); for packed rows also doc_lengths, a list per row of its documents' lengths (padding not included), from
    which the model builds cu_seqlens."""
    order = epoch_order(len(rows), shuffle=shuffle, seed=seed, epoch=epoch)
    rng = random.Random(f"tunelab-lengths:{seed}:{epoch}") if shuffle else None
    batches = []
    for indices in _chunks(order, rows, micro_batch, group_by_length, rng):
        chunk = [rows[i] for i in indices]
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
