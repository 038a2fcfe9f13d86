"""A LoRA projection group (q/k/v, gate/up) over NF4 bases with FP8 products (train.fp8) as one autograd node.

The group's base weights are one stacked FP8 matrix (`quant.fp8.FP8Base` of its members' weights): forward is one
FP8 GEMM for all the outputs, backward one for the input gradient, over the output gradients side by side (a copy
joins them unless they already lie so, as SwiGLU's backward leaves gate/up). The adapters stay in the input's dtype,
as on every other path: xa = x [A_1; ...; A_k]^T (N, R), added into the outputs through the block-diagonal
[s_1 B_1, ..., s_k B_k] (O, R); backward gxa = g Bblk, dx += gxa A_cat, dA_i = gxa_i^T x, dB_i = s_i g_i^T xa_i.
One node instead of k saves the k - 1 sums of input gradients and most of the host's work per projection.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tunelab.kernels.lora import _grad, _joined, split_outputs
from tunelab.quant.fp8 import FP8Base


def _adapters(lora: Sequence[torch.Tensor], scales: Sequence[float], dtype: torch.dtype):
    """(A_cat (R, in), Bblk (O, R)) in `dtype` from lora = (A_1, B_1, ..., A_k, B_k)."""
    a_cat = torch.cat([a.to(dtype) for a in lora[0::2]])
    b_blk = torch.block_diag(*[(b * s).to(dtype) for b, s in zip(lora[1::2], scales)])
    return a_cat, b_blk


class FP8LoRAGroupFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, base, outs, ranks, scales, bias, *lora):
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        a_cat, b_blk = _adapters(lora, scales, x2.dtype)
        y = base.product(x2)  # (N, O)
        if bias is not None:
            y.add_(bias.to(y.dtype))
        xa = x2 @ a_cat.T  # (N, R)
        y.addmm_(xa, b_blk.T)
        ctx.save_for_backward(x2, xa, a_cat, b_blk, *lora)
        ctx.base, ctx.outs, ctx.ranks, ctx.scales, ctx.x_shape = base, outs, ranks, scales, x.shape
        ctx.y = (y.data_ptr(), y.stride(0))
        return split_outputs(y, outs, x.shape[:-1])

    @staticmethod
    def backward(ctx, *grads):
        x2, xa, a_cat, b_blk, *lora = ctx.saved_tensors
        outs, n, O = ctx.outs, x2.shape[0], sum(ctx.outs)
        gs = [x2.new_zeros(n, o) if g is None else g.reshape(n, o) for g, o in zip(grads, outs)]
        g = _joined(gs, *ctx.y, O)
        if g is None:
            g = torch.cat(gs, dim=1)
        gxa = g @ b_blk  # (N, R)
        dx = None
        if ctx.needs_input_grad[0]:
            dx = ctx.base.input_grad(g).addmm_(gxa, a_cat).view(ctx.x_shape)
        grads_lora, col = [], 0
        for i, (scale, a, b, gi, r) in enumerate(zip(ctx.scales, lora[0::2], lora[1::2], gs, ctx.ranks)):
            da = _grad(a, gxa[:, col : col + r].T, x2, 1.0, a.dtype) if ctx.needs_input_grad[6 + 2 * i] else None
            db = _grad(b, gi.T, xa[:, col : col + r], scale, b.dtype) if ctx.needs_input_grad[7 + 2 * i] else None
            grads_lora += [da, db]
            col += r
        return (dx, None, None, None, None, None, *grads_lora)


def fp8_lora_group(
    x: torch.Tensor,
    base: FP8Base,
    outs: Sequence[int],
    ranks: Sequence[int],
    scales: Sequence[float],
    bias: torch.Tensor | None,
    lora: Sequence[torch.Tensor],
) -> tuple[torch.Tensor, ...]:
    """The outputs (..., out_i) of k LoRA projections of x (..., in) over the stacked NF4 weights of `base`, with FP8
    base products. bias: the members' frozen biases concatenated (O,), or None. lora: (A_1, B_1, ..., A_k, B_k).
    The outputs are views of one buffer: read them, do not write into them."""
    return FP8LoRAGroupFunction.apply(x, base, tuple(outs), tuple(ranks), tuple(scales), bias, *lora)
