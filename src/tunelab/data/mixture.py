"""Weighted mixtures: the training epoch drawn from several sources in proportion to their weights.

Every mapping entry of data.train is a source (`config.DataSource`); its rows (an example, or a block of text) lie
side by side in `Datasets.train`, one span per source. A list of plain paths is one source, read as before.

Shares. With weights w_i and temperature T, source i's share of an epoch is p_i = w_i^(1/T) / sum_j w_j^(1/T).
A source without a weight weighs 1 when another has one; when none has one, each weighs its size (rows, or tokens
with data.mix_by: tokens), so T = 1 is the plain concatenation and T > 1 the temperature sampling of multilingual
training (p_i ~ n_i^(1/T)), which lifts small sources towards an equal share.

What the weights count (data.mix_by): `examples`: an epoch has N = sum_i n_i rows (the size of the concatenation)
and source i gives k_i = p_i N of them (largest remainders, so the k_i sum to N); `tokens`: source i gives as many
rows as carry p_i of the sum of all sources' tokens, k_i = p_i T_all / (mean tokens per row of source i). Every
source gives at least one row.

The draw. From source i: floor(k_i / n_i) full passes over its rows, then the first k_i mod n_i rows of a
permutation seeded by (seed, epoch, i): a source weighed up repeats, one weighed down shows another subset each
epoch. `make_batches` then shuffles the drawn rows together, seeded by (seed, epoch). The epoch is a pure function of
(seed, epoch), so a resumed run draws what the uninterrupted one drew. With data.packing the drawn rows are packed
per epoch.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from tunelab.data.packing import Packed, pack
from tunelab.data.render import Rendered


@dataclass
class SourceSpan:
    """One source's rows in `Datasets.train`: rows [start, start + rows)."""

    name: str
    start: int
    rows: int
    tokens: int
    weight: float | None


@dataclass
class Mixture:
    spans: list[SourceSpan]
    shares: list[float]  # p_i, summing to 1
    drawn: list[int]  # k_i: rows of source i in every epoch
    pack_length: int | None = None  # data.packing: the drawn rows are packed into rows of this many tokens
    # The last draw, (rows, seed, epoch, result): the checks before training, the planner and the step count all ask
    # for epoch 0, and packing 100,000 drawn rows takes seconds.
    _last: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def draw(self, rows: list[Rendered], seed: int, epoch: int) -> list[Rendered | Packed]:
        """The rows of epoch `epoch`, source by source (make_batches shuffles them)."""
        last = self._last
        if last is not None and last[0] is rows and last[1:3] == (seed, epoch):
            return list(last[3])
        drawn = self._draw(rows, seed, epoch)
        self._last = (rows, seed, epoch, drawn)
        return list(drawn)

    def _draw(self, rows: list[Rendered], seed: int, epoch: int) -> list[Rendered | Packed]:
        picked: list[Rendered] = []
        for i, (span, k) in enumerate(zip(self.spans, self.drawn)):
            passes, rest = divmod(k, span.rows)
            order = list(range(span.rows))
            random.Random(f"tunelab-mixture:{seed}:{epoch}:{i}").shuffle(order)  # str seed: stable across runs
            chosen = list(range(span.rows)) * passes + sorted(order[:rest])
            picked += [rows[span.start + j] for j in chosen]
        return pack(picked, self.pack_length) if self.pack_length else picked


def shares(spans: list[SourceSpan], mix_by: str, temperature: float) -> list[float]:
    """p_i (module docstring)."""
    if any(s.weight is not None for s in spans):
        weights = [s.weight if s.weight is not None else 1.0 for s in spans]
    else:
        weights = [float(s.tokens if mix_by == "tokens" else s.rows) for s in spans]
    # w^(1/T) overflows (or underflows to 0 for all) at a low temperature: work with logs, the largest taken out
    logs = [math.log(w) / temperature for w in weights]
    top = max(logs)
    scaled = [math.exp(x - top) for x in logs]
    total = sum(scaled)
    return [w / total for w in scaled]


def _largest_remainders(parts: list[float], total: int) -> list[int]:
    counts = [math.floor(p) for p in parts]
    by_remainder = sorted(range(len(parts)), key=lambda i: (-(parts[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def plan_mixture(spans: list[SourceSpan], mix_by: str, temperature: float, pack_length: int | None) -> Mixture:
    p = shares(spans, mix_by, temperature)
    if mix_by == "tokens":
        budget = sum(s.tokens for s in spans)
        drawn = [round(pi * budget / (s.tokens / s.rows)) for pi, s in zip(p, spans)]
    else:
        drawn = _largest_remainders([pi * sum(s.rows for s in spans) for pi in p], sum(s.rows for s in spans))
    return Mixture(spans, p, [max(1, k) for k in drawn], pack_length)
