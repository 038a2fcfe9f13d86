"""Fused LM head + cross-entropy that never holds more than one (chunk, V) block of logits.

For each chunk of `chunk_size` tokens (h (n, d), labels (n,); by default `kernels.head_chunk.head_chunk_tokens(V)`,
which keeps a (n, V) block within 256 MiB in bf16):
    logits = h @ W^T                                    (n, V) in the input dtype, the only large buffer
    one Triton pass per row: online logsumexp over V, loss = lse - logits[label], then overwrites the row in
        place with dloss/dlogits = softmax(logits) - onehot(label)   (zero for ignored rows)
    grad_h[chunk] = dlogits @ W                         (n, d)
    grad_W       += dlogits^T @ h                       (V, d), skipped when W is frozen
so the gradients are complete when the forward returns, and the backward only scales them by grad_output. Peak
extra memory is one (n, V) logits block plus grad_h and grad_W, against autograd's fp32 copy of all N x V logits.
The time is the three GEMMs (two with W frozen). On an H200, 8192 tokens, d 4096, V 32000, bf16, fwd+bwd:
10.1 ms and 250 MiB peak, against 12.2 ms and 1686 MiB for the chunked reference (W frozen: 7.0 vs 9.3 ms).

Numerics: logits and dlogits are stored in the input dtype (bf16 rounding of the softmax, as in any bf16 LM head);
the logsumexp and the loss are fp32. grad_W is accumulated in W's dtype by cuBLAS (fp32 inside each addmm, one
rounding per chunk). A label outside [0, V) other than `ignore_index` makes the loss NaN rather than a device
assert. Because the backward rescales its saved gradients in place, a second backward through the same graph
(retain_graph=True) raises autograd's "modified by an inplace operation" error instead of returning wrong grads.
"""

import torch
import triton
import triton.language as tl

from tunelab.kernels.head_chunk import head_chunk_tokens


@triton.jit
def _logsumexp_grad_kernel(
    logits_ptr, logits_stride, labels_ptr, loss_ptr, n_cols, ignore_index,
    BLOCK: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * logits_stride
    label = tl.load(labels_ptr + row)
    # Online logsumexp: running max m and running sum s of exp(x - m), fp32.
    m = float("-inf")
    s = 0.0
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(row_ptr + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    ignored = label == ignore_index
    in_range = (label >= 0) & (label < n_cols)
    x_label = tl.load(row_ptr + label, mask=in_range, other=0.0).to(tl.float32)
    loss = tl.where(ignored, 0.0, tl.where(in_range, lse - x_label, float("nan")))
    tl.store(loss_ptr + row, loss)
    if COMPUTE_GRAD:
        keep = tl.where(ignored, 0.0, 1.0)  # an ignored row contributes no gradient
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < n_cols
            x = tl.load(row_ptr + cols, mask=mask, other=float("-inf")).to(tl.float32)
            grad = (tl.exp(x - lse) - tl.where(cols == label, 1.0, 0.0)) * keep
            tl.store(row_ptr + cols, grad.to(logits_ptr.dtype.element_ty), mask=mask)


def chunk_losses(h, weight, labels, losses, ignore_index, block, compute_grad):
    """One chunk of the fused head: its logits h @ W^T (n, V), whose row kernel writes each row's loss
    lse - logits[label] (= -log p) into `losses` (n,) and, if compute_grad, turns the logits in place into
    dloss/dlogits = softmax - onehot. Returns the (n, V) buffer (this op's forward, `log_probs`' both passes)."""
    logits = h @ weight.T  # (n, V)
    _logsumexp_grad_kernel[(h.shape[0],)](
        logits, logits.stride(0), labels, losses, weight.shape[0], ignore_index,
        BLOCK=block, COMPUTE_GRAD=compute_grad, num_warps=8,
    )  # fmt: skip
    return logits


class LinearCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index, chunk_size, need_grad_hidden, need_grad_weight):
        n_tokens, vocab = hidden.shape[0], weight.shape[0]
        labels = labels.contiguous()
        losses = torch.empty(n_tokens, dtype=torch.float32, device=hidden.device)  # (N,)
        grad_hidden = torch.empty_like(hidden) if need_grad_hidden else None  # (N, d)
        grad_weight = None  # (V, d), made by the first chunk's matmul
        compute_grad = need_grad_hidden or need_grad_weight
        block = min(4096, triton.next_power_of_2(vocab))
        for start in range(0, n_tokens, chunk_size):
            end = min(start + chunk_size, n_tokens)
            h = hidden[start:end]  # (n, d)
            # (n, V), turned into dlogits in place when compute_grad
            logits = chunk_losses(h, weight, labels[start:end], losses[start:end], ignore_index, block, compute_grad)
            if need_grad_hidden:
                torch.mm(logits, weight, out=grad_hidden[start:end])
            if need_grad_weight:
                if grad_weight is None:
                    grad_weight = logits.T @ h
                else:
                    grad_weight.addmm_(logits.T, h)
            del logits
        if need_grad_weight and grad_weight is None:  # no tokens at all
            grad_weight = torch.zeros_like(weight)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return losses.sum()

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        # d(sum loss)/d(...) was computed for grad_output == 1; scale in place (no second (V, d) buffer).
        if grad_hidden is not None:
            grad_hidden.mul_(grad_output)
        if grad_weight is not None:
            grad_weight.mul_(grad_output)
        return grad_hidden, grad_weight, None, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Sum over tokens of cross-entropy(hidden @ weight.T, labels), skipping `ignore_index`. hidden (N, d), weight (V, d).

    Returns the summed loss (fp32 scalar). Gradients for hidden and (unless frozen) weight are computed during the
    forward, chunk by chunk (chunk_size tokens; None sizes it to the vocabulary: `kernels.head_chunk`); see the
    module docstring.
    """
    return apply_fused_head(
        LinearCrossEntropyFunction, "linear_cross_entropy", hidden, weight, labels, ignore_index, chunk_size
    )


def apply_fused_head(
    function: type[torch.autograd.Function],
    name: str,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    chunk_size: int | None,
) -> torch.Tensor:
    """`function.apply` for a fused LM-head op (this one, `log_probs.linear_log_probs`) once its arguments are
    checked (ValueError naming the op `name`), telling its forward which of hidden and weight need a gradient.
    chunk_size None: `head_chunk_tokens` of the vocabulary."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"{name}: hidden (N, d) and weight (V, d), got {tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    if chunk_size is None:
        chunk_size = head_chunk_tokens(weight.shape[0])
    if chunk_size < 1:
        raise ValueError(f"{name}: chunk_size must be >= 1, got {chunk_size}")
    grad_on = torch.is_grad_enabled()
    return function.apply(
        hidden, weight, labels, ignore_index, chunk_size, grad_on and hidden.requires_grad,
        grad_on and weight.requires_grad,
    )  # fmt: skip
