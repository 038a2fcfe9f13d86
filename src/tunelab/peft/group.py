"""LoRA projections that read one input, run as one GEMM: q/k/v of attention, gate/up of a gated MLP.

Each projection i of a group is y_i = x W_i^T (+ b_i) + s_i (x A_i^T) B_i^T, with W_i frozen (16-bit or NF4). Run
one by one, every adapter update is added into its (N, out_i) output by a second pass over that output, and every
input gradient is a separate (N, in) tensor that autograd then sums. Here the low-rank products travel inside the
base GEMM by widening its inner dimension (R = sum of the ranks, O = sum of the out_i):

  forward:   xa = x [A_1; ...; A_k]^T (N, R), written into R spare columns after x: x_ext = [x | xa] (N, in + R);
             [y_1 | ... | y_k] = x_ext W_ext^T,  W_ext (O, in + R) = rows [W_i | s_i B_i placed under xa_i's columns]
  backward:  [g_1 | ... | g_k] W_ext = [sum_i g_i W_i | gxa] with gxa = [g_1 s_1 B_1 | ... | g_k s_k B_k] (N, R):
             the input gradient's base part and the adapters' gxa come out of one pass over the g_i (one GEMM
             when they are adjacent columns of one buffer, as SwiGLU's in-place backward leaves gate/up; else the
             GEMMs accumulate into one output); then dx += gxa [A_1; ...; A_k], [dA_1; ...; dA_k] = gxa^T x and
             dB_i = s_i g_i^T xa_i.

W_ext (with A stacked under it) is built in one buffer per model (`GroupWeights`) and kept for the pass: an NF4
weight is dequantized straight into its rows (it is dequantized into a scratch buffer anyway), a 16-bit one copied.
The (N, out) passes saved outweigh that copy: for q/k/v of a 7B model at 8192 tokens, 3 x 128 MiB of output
traffic against 2 x 96 MiB of weight copy.

x gets its spare columns from whoever produced it: `RMSNorm(x, spare_columns=R)` writes its output as the first
columns of an (N, in + R) buffer and marks the view (`kernels.spare`); any other x is copied into a new buffer.
Saved for backward: x_ext only (x and xa in one tensor). No dropout (a dropped x would need its own copy): groups
are used only when the adapters' dropout is off.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from tunelab.kernels.spare import spare_columns
from tunelab.quant.linear import NF4Linear
from tunelab.quant.nf4_ops import DequantWorkspace, current_pass, dequantize_into

if TYPE_CHECKING:
    from tunelab.peft.lora import LoRALinear


def _extended(x2: torch.Tensor, room: int, spare: int) -> torch.Tensor:
    """(N, in + spare) whose first columns are x2: x2's own buffer when it has `room` >= spare marked columns after
    each row, else a copy."""
    n, width = x2.shape
    if room >= spare and x2.stride(1) == 1 and x2.stride(0) == width + room:
        return x2.as_strided((n, width + spare), x2.stride())
    out = x2.new_empty(n, width + spare)
    out[:, :width].copy_(x2)
    return out


def group_members(modules: Sequence[nn.Module], x: torch.Tensor, force: bool | None = None) -> list[LoRALinear] | None:
    """The LoRA layers of `modules` if they can run as one group on x, else None.

    They must all be enabled LoRALinear layers without active dropout, over frozen bases of one kind (all nn.Linear
    or all NF4Linear) with the same input width and no trainable bias. `force` None: groups run on CUDA only (the CPU
    gains nothing from them); True/False overrides that, for tests.
    """
    from tunelab.peft.lora import LoRALinear  # lora.py imports this module

    if force is False or (force is None and not x.is_cuda):
        return None
    if not all(isinstance(m, LoRALinear) and m.enabled for m in modules):
        return None
    if any(m.training and isinstance(m.dropout, nn.Dropout) and m.dropout.p > 0 for m in modules):
        return None
    kinds = {type(m.base_layer) for m in modules}
    if kinds != {nn.Linear} and kinds != {NF4Linear}:
        return None
    if len({m.in_features for m in modules}) != 1:
        return None
    if any(p.requires_grad for m in modules for p in m.base_layer.parameters()):  # a trainable weight or bias
        return None
    return list(modules)


def group_rank(modules: Sequence[nn.Module], x: torch.Tensor, force: bool | None = None) -> int:
    """R, the spare columns a group of `modules` wants after x; 0 when they do not run as a group."""
    members = group_members(modules, x, force)
    return 0 if members is None else sum(m.r for m in members)


def _write_weight(member: LoRALinear, out: torch.Tensor) -> None:
    """Write the member's frozen weight W (out, in) into `out`, a row-strided view, in out's dtype."""
    base = member.base_layer
    if isinstance(base, NF4Linear):
        dequantize_into(base.nf4(), out)
    else:
        out.copy_(base.weight)


def _state_versions(member: LoRALinear) -> tuple[int, ...]:
    """Version counters of what the stacked matrix is built from: a change in place within a pass (a load, a merge)
    moves them. (Fused optimizer steps do not, hence `begin_pass`.)"""
    base = member.base_layer
    frozen = base.weight_packed if isinstance(base, NF4Linear) else base.weight
    return frozen._version, member.lora_A.weight._version, member.lora_B.weight._version


class GroupWeights:
    """The stacked matrix of the last group that ran, kept within one pass (`begin_pass`) until another group needs
    the room.

    W_all (O + R, in + R) = [[W_1 | s_1 B_1 | 0 ...], ..., [W_k | ... | s_k B_k], [A_1; ...; A_k | 0]]:
    forward reads its first O rows (x_ext W_all[:O]^T), backward the same rows (g W_all[:O]) and A_cat =
    W_all[O:, :in], which forward reads too. Checkpointing runs a gated MLP's group 2 + 2 * chunks times per step
    (forward, then recomputation and backward per token chunk) with no other group in between, so it is built
    (an NF4 weight dequantized) twice instead of 2 + 2 * chunks times. One per model, shared by all its groups.
    """

    def __init__(self) -> None:
        self._buffer = DequantWorkspace()
        self._key: tuple | None = None

    def get(self, members: Sequence[LoRALinear], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        width = members[0].in_features
        R, O = sum(m.r for m in members), sum(m.out_features for m in members)
        w_all = self._buffer.get((O + R, width + R), dtype, device)
        key = (
            current_pass(),
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
            w_all[:, width:].zero_()
            row, col = 0, width
            for m in members:
                _write_weight(m, w_all[row : row + m.out_features, :width])
                w_all[row : row + m.out_features, col : col + m.r].copy_(m.lora_B.weight * m.scale)
                w_all[O + col - width : O + col - width + m.r, :width].copy_(m.lora_A.weight)
                row, col = row + m.out_features, col + m.r
        self._key = key
        return w_all

    def reserve(self, numel: int, dtype: torch.dtype, device: torch.device) -> None:
        """Grow the buffer to `numel` elements now (see `reserve_scratch`)."""
        self._buffer.reserve(numel, dtype, device)


def reserve_scratch(
    groups: Sequence[tuple[Sequence[nn.Module], bool | None]], singles: Sequence[nn.Module], x: torch.Tensor
) -> None:
    """Size, before a step allocates anything else, the buffers a layer's projections will fill: the stacked weight
    of the largest of `groups` ((modules, force) pairs, as for `group_members`) that runs as a group, and the NF4
    workspace for the largest of `singles` and of the members of groups that do not run as one. Grown mid-step,
    first for the attention and then for the MLP, they leave the smaller buffers as holes in the allocator's
    segments (0.1 GiB of peak reserved memory at 7B, micro-batch 1)."""
    stacked, weights, alone = 0, None, list(singles)
    for modules, force in groups:
        members = group_members(modules, x, force)
        if members is None:
            alone += modules
            continue
        width = members[0].in_features
        R, O = sum(m.r for m in members), sum(m.out_features for m in members)
        stacked, weights = max(stacked, (O + R) * (width + R)), members[0].group_weights
    if weights is not None:
        weights.reserve(stacked, x.dtype, x.device)
    largest: dict[int, tuple[DequantWorkspace, int]] = {}  # id(workspace) -> (workspace, elements)
    for module in alone:
        base = getattr(module, "base_layer", module)
        if isinstance(base, NF4Linear) and base.workspace is not None:
            numel = max(largest.get(id(base.workspace), (None, 0))[1], base.out_features * base.in_features)
            largest[id(base.workspace)] = (base.workspace, numel)
    for workspace, numel in largest.values():
        workspace.reserve(numel, x.dtype, x.device)


class LoRAGroupFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, members, weights, room, *lora):
        # lora = (A_1, B_1, ..., A_k, B_k), the leaves autograd gives gradients to; `weights` reads them itself.
        # Detached: x_ext below is a view of x's buffer that this node writes into and saves; autograd must not
        # track it as a view of x (it would try to rebuild its history on unpacking).
        x2 = x.detach().reshape(-1, x.shape[-1])  # (N, in)
        n, width = x2.shape
        R, O = sum(m.r for m in members), sum(m.out_features for m in members)
        w_all = weights.get(members, x2.dtype, x2.device)  # (O + R, in + R)
        x_ext = _extended(x2, room, R)  # (N, in + R)
        torch.mm(x2, w_all[O:, :width].T, out=x_ext[:, width:])  # xa = x A_cat^T, next to x
        y = x2.new_empty(n, O)
        biases = [m.base_layer.bias for m in members]
        if any(bias is not None for bias in biases):
            dtype = x2.dtype
            bias = torch.cat(
                [x2.new_zeros(m.out_features) if b is None else b.to(dtype) for m, b in zip(members, biases)]
            )
            torch.addmm(bias, x_ext, w_all[:O].T, out=y)
        else:
            torch.mm(x_ext, w_all[:O].T, out=y)
        ctx.save_for_backward(x_ext, *lora)
        ctx.members, ctx.weights, ctx.x_shape = members, weights, x.shape
        ctx.y_ptr, ctx.y_stride = y.data_ptr(), y.stride(0)
        results, start = [], 0
        for m in members:
            results.append(y[:, start : start + m.out_features].view(*x.shape[:-1], m.out_features))
            start += m.out_features
        return tuple(results)

    @staticmethod
    def backward(ctx, *grads):
        x_ext, *lora = ctx.saved_tensors
        members = ctx.members
        width = ctx.x_shape[-1]
        n = x_ext.shape[0]
        ranks = [m.r for m in members]
        outs = [m.out_features for m in members]
        R, O = sum(ranks), sum(outs)
        x2, xa = x_ext[:, :width], x_ext[:, width:]
        gs = [x_ext.new_zeros(n, o) if g is None else g.reshape(n, o) for g, o in zip(grads, outs)]
        w_all = ctx.weights.get(members, x_ext.dtype, x_ext.device)  # the forward's, unless another group ran since
        need_x = ctx.needs_input_grad[0]
        if need_x:
            # [g_1 | ... | g_k] [W | s B] = [g W | gxa]: the base input gradient and the adapters' gxa in one pass
            # over the g_i (one GEMM when they lie side by side, as SwiGLU's in-place backward leaves gate/up).
            joined = _joined(gs, ctx.y_ptr, ctx.y_stride, O)
            if joined is not None:
                dx_ext = joined @ w_all[:O]  # (N, in + R)
            else:
                dx_ext = gs[0] @ w_all[: outs[0]]
                row = outs[0]
                for g, out in zip(gs[1:], outs[1:]):
                    dx_ext.addmm_(g, w_all[row : row + out])
                    row += out
            gxa = dx_ext[:, width:]
        else:
            gxa = x_ext.new_empty(n, R)
            row = col = 0
            for g, out, r in zip(gs, outs, ranks):
                torch.mm(g, w_all[row : row + out, width + col : width + col + r], out=gxa[:, col : col + r])
                row, col = row + out, col + r
        grads_lora = []
        col = 0
        for i, (m, a, b, g, r) in enumerate(zip(members, lora[0::2], lora[1::2], gs, ranks)):
            da = db = None
            if ctx.needs_input_grad[4 + 2 * i]:
                da = torch.mm(gxa[:, col : col + r].T, x2).to(a.dtype)  # (r, in)
            if ctx.needs_input_grad[5 + 2 * i]:
                db = torch.mm(g.T, xa[:, col : col + r]).mul_(m.scale).to(b.dtype)  # (out, r)
            grads_lora += [da, db]
            col += r
        dx = None
        if need_x:
            dx = dx_ext[:, :width].addmm_(gxa, w_all[O:, :width])  # + gxa A_cat (other columns: no overlap)
            dx = dx.view(ctx.x_shape)
        return (dx, None, None, None, *grads_lora)


def _joined(gs: list[torch.Tensor], y_ptr: int, y_stride: int, width: int) -> torch.Tensor | None:
    """The g_i as one (N, width) view when they lie side by side where forward wrote its outputs, else None."""
    first = gs[0]
    if first.data_ptr() != y_ptr or first.stride() != (y_stride, 1) or y_stride != width:
        return None
    step = first.element_size()
    offset = 0
    for g in gs:
        if g.data_ptr() != y_ptr + offset * step or g.stride() != (y_stride, 1):
            return None
        offset += g.shape[1]
    return first.as_strided((first.shape[0], width), (y_stride, 1))


def lora_group(x: torch.Tensor, members: Sequence[LoRALinear]) -> tuple[torch.Tensor, ...]:
    """The members' outputs on x, (..., out_i) each, as one autograd node (see the module docstring).

    `members` from `group_members`. x's spare columns (`kernels.spare`) are used when it has
    them. The outputs are views of one buffer: read them, do not write into them.
    """
    lora = [t for m in members for t in (m.lora_A.weight, m.lora_B.weight)]
    return LoRAGroupFunction.apply(x, tuple(members), members[0].group_weights, spare_columns(x), *lora)
