"""Spare columns: a tensor (..., d) stored as the first d columns of a (..., d + spare) buffer, marked as such.

A producer (RMSNorm with `spare_columns`) leaves room after each row; a consumer that would otherwise copy its input
into a wider buffer (`peft.group`: x next to its low-rank products) writes into the room instead. The mark is an
attribute of the tensor object; a reshape or any other new view loses it, and a consumer without it makes its copy.
"""

from __future__ import annotations

import torch

_MARK = "_tunelab_spare_columns"


def mark_spare(view: torch.Tensor, spare: int) -> torch.Tensor:
    """Record that each row of `view` is followed by `spare` columns that nothing else reads or writes; returns view."""
    if spare:
        setattr(view, _MARK, spare)
    return view


def spare_columns(t: torch.Tensor) -> int:
    """The spare columns marked after t's rows (0 if none)."""
    return getattr(t, _MARK, 0)


def with_spare_columns(x: torch.Tensor, spare: int) -> torch.Tensor:
    """x (..., d) copied into the first d columns of a new (..., d + spare) buffer, marked; x itself when spare is 0."""
    if spare == 0:
        return x
    # Out of place (cat, then a slice), so that autograd sees no in-place write into a view.
    buf = torch.cat((x, x.new_empty(*x.shape[:-1], spare)), dim=-1)
    return mark_spare(buf[..., : x.shape[-1]], spare)
