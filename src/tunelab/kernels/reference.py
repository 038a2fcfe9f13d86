"""Pure-PyTorch reference implementations of every fused op.

Each function here has the same signature as its Triton counterpart in `kernels/<op>.py`. They are the CPU path,
and the ground truth the kernel tests compare against. Shapes follow the model: (B, T, H, D) for heads, with
packed sequences given as `cu_seqlens` (cumulative lengths, int32, starting at 0) over a batch of one row.
"""

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from tunelab.kernels.head_chunk import head_chunk_tokens


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, spare_columns: int = 0, with_residual: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in fp32 and cast back to x's dtype.

    with_residual: returns (y, x), x for the residual stream (the fused kernel adds that use's gradient in its
    backward; here autograd sums the two uses).

    spare_columns > 0: y (..., D) is the first D columns of a new (..., D + spare_columns) buffer whose last columns
    nothing else reads or writes: room for a consumer to write next to y (`models.slots`)."""
    x32 = x.float()
    y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    y = (y * weight.float()).to(x.dtype)
    if spare_columns:
        # Out of place (cat, then a slice), so that autograd sees no in-place write into a view.
        y = torch.cat((y, y.new_empty(*y.shape[:-1], spare_columns)), dim=-1)[..., : y.shape[-1]]
    return (y, x) if with_residual else y


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding in the "rotate half" layout. q (B, T, H, D), k (B, T, Hk, D), cos/sin (B, T, D)."""
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # (B, T, 1, D): broadcast over heads
    q_out = (q.float() * cos + _rotate_half(q.float()) * sin).to(q.dtype)
    k_out = (k.float() * cos + _rotate_half(k.float()) * sin).to(k.dtype)
    return q_out, k_out


def swiglu(gate: torch.Tensor, up: torch.Tensor, reuse_inputs: bool = False) -> torch.Tensor:
    """silu(gate) * up, the gated MLP activation. reuse_inputs=True lets a fused version overwrite gate and up with
    their gradients in backward (the caller promises nothing else reads them); here it changes nothing."""
    return (F.silu(gate.float()) * up.float()).to(gate.dtype)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    max_seqlen: int | None = None,
) -> torch.Tensor:
    """Causal attention. q (B, T, H, D), k/v (B, T, Hk, D) with H a multiple of Hk (grouped-query). Returns (B, T, H, D).

    `cu_seqlens` (packing, B == 1): tokens attend only within their own document; positions past the last boundary
    form one more. `attention_mask` (B, T) of 1/0 marks real tokens of a right-padded batch; padded positions only need
    to produce finite values. `max_seqlen`: the longest document, for kernels that need it on the host (see
    `document_bounds`); unused here.
    """
    B, T, H, D = q.shape
    groups = H // k.shape[2]
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
    if groups > 1:
        kh = kh.repeat_interleave(groups, dim=1)
        vh = vh.repeat_interleave(groups, dim=1)
    if cu_seqlens is None and attention_mask is None:
        out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)
        return out.transpose(1, 2)
    allowed = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()  # (T, T) causal
    if cu_seqlens is not None:
        doc = document_ids(cu_seqlens, T)  # (T,)
        allowed = allowed & (doc[:, None] == doc[None, :])
        mask = allowed[None, None]
    else:
        keep = attention_mask.bool()  # (B, T)
        # A padded query row would see nothing; let it see itself so softmax stays finite.
        mask = (allowed[None] & keep[:, None, :]) | torch.eye(T, dtype=torch.bool, device=q.device)[None]
        mask = mask[:, None]  # (B, 1, T, T)
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)
    return out.transpose(1, 2)


def document_bounds(cu_seqlens: torch.Tensor, total: int) -> tuple[torch.Tensor, int]:
    """cu_seqlens with the positions past its last boundary (up to `total`) as one more document, on cu_seqlens'
    device, and the longest document as a Python int: read from the device once (a sync on CUDA), so that a packed
    forward can hand both to every layer's attention instead of each layer reading them again."""
    bounds = [int(b) for b in cu_seqlens.tolist()]
    if bounds[-1] < total:
        bounds.append(total)  # trailing positions: one more document, attending among themselves
    longest = max((b - a for a, b in zip(bounds, bounds[1:])), default=0)
    return torch.tensor(bounds, dtype=torch.int32).to(cu_seqlens.device, non_blocking=True), longest


def document_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """(total,) index of the document each packed position belongs to; positions past the last boundary get -1."""
    positions = torch.arange(total, device=cu_seqlens.device)
    doc = torch.searchsorted(cu_seqlens[1:].to(positions.dtype), positions, right=True)
    return torch.where(positions < cu_seqlens[-1], doc, torch.full_like(doc, -1))


def _some_rows_labelled(hidden: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor | None:
    """On the CPU, the (N,) mask of the rows with a label when some have one and some not (only they need the head);
    None otherwise: every row goes through (see `linear_cross_entropy` for why not on the GPU, nor with none)."""
    if hidden.device.type != "cpu":
        return None
    keep = labels != ignore_index
    return keep if keep.any() and not keep.all() else None


def _chunk_logits(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_size: int | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The fp32 logits (n, V) of the head and the labels (n,) of each chunk of `chunk_size` rows of hidden (N, d), in
    turn (None: `head_chunk_tokens` of the vocabulary): the chunking both LM-head references share."""
    chunk_size = head_chunk_tokens(weight.shape[0]) if chunk_size is None else chunk_size
    for start in range(0, hidden.shape[0], chunk_size):
        logits = (hidden[start : start + chunk_size] @ weight.T).float()  # (n, V)
        yield logits, labels[start : start + chunk_size]


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Sum over tokens of cross-entropy(hidden @ weight.T, labels), skipping `ignore_index`. hidden (N, d), weight (V, d).

    Returns the summed loss (fp32 scalar); the caller divides by the token count of the whole optimizer step.
    Works chunk by chunk over N so that only (chunk_size, V) logits exist at a time; the reference keeps autograd's
    saved logits per chunk, so it saves time over memory only in the forward. The Triton version never stores them.
    On the CPU only the rows that carry a loss go through the head: prompts and padding are often most of a batch
    (an ignored row adds 0 to the sum and gets a zero gradient either way). Elsewhere N stays as given, so that a
    CUDA graph replays fixed shapes; and so it does for a batch with no loss at all (a rank's blank micro-batch),
    whose zero gradients must still reach every parameter.
    """
    keep = _some_rows_labelled(hidden, labels, ignore_index)
    if keep is not None:
        hidden, labels = hidden[keep], labels[keep]
    total = hidden.new_zeros((), dtype=torch.float32)
    for logits, y in _chunk_logits(hidden, weight, labels, chunk_size):
        total = total + F.cross_entropy(logits, y, ignore_index=ignore_index, reduction="sum")
    return total


def linear_log_probs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """(N,) fp32 log softmax(hidden @ weight.T / temperature)[i, labels[i]] (0 where labels[i] == ignore_index).
    hidden (N, d), weight (V, d). Chunked over N like `linear_cross_entropy`; autograd keeps each chunk's logits for
    backward. On the CPU only the rows with a label go through the head (as in `linear_cross_entropy`), the others
    get their 0 without it. The temperature divides hidden (as the Triton op does: the same numbers); at 1 nothing
    is divided."""
    if temperature != 1:
        hidden = hidden / temperature
    keep = _some_rows_labelled(hidden, labels, ignore_index)
    if keep is not None:
        kept = linear_log_probs(hidden[keep], weight, labels[keep], ignore_index, chunk_size)
        return hidden.new_zeros(labels.shape[0], dtype=torch.float32).masked_scatter(keep, kept)
    parts = [hidden.new_zeros(0, dtype=torch.float32)]
    for logits, y in _chunk_logits(hidden, weight, labels, chunk_size):
        parts.append(-F.cross_entropy(logits, y, ignore_index=ignore_index, reduction="none"))
    return torch.cat(parts)


def dropout_keep_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """(..., in) bool mask of the elements dropout keeps (each with probability 1 - p).

    Drawn straight into a bool tensor (no fp32 uniform temporary), and by this one function, so that `lora_linear`
    here and its fused twin draw the same mask from the same seed and can be compared with dropout on.
    """
    return torch.empty(x.shape, dtype=torch.bool, device=x.device).bernoulli_(1.0 - p)


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scale: float,
    dropout_p: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """x @ W^T (+ b) + scale * (dropout(x) @ A^T) @ B^T. x (..., in), W (out, in), A (r, in), B (out, r).

    The adapter runs in x's dtype (A and B are cast, so fp32 adapters over a bf16 base work); dropout touches only
    the adapter's input, as in PEFT, and only when `training` and `dropout_p > 0`.
    """
    base = F.linear(x, weight, bias)
    dropped = x
    if training and dropout_p > 0:
        dropped = x * dropout_keep_mask(x, dropout_p) / (1.0 - dropout_p)
    update = F.linear(F.linear(dropped, lora_a.to(x.dtype)), lora_b.to(x.dtype))  # (..., r) then (..., out)
    return base + scale * update
