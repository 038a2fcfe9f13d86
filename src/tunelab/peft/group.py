"""Grouped LoRA projections: the decoder's q/k/v, and gate/up, adapters run as one GEMM (`kernels.lora.lora_group`).

`LoRAGroup` is peft's implementation of a decoder's projection group slot (`models.slots.ProjectionGroup`). Where the
group qualifies (every projection an enabled LoRA layer without active dropout, over frozen bases of one kind, on
CUDA unless `grouped` says otherwise) it asks the norm for R = sum of the ranks spare columns after its input, and
runs the group as one autograd node; elsewhere it runs the projections one by one, as the default slot does.

The node multiplies by a stacked matrix W_all (O + R, in + R) = [[W_1 | s_1 B_1 | 0 ...], ..., [W_k | ... | s_k B_k],
[A_1; ...; A_k | 0]], built by `GroupWeights` in one buffer per model and kept for the pass: an NF4 weight is
dequantized straight into its rows (it is dequantized into a scratch buffer anyway), a 16-bit one copied. The
(N, out) passes saved outweigh that copy: for q/k/v of a 7B model at 8192 tokens, 3 x 128 MiB of output traffic
against 2 x 96 MiB of weight copy.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from functools import cache, partial

import torch
from torch import nn

from tunelab.kernels.lora import lora_group
from tunelab.models.slots import PassClock, ProjectionGroup, Scratch, projection_slots
from tunelab.peft.fp8_group import fp8_lora_group
from tunelab.peft.lora_linear import LoRALinear
from tunelab.peft.projection import workspace_need
from tunelab.quant import fp8
from tunelab.quant.fp8 import FP8Base
from tunelab.quant.linear import NF4Linear
from tunelab.quant.nf4_ops import DequantWorkspace, dequantize_into


def _write_weight(member: LoRALinear, out: torch.Tensor) -> None:
    """Write the member's frozen weight W (out, in) into `out`, a row-strided view, in out's dtype."""
    base = member.base_layer
    if isinstance(base, NF4Linear):
        dequantize_into(base.nf4(), out)
    else:
        out.copy_(base.weight)


@cache
def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def _write_adapters(w_all: torch.Tensor, width: int, O: int, members: Sequence[LoRALinear]) -> None:
    """Everything of W_all but the frozen weights: on CUDA one Triton kernel (`kernels.lora_stack`), elsewhere (or
    without Triton) the same values by 2k + 1 torch ops."""
    if w_all.is_cuda and _has_triton():
        from tunelab.kernels.lora_stack import MAX_MEMBERS, stack_adapters  # imports Triton: on CUDA only

        if len(members) <= MAX_MEMBERS:
            stack_adapters(w_all, width, [(m.lora_B.weight, m.lora_A.weight, m.scale) for m in members])
            return
    w_all[:, width:].zero_()
    row, col = 0, width
    for m in members:
        torch.mul(m.lora_B.weight, m.scale, out=w_all[row : row + m.out_features, col : col + m.r])
        w_all[O + col - width : O + col - width + m.r, :width].copy_(m.lora_A.weight)
        row, col = row + m.out_features, col + m.r


def _state_versions(member: LoRALinear) -> tuple[int, ...]:
    """Version counters of what the stacked matrix is built from: a change in place within a pass (a load, a merge)
    moves them. (Fused optimizer steps do not, hence the pass clock.)"""
    base = member.base_layer
    frozen = base.weight_packed if isinstance(base, NF4Linear) else base.weight
    return frozen._version, member.lora_A.weight._version, member.lora_B.weight._version


class GroupWeights:
    """The stacked matrix W_all of the last group that ran, kept within one pass of the model (its `PassClock`) until
    another group needs the room. One per model, shared by all its groups.

    Forward reads W_all's first O rows (x_ext W_all[:O]^T) and A_cat = W_all[O:, :in], backward the same. Checkpointing
    runs a gated MLP's group 2 + 2 * chunks times per step (forward, then recomputation and backward per token chunk)
    with no other group in between, so it is built (an NF4 weight dequantized) twice instead of 2 + 2 * chunks times.
    """

    def __init__(self, clock: PassClock) -> None:
        self.clock = clock
        self.buffer = DequantWorkspace()
        self._key: tuple | None = None

    def get(self, members: Sequence[LoRALinear], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        width = members[0].in_features
        R, O = sum(m.r for m in members), sum(m.out_features for m in members)
        w_all = self.buffer.get((O + R, width + R), dtype, device)
        key = (
            self.clock.now,
            tuple(map(id, members)),
            tuple(map(_state_versions, members)),
            w_all.data_ptr(),
            w_all.shape,
            dtype,
        )
        if key == self._key:
            return w_all
        self._key = None  # half-built until the end
        with torch.no_grad():
            row = 0
            for m in members:
                _write_weight(m, w_all[row : row + m.out_features, :width])
                row += m.out_features
            _write_adapters(w_all, width, O, members)
        self._key = key
        return w_all

    def reserve(self, numel: int, dtype: torch.dtype, device: torch.device) -> None:
        """Grow the buffer to `numel` elements now (see `models.slots.reserve_scratch`); what it held is forgotten."""
        self._key = None
        self.buffer.reserve(numel, dtype, device)


def _dropout_active(member: LoRALinear) -> bool:
    return member.training and isinstance(member.dropout, nn.Dropout) and member.dropout.p > 0


class LoRAGroup(ProjectionGroup):
    """A projection group slot that runs its LoRA projections as one GEMM where they qualify (module docstring)."""

    def __init__(
        self, children: Mapping[str, nn.Module], names: tuple[str, ...], clock: PassClock, weights: GroupWeights
    ):
        super().__init__(children, names, clock)
        self.weights = weights
        self.grouped: bool | None = None  # None: as one GEMM on CUDA only (the CPU gains nothing); True/False: forced
        self._fp8_base: tuple[tuple[int, ...], FP8Base] | None = None  # (the bases' ids, their stacked FP8 base)

    def members(self, x: torch.Tensor) -> tuple[LoRALinear, ...] | None:
        """The LoRA layers of the group if they run as one GEMM on an input like x, else None.

        They must all be enabled LoRALinear layers without active dropout, over frozen bases of one kind (all nn.Linear
        or all NF4Linear, all with FP8 products or none) with the same input width and no trainable bias."""
        grouped = self.grouped
        if grouped is False or (grouped is None and not x.is_cuda):
            return None
        members = self.projections()
        # type(), not isinstance(): a DoRA layer (peft/dora.py) scales its rows by m / n and runs one by one.
        if not all(type(m) is LoRALinear and m.enabled and not _dropout_active(m) for m in members):
            return None
        kind = type(members[0].base_layer)
        if kind is not nn.Linear and kind is not NF4Linear:
            return None
        width = members[0].in_features
        if any(type(m.base_layer) is not kind or m.in_features != width for m in members):
            return None
        if any(p.requires_grad for m in members for p in m.base_layer.parameters()):  # a trainable weight or bias
            return None
        if kind is NF4Linear and len({m.base_layer.fp8 is None for m in members}) > 1:  # FP8 products in some only
            return None
        return members

    def _fp8(self, members: tuple[LoRALinear, ...]) -> FP8Base | None:
        """The stacked FP8 base of members over NF4 layers with FP8 products (`use_fp8_`), else None."""
        if type(members[0].base_layer) is not NF4Linear or members[0].base_layer.fp8 is None:
            return None
        bases = tuple(m.base_layer for m in members)
        if self._fp8_base is None or self._fp8_base[0] != tuple(map(id, bases)):
            self._fp8_base = (tuple(map(id, bases)), FP8Base(*(b.nf4 for b in bases)))
        return self._fp8_base[1]

    def spare_columns(self, x: torch.Tensor) -> int:
        members = self.members(x)
        return 0 if members is None or self._fp8(members) is not None else sum(m.r for m in members)

    def __call__(self, x: torch.Tensor, room: int = 0) -> tuple[torch.Tensor, ...]:
        members = self.members(x)
        if members is None:
            return super().__call__(x, room)
        stacked = self._fp8(members)
        if stacked is not None:  # one FP8 GEMM for the stacked bases, the adapters beside it (`peft.fp8_group`)
            biases = [m.base_layer.bias for m in members]
            bias = None
            if any(b is not None for b in biases):
                bias = torch.cat([x.new_zeros(m.out_features) if b is None else b for m, b in zip(members, biases)])
            return fp8_lora_group(
                x,
                stacked,
                [m.out_features for m in members],
                [m.r for m in members],
                [m.scale for m in members],
                bias,
                [t for m in members for t in (m.lora_A.weight, m.lora_B.weight)],
            )
        return lora_group(
            x,
            partial(self.weights.get, members),
            [m.out_features for m in members],
            [m.r for m in members],
            [m.scale for m in members],
            [m.base_layer.bias for m in members],
            [t for m in members for t in (m.lora_A.weight, m.lora_B.weight)],
            room,
        )

    def scratch(self, x: torch.Tensor) -> list[tuple[Scratch, int]]:
        """The stacked matrix when the group runs as one GEMM, the FP8 buffer for its stacked base with FP8 products,
        else the NF4 workspace of each projection."""
        members = self.members(x)
        if members is not None and self._fp8(members) is not None:
            return [(fp8.SCRATCH, self._fp8(members).scratch_need())]
        if members is None:
            return [need for projection in self.projections() for need in workspace_need(projection)]
        width = members[0].in_features
        R, O = sum(m.r for m in members), sum(m.out_features for m in members)
        return [(self.weights, (O + R) * (width + R))]


def set_grouping(model: nn.Module, grouped: bool | None) -> None:
    """Run every LoRA group of `model` as one GEMM (True), one by one (False), or as one GEMM on CUDA only (None, the
    default): for comparisons in tests and benchmarks."""
    for module, name in projection_slots(model):
        slot = getattr(module, name)
        if isinstance(slot, LoRAGroup):
            slot.grouped = grouped
