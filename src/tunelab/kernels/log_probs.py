"""Fused LM head + log-probabilities of given labels, per token: log p(y_i | h_i) (N,), for the preference (dpo) and
policy-gradient (grpo) losses, never holding more than one (chunk, V) block of logits.

    x = h @ W^T (n, V)    log p(y) = x_y - logsumexp(x) = -cross_entropy(x, y)

so the row kernel of `cross_entropy.py` computes it (and d(-log p)/dx = softmax(x) - onehot(y), in place). What
differs from the summed cross-entropy is the backward: each token has its own upstream gradient g_i (a DPO pair
weighs all its answer tokens by its sigmoid term), so

    grad_h_i = -g_i * (softmax - onehot)_i @ W          grad_W = -sum_i g_i * (softmax - onehot)_i^T h_i

- W frozen (LoRA, QLoRA: the usual case): row i of grad_h is linear in g_i, so the forward computes it chunk by
  chunk for g = 1 (two GEMMs per chunk, the logits freed at once) and the backward scales its rows by -g.
- W trained (full fine-tuning, a tied embedding that trains): g must enter the sum over tokens of grad_W, so the
  forward keeps only h, and the backward recomputes each chunk's logits (four GEMMs in all), still one chunk at a
  time.

Numerics as in `cross_entropy.py`: logits and dlogits in the input dtype, logsumexp and log p in fp32. A label
outside [0, V) other than `ignore_index` gives NaN; ignored tokens get log p = 0 and no gradient.
"""

import torch
import triton

from tunelab.kernels.cross_entropy import apply_fused_head, chunk_losses


class LinearLogProbsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index, chunk_size, need_grad_hidden, need_grad_weight):
        n_tokens = hidden.shape[0]
        labels = labels.contiguous()
        losses = torch.empty(n_tokens, dtype=torch.float32, device=hidden.device)  # (N,) -log p
        block = min(4096, triton.next_power_of_2(weight.shape[0]))
        precompute = need_grad_hidden and not need_grad_weight
        grad_hidden = torch.empty_like(hidden) if precompute else None  # (N, d) for g = 1
        for start in range(0, n_tokens, chunk_size):
            end = min(start + chunk_size, n_tokens)
            logits = chunk_losses(
                hidden[start:end], weight, labels[start:end], losses[start:end], ignore_index, block, precompute
            )
            if precompute:
                torch.mm(logits, weight, out=grad_hidden[start:end])
            del logits
        ctx.recompute = need_grad_weight
        ctx.args = (ignore_index, chunk_size, block, need_grad_hidden)
        if need_grad_weight:
            ctx.save_for_backward(hidden, weight, labels)
        else:
            ctx.save_for_backward(grad_hidden)
        return -losses

    @staticmethod
    def backward(ctx, grad_output):
        g = grad_output.float().neg()  # (N,) d/d(-log p) = -g
        if not ctx.recompute:
            (grad_hidden,) = ctx.saved_tensors
            if grad_hidden is not None:
                grad_hidden.mul_(g.to(grad_hidden.dtype)[:, None])
            return grad_hidden, None, None, None, None, None, None
        hidden, weight, labels = ctx.saved_tensors
        ignore_index, chunk_size, block, need_grad_hidden = ctx.args
        grad_hidden = torch.empty_like(hidden) if need_grad_hidden else None
        grad_weight = torch.zeros_like(weight)
        scratch = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            end = min(start + chunk_size, hidden.shape[0])
            h = hidden[start:end]
            dlogits = chunk_losses(h, weight, labels[start:end], scratch[start:end], ignore_index, block, True)
            dlogits.mul_(g[start:end, None].to(dlogits.dtype))  # (n, V) = g_i * -(d log p_i / dx_i)
            if need_grad_hidden:
                torch.mm(dlogits, weight, out=grad_hidden[start:end])
            grad_weight.addmm_(dlogits.T, h)
            del dlogits
        return grad_hidden, grad_weight, None, None, None, None, None


def linear_log_probs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """(N,) fp32 log softmax(hidden @ weight.T / temperature)[i, labels[i]], 0 where labels[i] == ignore_index.
    hidden (N, d), weight (V, d). See the module docstring for how the gradients are formed. The temperature
    divides hidden before the op ((h / T) W^T = h W^T / T, and autograd carries the 1 / T into grad hidden; grad W
    is formed from h / T, as it should be); at 1 nothing is divided."""
    if temperature != 1:
        hidden = hidden / temperature
    return apply_fused_head(
        LinearLogProbsFunction, "linear_log_probs", hidden, weight, labels, ignore_index, chunk_size
    )
