"""LoRA linear, y = x W^T (+ b) + scale * (drop(x) A^T) B^T, as one autograd node that saves little.

The base weight W comes either as a tensor or as a function `dtype -> W` that produces it on demand (an NF4 weight
dequantized into a scratch buffer, `tunelab.quant`): such a weight is produced in forward and again in backward and
never saved, so a quantized base costs no 16-bit copy across the step. This node is the fused path of every single
LoRA projection, over a 16-bit or a quantized base; `reference.lora_linear` is its plain-autograd twin.

Plain torch matmuls, no Triton: every step is a GEMM that cuBLAS already runs near the matrix-unit peak, and the
rank-r products are too thin for a fused Triton GEMM to win. Measured on an H200 (bf16, 8192 tokens, 4096 -> 4096,
r = 16) it runs at the reference's speed (fwd+bwd 1.12 vs 1.07 ms, within run-to-run noise); what it gains is
memory, with dropout on (96 vs 160 MiB held for backward: no dropped copy of x), and fewer passes:
  - saved for backward: x (shared with whoever else saved it), xa = drop(x) A^T (N, r), A and B in x's dtype (cast
    once, in forward) and, with dropout on, a bool keep-mask (1 byte an element); never drop(x) itself nor anything
    of size (N, out);
  - the adapter update is added into the base output by one addmm (no (N, out) temporary for scale * xa B^T);
  - a residual (the decoder's residual stream) rides in the base GEMM as its C operand (no pass over the output);
  - W gets no gradient unless it asks for one (a frozen base skips the (out, in) GEMM).
Backward, with g = dy (N, out) and gxa = scale * g B (N, r):
  dB = scale * g^T xa,   dA = gxa^T drop(x),   dx = g W + (gxa A) * keep / (1 - p),   dW = g^T x,   db = sum g.
Dropout draws its mask with `reference.dropout_keep_mask`, so under one seed this and `reference.lora_linear`
drop the same elements.

`lora_group` runs several LoRA projections that read one input (q/k/v, gate/up) as one GEMM. Each projection i is
y_i = x W_i^T (+ b_i) + s_i (x A_i^T) B_i^T with W_i frozen. Run one by one, every adapter update is added into its
(N, out_i) output by a second pass over that output, and every input gradient is a separate (N, in) tensor that
autograd then sums. Here the low-rank products travel inside the base GEMM by widening its inner dimension
(R = sum of the ranks, O = sum of the out_i):

  forward:   xa = x [A_1; ...; A_k]^T (N, R), written into R spare columns after x: x_ext = [x | xa] (N, in + R);
             [y_1 | ... | y_k] = x_ext W_ext^T,  W_ext (O, in + R) = rows [W_i | s_i B_i placed under xa_i's columns]
  backward:  [g_1 | ... | g_k] W_ext = [sum_i g_i W_i | gxa] with gxa = [g_1 s_1 B_1 | ... | g_k s_k B_k] (N, R):
             the input gradient's base part and the adapters' gxa come out of one pass over the g_i (one GEMM
             when they are adjacent columns of one buffer, as SwiGLU's in-place backward leaves gate/up; else the
             GEMMs accumulate into one output); then dx += gxa [A_1; ...; A_k], [dA_1; ...; dA_k] = gxa^T x and
             dB_i = s_i g_i^T xa_i.

Gradients of A and B. Each is one GEMM of two 16-bit operands; on CUDA its output is fp32 (cuBLAS accumulates in
fp32 anyway), not rounded to 16 bits and then cast and added into an fp32 `.grad` by three more kernels. A
single-process training run lets the nodes go further (`accumulate_into_grads`): the GEMM adds alpha * product
straight into the adapter's fp32 `.grad` as its C operand (beta = 1), and the node hands autograd no gradient for it.
On a 7B QLoRA micro-batch (N = 4096) that removes ~1,100 small kernels (fp32 adds, casts, scalings): dA and dB of
one projection take 28 us instead of 37 (H200, from a CUDA graph), and the sums are those of fp32, not of 16-bit
partial gradients (against an fp32 product, 4096 x 16 at N = 4096: max error 7e-4 instead of 0.97).

W_all = [W_ext; A_1 ... A_k | 0] (O + R, in + R) comes from the caller (`stacked(dtype, device)`, asked again in
backward: `peft.group.GroupWeights` keeps it for the pass). x gets its spare columns from whoever produced it: with
`room` >= R columns after each row that nothing else reads or writes (`rms_norm(..., spare_columns=R)` leaves them),
xa is written there; any other x is copied into a new buffer. Saved for backward: x_ext only (x and xa in one
tensor). No dropout (a dropped x would need its own copy): the caller groups only adapters without active dropout.
"""

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from tunelab.kernels.reference import dropout_keep_mask

_INTO_GRAD = "_accumulate_into_grad"  # set on an adapter parameter whose .grad the nodes may add into


def accumulate_into_grads(params: Sequence[torch.Tensor], on: bool = True) -> int:
    """Let (on) or stop the LoRA nodes adding each parameter's gradient into its `.grad` themselves, as the C operand
    of the GEMM that computes it, and then handing autograd None for it. Returns how many parameters now do.

    For `backward()` in one process only: the gradient never passes through autograd's accumulation, so nothing that
    watches it there sees it (tensor hooks, DDP's and FSDP's reducers, `torch.autograd.grad`). Parameters with
    tensor hooks or post-accumulation hooks are left out. A parameter without a `.grad` gets a zeroed one at its
    first gradient."""
    count = 0
    for p in params:
        hooked = p._backward_hooks or getattr(p, "_post_accumulate_grad_hooks", None)
        wanted = on and p.is_leaf and p.requires_grad and p.dtype == torch.float32 and not hooked
        if wanted:
            setattr(p, _INTO_GRAD, True)
            count += 1
        elif hasattr(p, _INTO_GRAD):
            delattr(p, _INTO_GRAD)
    return count


def _grad(leaf: torch.Tensor, m1: torch.Tensor, m2: torch.Tensor, alpha: float, dtype: torch.dtype):
    """alpha * m1 @ m2, the gradient of `leaf` in `dtype`: added into leaf.grad by the GEMM (then None is returned)
    when `accumulate_into_grads` allowed it, else returned. With 16-bit operands on CUDA and an fp32 gradient the GEMM
    writes fp32 (no 16-bit rounding, no cast)."""
    wide = m1.is_cuda and dtype == torch.float32 and m1.dtype in (torch.bfloat16, torch.float16)
    if getattr(leaf, _INTO_GRAD, False) and (wide or m1.dtype == dtype):
        grad = leaf.grad
        if grad is None:
            grad = leaf.grad = torch.zeros_like(leaf, memory_format=torch.contiguous_format)
        if grad.dtype == torch.float32 and grad.is_contiguous() and not grad.requires_grad:
            torch.addmm(grad, m1, m2, alpha=alpha, out=grad, **({"out_dtype": torch.float32} if wide else {}))
            return None
    out = torch.mm(m1, m2, out_dtype=torch.float32) if wide else torch.mm(m1, m2)
    if alpha != 1.0:
        out.mul_(alpha)
    return out.to(dtype)


def _lora_forward(x2, weight, bias, a, b, scale, keep, dropout_p, output=True, residual=None):
    """x2 (N, in), weight (out, in), a (r, in) and b (out, r), all in x2's dtype -> (out (N, out), xa (N, r)).

    output=False (checkpointing's recomputation, for a layer's last projection, whose result backward never reads):
    only xa, which backward needs, is computed; `out` is left uninitialised and `weight` may be None. `weight` may
    also be an object with `product(x2)` = x2 W^T (`quant.fp8.FP8Base`).
    residual (N, out): added to the result by the GEMM itself (its C operand), instead of by a separate pass.
    """
    dropped = x2 if keep is None else x2 * keep.reshape(x2.shape) / (1.0 - dropout_p)
    xa = dropped @ a.T  # (N, r)
    del dropped
    if not output:
        return x2.new_empty(x2.shape[0], b.shape[0]), xa
    if hasattr(weight, "product"):  # FP8 products of a frozen NF4 weight (`quant.fp8.FP8Base`)
        out = weight.product(x2)
        if bias is not None:
            out.add_(bias)
        if residual is not None:
            out.add_(residual)
    elif residual is None:
        out = F.linear(x2, weight, bias)  # (N, out)
    else:
        out = torch.addmm(residual if bias is None else residual + bias, x2, weight.T)  # residual + x2 W^T (+ b)
    out.addmm_(xa, b.T, alpha=scale)
    return out, xa


def _lora_backward(g, x2, xa, a, b, weight_fn, scale, keep, dropout_p, need_x, need_a, need_b, leaf_a, leaf_b):
    """Gradients (dx (N, in), dA, dB) for g = dy (N, out), with a and b in x2's dtype and leaf_a, leaf_b the
    adapter's parameters (dA, dB in their dtypes, or None where `_grad` added them into .grad); `weight_fn(g)` gives
    the base's part of dx, g W, called only for dx."""
    gxa = (g @ b).mul_(scale)  # (N, r)
    keep2 = None if keep is None else keep.reshape(x2.shape)
    dx = da = db = None
    if need_b:
        db = _grad(leaf_b, g.T, xa, scale, leaf_b.dtype)  # (out, r)
    if need_a:  # the dropped x (N, in), a temporary: freed once dA is computed, before dx's (N, in) buffers
        da = _grad(leaf_a, gxa.T, x2 if keep2 is None else x2 * keep2 / (1.0 - dropout_p), 1.0, leaf_a.dtype)
    if need_x:
        dx = weight_fn(g)  # (N, in)
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
        fp8 = hasattr(weight, "product")  # `quant.fp8.FP8Base`: its own products, forward and backward
        produced = not fp8 and not isinstance(weight, torch.Tensor)  # a function dtype -> W: called again in backward
        # (out, in) in x's dtype; a produced one is dead once the GEMM is queued, and not needed without an output
        w = weight if fp8 else (weight(x.dtype) if output else None) if produced else weight
        bias_x = None if bias is None else bias.to(x.dtype)
        # The adapter in x's dtype, cast once and kept for backward ((r + out) x r elements, no second cast there)
        a, b = lora_a.to(x.dtype), lora_b.to(x.dtype)
        out, xa = _lora_forward(x2, w, bias_x, a, b, scale, keep, dropout_p, output, residual2)
        ctx.save_for_backward(x2, a, b, xa, keep, None if produced or fp8 else weight)
        ctx.leaves = (lora_a, lora_b)  # parameters (alive anyway): their .grad, and the dtype of their gradients
        ctx.produce = weight if produced else None
        ctx.fp8 = weight if fp8 else None
        ctx.scale, ctx.dropout_p, ctx.x_shape = scale, dropout_p, x.shape
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        x2, a, b, xa, keep, weight = ctx.saved_tensors
        need_x, need_w, need_bias, need_a, need_b = ctx.needs_input_grad[:5]
        g = dy.reshape(-1, dy.shape[-1])  # (N, out)
        produce, fp8 = ctx.produce, ctx.fp8
        if fp8 is not None:
            base_grad = fp8.input_grad
        elif produce is not None:
            base_grad = lambda g: g @ produce(g.dtype)  # noqa: E731
        else:
            base_grad = lambda g: g @ weight.to(g.dtype)  # noqa: E731
        dx, da, db = _lora_backward(
            g,
            x2,
            xa,
            a,
            b,
            base_grad,
            ctx.scale,
            keep,
            ctx.dropout_p,
            need_x,
            need_a,
            need_b,
            *ctx.leaves,
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
    is W, or a function returning W in the dtype asked for (then W takes no gradient and is never saved), or an
    object whose `product(x2)` and `input_grad(g)` compute the base's two products (`quant.fp8.FP8Base`: no gradient).
    output=False records the node for backward without computing the result (its values are undefined; checkpointing's
    recomputation of a layer's last projection, whose output backward never reads).
    """
    keep = dropout_keep_mask(x, dropout_p) if training and dropout_p > 0 else None
    return LoRALinearFunction.apply(x, weight, bias, lora_a, lora_b, scale, keep, dropout_p, output, residual)


# --------------------------------------------------------------------------------------------------------------------
# Several projections of one input as one GEMM (see the module docstring)


def _extended(x2: torch.Tensor, room: int, spare: int) -> torch.Tensor:
    """(N, in + spare) whose first columns are x2: x2's own buffer when it has `room` >= spare columns after each row,
    else a copy."""
    n, width = x2.shape
    if room >= spare and x2.stride(1) == 1 and x2.stride(0) == width + room:
        return x2.as_strided((n, width + spare), x2.stride())
    out = x2.new_empty(n, width + spare)
    out[:, :width].copy_(x2)
    return out


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


def split_outputs(y: torch.Tensor, outs: Sequence[int], lead: torch.Size) -> tuple[torch.Tensor, ...]:
    """The outputs (*lead, out_i) of a group as views of its (N, sum(outs)) result y."""
    results, start = [], 0
    for out in outs:
        results.append(y[:, start : start + out].view(*lead, out))
        start += out
    return tuple(results)


class LoRAGroupFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, stacked, outs, ranks, scales, biases, room, *lora):
        # lora = (A_1, B_1, ..., A_k, B_k), the leaves autograd gives gradients to; `stacked` holds them itself.
        # Detached: x_ext below is a view of x's buffer that this node writes into and saves; autograd must not
        # track it as a view of x (it would try to rebuild its history on unpacking).
        x2 = x.detach().reshape(-1, x.shape[-1])  # (N, in)
        n, width = x2.shape
        R, O = sum(ranks), sum(outs)
        w_all = stacked(x2.dtype, x2.device)  # (O + R, in + R)
        x_ext = _extended(x2, room, R)  # (N, in + R)
        torch.mm(x2, w_all[O:, :width].T, out=x_ext[:, width:])  # xa = x A_cat^T, next to x
        y = x2.new_empty(n, O)
        if any(bias is not None for bias in biases):
            dtype = x2.dtype
            bias = torch.cat([x2.new_zeros(out) if b is None else b.to(dtype) for out, b in zip(outs, biases)])
            torch.addmm(bias, x_ext, w_all[:O].T, out=y)
        else:
            torch.mm(x_ext, w_all[:O].T, out=y)
        ctx.save_for_backward(x_ext, *lora)
        ctx.stacked, ctx.outs, ctx.ranks, ctx.scales, ctx.x_shape = stacked, outs, ranks, scales, x.shape
        ctx.y_ptr, ctx.y_stride = y.data_ptr(), y.stride(0)
        return split_outputs(y, outs, x.shape[:-1])

    @staticmethod
    def backward(ctx, *grads):
        x_ext, *lora = ctx.saved_tensors
        outs, ranks = ctx.outs, ctx.ranks
        width = ctx.x_shape[-1]
        n = x_ext.shape[0]
        R, O = sum(ranks), sum(outs)
        x2, xa = x_ext[:, :width], x_ext[:, width:]
        gs = [x_ext.new_zeros(n, o) if g is None else g.reshape(n, o) for g, o in zip(grads, outs)]
        w_all = ctx.stacked(x_ext.dtype, x_ext.device)  # the forward's, unless another group used the buffer since
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
        for i, (scale, a, b, g, r) in enumerate(zip(ctx.scales, lora[0::2], lora[1::2], gs, ranks)):
            da = db = None
            if ctx.needs_input_grad[7 + 2 * i]:
                da = _grad(a, gxa[:, col : col + r].T, x2, 1.0, a.dtype)  # (r, in)
            if ctx.needs_input_grad[8 + 2 * i]:
                db = _grad(b, g.T, xa[:, col : col + r], scale, b.dtype)  # (out, r)
            grads_lora += [da, db]
            col += r
        dx = None
        if need_x:
            dx = dx_ext[:, :width].addmm_(gxa, w_all[O:, :width])  # + gxa A_cat (other columns: no overlap)
            dx = dx.view(ctx.x_shape)
        return (dx, None, None, None, None, None, None, *grads_lora)


def lora_group(
    x: torch.Tensor,
    stacked: Callable[[torch.dtype, torch.device], torch.Tensor],
    outs: Sequence[int],
    ranks: Sequence[int],
    scales: Sequence[float],
    biases: Sequence[torch.Tensor | None],
    lora: Sequence[torch.Tensor],
    room: int = 0,
) -> tuple[torch.Tensor, ...]:
    """The outputs (..., out_i) of k LoRA projections of x (..., in) as one autograd node (see the module docstring).

    stacked(dtype, device): W_all (O + R, in + R) in that dtype, [[W_1 | s_1 B_1 | 0 ...], ..., [W_k | ... | s_k B_k],
    [A_1; ...; A_k | 0]], for the current A and B; called in forward and again in backward. outs, ranks, scales,
    biases: per projection (biases frozen). lora: (A_1, B_1, ..., A_k, B_k), which receive the gradients. room: spare
    columns after x's rows that nothing else uses (0: none). The outputs are views of one buffer: read them, do not
    write into them.
    """
    return LoRAGroupFunction.apply(x, stacked, tuple(outs), tuple(ranks), tuple(scales), tuple(biases), room, *lora)
