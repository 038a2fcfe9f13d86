"""Pack several rendered examples into rows of at most max_length tokens, with no attention or loss across them.

Rows are filled by best-fit decreasing (longest example first, into the fullest row it still fits), which wastes a
few percent at most on typical length mixes. Each packed document keeps its own position ids (restarting at 0) and
its length is listed in `doc_lengths`, from which the model builds `cu_seqlens` for variable-length attention. The
first token of every document gets label -100: with labels aligned to inputs, that label would be predicted from
the previous document's last token.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from tunelab.data.render import IGNORE, Rendered
from tunelab.data.report import location


@dataclass
class Packed:
    input_ids: list[int]
    labels: list[int]  # IGNORE at the first token of each document
    position_ids: list[int]  # 0, 1, ... restarting at each document
    doc_lengths: list[int]  # sums to len(input_ids)
    sources: list[str] = field(default_factory=list)  # file:line of each document, in order


def pack(rows: list[Rendered], max_length: int) -> list[Packed]:
    """Deterministic: the same rows give the same packing. Rows are ordered by their first example's index."""
    too_long = [r for r in rows if len(r.input_ids) > max_length]
    if too_long:
        r = too_long[0]
        raise ValueError(
            f"{location(r.path, r.line)}: a row of {len(r.input_ids)} tokens cannot be packed into rows of {max_length}"
        )
    rows = [r for r in rows if r.input_ids]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].input_ids))  # stable: ties keep input order
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free tokens, bin index), sorted; best fit = the smallest free that fits
    for i in order:
        n = len(rows[i].input_ids)
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, b = free.pop(k)
        else:
            room, b = max_length, len(bins)
            bins.append([])
        bins[b].append(i)
        bisect.insort(free, (room - n, b))
    packed = []
    for members in sorted((sorted(b) for b in bins), key=lambda b: b[0]):
        ids, labels, positions, lengths, sources = [], [], [], [], []
        for i in members:
            row = rows[i]
            ids += row.input_ids
            labels += [IGNORE] + row.labels[1:]
            positions += range(len(row.input_ids))
            lengths.append(len(row.input_ids))
            sources.append(location(row.path, row.line))
        packed.append(Packed(ids, labels, positions, lengths, sources))
    return packed
