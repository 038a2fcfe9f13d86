"""LoRA linear, y = x W^T (+ b) + scale * (drop(x) A^T) B^T, as one autograd node that saves little.

The base weight W comes either as a tensor or as a function `dtype -> W` that produces it on demand (an NF4 weight
dequantized into a scratch buffer, `tunelab.quant`): such a weight is produced in forward and again in backward and
never saved, so a quantized base costs no 16-bit copy across the step. This node is the fused path of every single
LoRA projection, over a 16-bit or a quantized base; `reference.lora_linear` is its plain-autograd twin.

Plain torch matmuls, no Triton: every step is a GEMM that cuBLAS already runs near the matrix-unit peak, and the
rank-r products are too thin for a fused Triton GEMM to win. Measured on an H200 (bf16, 8192 tokens, 4096 -> 4096,
r = 16) it runs at the reference's speed (fwd+bwd 1.12 vs 1.07 ms, within run-to-run noise); what it gains is
memory, with dropout on (96 vs 160 MiB held for backward: no dropped copy of x), and fewer passes:
  - saved for backward: x (shared with whoever else saved it), xa = drop(x) A^T (N, r) and, with dropout on, a
    bool keep-mask (1 byte an element); never drop(x) itself nor anything of size (N, out);
  - the adapter update is added into the base output by one addmm (no (N, out) temporary for scale * xa B^T);
  - a residual (the decoder's residual stream) rides in the base GEMM as its C operand (no pass over the output);
  - W gets no gradient unless it asks for one (a frozen base skips the (out, in) GEMM).
Backward, with g = dy (N, out) and gxa = scale * g B (N, r):
  dB = scale * g^T xa,   dA = gxa^T drop(x),   dx = g W + (gxa A) * keep / (1 - p),   dW = g^T x,   db = sum g.
Dropout draws its mask with `reference.dropout_keep_mask`, so under one seed this and `reference.lora_linear`
drop the same elements.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F

from tunelab.kernels.reference import dropout_keep_mask


def _lora_forward(x2, weight, bias, lora_a, lora_b, scale, keep, dropout_p, output=True, residual=None):
    """x2 (N, in), weight (out, in) in x2's dtype -> (out (N, out), xa (N, r)).

    output=False (checkpointing's recomputation, for a layer's last projection, whose result backward never reads):
    only xa, which backward needs, is computed; `out` is left uninitialised and `weight` may be None.
    residual (N, out): added to the result by the GEMM itself (its C operand), instead of by a separate pass.
    """
    a = lora_a.to(x2.dtype)  # (r, in)
    dropped = x2 if keep is None else x2 * keep.reshape(x2.shape) / (1.0 - dropout_p)
    xa = dropped @ a.T  # (N, r)
    del dropped
    if not output:
        return x2.new_empty(x2.shape[0], lora_b.shape[0]), xa
    if residual is None:
        out = F.linear(x2, weight, bias)  # (N, out)
    else:
        out = torch.addmm(residual if bias is None else residual + bias, x2, weight.T)  # residual + x2 W^T (+ b)
    out.addmm_(xa, lora_b.to(x2.dtype).T, alpha=scale)
    return out, xa


def _lora_backward(g, x2, xa, lora_a, lora_b, weight_fn, scale, keep, dropout_p, need_x, need_a, need_b):
    """Gradients (dx (N, in), dA, dB) for g = dy (N, out); `weight_fn()` gives W in g's dtype, called only for dx."""
    a, b = lora_a.to(x2.dtype), lora_b.to(x2.dtype)
    gxa = (g @ b).mul_(scale)  # (N, r)
    keep2 = None if keep is None else keep.reshape(x2.shape)
    dx = da = db = None
    if need_b:
        db = torch.mm(g.T, xa).mul_(scale).to(lora_b.dtype)  # (out, r)
    if need_a:
        dropped = x2 if keep2 is None else x2 * keep2 / (1.0 - dropout_p)
        da = torch.mm(gxa.T, dropped).to(lora_a.dtype)  # (r, in)
    if need_x:
        dx = g @ weight_fn()  # (N, in)
        if keep2 is None:
            dx.addmm_(gxa, a)
        else:
            dx.add_((gxa @ a) * keep2, alpha=1.0 / (1.0 - dropout_p))
    return dx, da, db


class LoRALinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scale, keep, dropout_p, output, residual):
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        residual2 = None if residual is None else residual.reshape(x2.shape[0], -1)
        produced = not isinstance(weight, torch.Tensor)  # a function dtype -> W: called again in backward
        # (out, in) in x's dtype; a produced one is dead once the GEMM is queued, and not needed without an output
        w = (weight(x.dtype) if output else None) if produced else weight
        bias_x = None if bias is None else bias.to(x.dtype)
        out, xa = _lora_forward(x2, w, bias_x, lora_a, lora_b, scale, keep, dropout_p, output, residual2)
        ctx.save_for_backward(x2, lora_a, lora_b, xa, keep, None if produced else weight)
        ctx.produce = weight if produced else None
        ctx.scale, ctx.dropout_p, ctx.x_shape = scale, dropout_p, x.shape
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        x2, lora_a, lora_b, xa, keep, weight = ctx.saved_tensors
        need_x, need_w, need_bias, need_a, need_b = ctx.needs_input_grad[:5]
        g = dy.reshape(-1, dy.shape[-1])  # (N, out)
        produce = ctx.produce
        dx, da, db = _lora_backward(
            g,
            x2,
            xa,
            lora_a,
            lora_b,
            (lambda: produce(g.dtype)) if produce is not None else (lambda: weight.to(g.dtype)),
            ctx.scale,
            keep,
            ctx.dropout_p,
            need_x,
            need_a,
            need_b,
        )
        dx = None if dx is None else dx.view(ctx.x_shape)
        dw = torch.mm(g.T, x2).to(weight.dtype) if need_w else None  # (out, in)
        dbias = g.sum(0, dtype=torch.float32).to(ctx.bias_dtype) if need_bias else None
        return dx, dw, dbias, da, db, None, None, None, None, dy if ctx.needs_input_grad[9] else None


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor | Callable[[torch.dtype], torch.Tensor],
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scale: float,
    dropout_p: float = 0.0,
    training: bool = False,
    output: bool = True,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """x @ W^T (+ b) + scale * (dropout(x) @ A^T) @ B^T (+ residual). x (..., in), W (out, in), A (r, in), B (out, r),
    residual (..., out).

    Same contract as `reference.lora_linear`; see the module docstring for what it saves and why no Triton. `weight`
    is W, or a function returning W in the dtype asked for (then W takes no gradient and is never saved).
    output=False records the node for backward without computing the result (its values are undefined; checkpointing's
    recomputation of a layer's last projection, whose output backward never reads).
    """
    keep = dropout_keep_mask(x, dropout_p) if training and dropout_p > 0 else None
    return LoRALinearFunction.apply(x, weight, bias, lora_a, lora_b, scale, keep, dropout_p, output, residual)
