"""Packing: rows fit, documents keep their tokens and positions, and no label is predicted across a boundary."""

import random

import pytest

from tunelab.data.batches import make_batches
from tunelab.data.packing import pack
from tunelab.data.render import Rendered


def rows(lengths, labelled=True):
    out, token = [], 10
    for i, n in enumerate(lengths):
        ids = list(range(token, token + n))
        token += n
        out.append(Rendered(ids, list(ids) if labelled else [-100] * (n - 1) + [ids[-1]], "d.jsonl", i + 1))
    return out


def test_pack_invariants():
    rng = random.Random(0)
    source = rows([rng.randint(1, 64) for _ in range(200)])
    packed = pack(source, 64)
    assert all(len(p.input_ids) <= 64 for p in packed)
    assert sum(len(p.input_ids) for p in packed) == sum(len(r.input_ids) for r in source)
    assert len(packed) <= 1.15 * sum(len(r.input_ids) for r in source) / 64 + 1  # best fit wastes little
    by_first_token = {r.input_ids[0]: r for r in source}
    seen = 0
    for p in packed:
        assert sum(p.doc_lengths) == len(p.input_ids) == len(p.labels) == len(p.position_ids)
        start = 0
        for n in p.doc_lengths:
            doc = by_first_token[p.input_ids[start]]
            assert p.input_ids[start : start + n] == doc.input_ids
            assert p.position_ids[start : start + n] == list(range(n))  # restart at 0 per document
            assert p.labels[start] == -100  # the shift would predict it from the previous document
            assert p.labels[start + 1 : start + n] == doc.labels[1:]
            start += n
            seen += 1
    assert seen == len(source)


def test_pack_is_deterministic_and_rejects_too_long_rows():
    source = rows([5, 9, 3, 7, 7, 2])
    assert pack(source, 10) == pack(source, 10)
    with pytest.raises(ValueError, match="d.jsonl:1"):
        pack(rows([11]), 10)


def test_batches_of_packed_rows_carry_doc_lengths():
    packed = pack(rows([3, 4, 5, 6]), 8)
    (batch,) = make_batches(packed, micro_batch=len(packed), pad_id=0, shuffle=False, seed=0, epoch=0)
    T = max(len(p.input_ids) for p in packed)
    assert batch["input_ids"].shape == (len(packed), T)
    assert batch["doc_lengths"] == [p.doc_lengths for p in packed]
    for b, p in enumerate(packed):
        n = len(p.input_ids)
        assert batch["position_ids"][b, :n].tolist() == p.position_ids
        assert batch["attention_mask"][b].sum().item() == n
        assert (batch["labels"][b, n:] == -100).all()


def test_packed_rows_carry_the_location_of_each_document():
    source = rows([5, 7, 3, 6])
    packed = pack(source, 12)
    for p in packed:
        assert len(p.sources) == len(p.doc_lengths)
        for where, n in zip(p.sources, p.doc_lengths):
            line = int(where.rsplit(":", 1)[1])
            assert where.startswith("d.jsonl:") and len(source[line - 1].input_ids) == n
    batch = make_batches(packed, len(packed), 0, shuffle=False, seed=0, epoch=0)[0]
    assert batch["sources"] == [p.sources for p in packed]
    assert sorted(s for row in batch["sources"] for s in row) == [f"d.jsonl:{i}" for i in range(1, 5)]
