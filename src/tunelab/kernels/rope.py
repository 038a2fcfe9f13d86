"""Rotary position embedding in the rotate-half layout, q and k in one Triton launch per direction.

With x = [x1, x2] split in halves of the head dim, c = [c1, c2] = cos and s = [s1, s2] = sin:
    forward   y1 = x1 * c1 - x2 * s1          y2 = x2 * c2 + x1 * s2
    backward  dx1 = dy1 * c1 + dy2 * s2       dx2 = dy2 * c2 - dy1 * s1      (the transposed rotation)
One program handles one token: every head of q and of k, so cos and sin are read once per token. The rotation is
linear in x, so the backward needs only cos and sin: q and k are never saved, and a caller may overwrite them in
place after the call without upsetting autograd (that is what "in place-safe" means here). Outputs are new
tensors; the inputs are never written. Arithmetic is fp32, rounded once on the store, as in `reference.apply_rope`.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _rotate(
    x_ptr, y_ptr, c1, c2, s1, s2, n_heads,
    x_stride_h, y_stride_h, half,
    BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr, BACKWARD: tl.constexpr,
):  # fmt: skip
    """Rotate every head of one token. x_ptr/y_ptr point at the token; c*/s* are (1, BLOCK_HALF) fp32 rows."""
    heads = tl.arange(0, BLOCK_H)[:, None]  # (BLOCK_H, 1)
    dims = tl.arange(0, BLOCK_HALF)[None, :]  # (1, BLOCK_HALF)
    mask = (heads < n_heads) & (dims < half)
    x_first = x_ptr + heads * x_stride_h + dims
    x1 = tl.load(x_first, mask=mask, other=0.0).to(tl.float32)  # (BLOCK_H, BLOCK_HALF)
    x2 = tl.load(x_first + half, mask=mask, other=0.0).to(tl.float32)
    if BACKWARD:
        y1 = x1 * c1 + x2 * s2
        y2 = x2 * c2 - x1 * s1
    else:
        y1 = x1 * c1 - x2 * s1
        y2 = x2 * c2 + x1 * s2
    y_first = y_ptr + heads * y_stride_h + dims
    tl.store(y_first, y1.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(y_first + half, y2.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rope_kernel(
    q_ptr, k_ptr, cos_ptr, sin_ptr, q_out_ptr, k_out_ptr,
    seq_len, n_q_heads, n_k_heads, half,
    q_stride_b, q_stride_t, q_stride_h, k_stride_b, k_stride_t, k_stride_h,
    qo_stride_b, qo_stride_t, qo_stride_h, ko_stride_b, ko_stride_t, ko_stride_h,
    cs_stride_b, cs_stride_t, sn_stride_b, sn_stride_t,
    BLOCK_QH: tl.constexpr, BLOCK_KH: tl.constexpr, BLOCK_HALF: tl.constexpr, BACKWARD: tl.constexpr,
):  # fmt: skip
    token = tl.program_id(0).to(tl.int64)
    b = token // seq_len
    t = token % seq_len
    dims = tl.arange(0, BLOCK_HALF)[None, :]  # (1, BLOCK_HALF)
    dmask = dims < half
    cos_row = cos_ptr + b * cs_stride_b + t * cs_stride_t
    sin_row = sin_ptr + b * sn_stride_b + t * sn_stride_t
    c1 = tl.load(cos_row + dims, mask=dmask, other=0.0).to(tl.float32)
    c2 = tl.load(cos_row + half + dims, mask=dmask, other=0.0).to(tl.float32)
    s1 = tl.load(sin_row + dims, mask=dmask, other=0.0).to(tl.float32)
    s2 = tl.load(sin_row + half + dims, mask=dmask, other=0.0).to(tl.float32)
    _rotate(
        q_ptr + b * q_stride_b + t * q_stride_t, q_out_ptr + b * qo_stride_b + t * qo_stride_t,
        c1, c2, s1, s2, n_q_heads, q_stride_h, qo_stride_h, half, BLOCK_QH, BLOCK_HALF, BACKWARD,
    )  # fmt: skip
    _rotate(
        k_ptr + b * k_stride_b + t * k_stride_t, k_out_ptr + b * ko_stride_b + t * ko_stride_t,
        c1, c2, s1, s2, n_k_heads, k_stride_h, ko_stride_h, half, BLOCK_KH, BLOCK_HALF, BACKWARD,
    )  # fmt: skip


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _rope(q, k, cos, sin, backward: bool, warps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the kernel over (B, T) tokens; q (B, T, H, D), k (B, T, Hk, D), cos/sin (B or 1, T, D)."""
    B, T, H, D = q.shape
    Hk = k.shape[2]
    if D % 2:
        raise ValueError(f"apply_rope: head dim must be even, got {D}")
    q, k, cos, sin = (_unit_last(t) for t in (q, k, cos, sin))
    cos, sin = cos.expand(B, T, D), sin.expand(B, T, D)  # stride 0 over a broadcast batch: no copy
    q_out = torch.empty((B, T, H, D), dtype=q.dtype, device=q.device)
    k_out = torch.empty((B, T, Hk, D), dtype=k.dtype, device=k.device)
    block_half = triton.next_power_of_2(D // 2)
    block_qh, block_kh = triton.next_power_of_2(H), triton.next_power_of_2(Hk)
    warps = warps or (4 if block_qh * block_half <= 2048 else 8)
    if B * T:
        _rope_kernel[(B * T,)](
            q, k, cos, sin, q_out, k_out,
            T, H, Hk, D // 2,
            *q.stride()[:3], *k.stride()[:3], *q_out.stride()[:3], *k_out.stride()[:3],
            *cos.stride()[:2], *sin.stride()[:2],
            BLOCK_QH=block_qh, BLOCK_KH=block_kh, BLOCK_HALF=block_half, BACKWARD=backward, num_warps=warps,
        )  # fmt: skip
    return q_out, k_out


class RopeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, cos, sin):
        q_out, k_out = _rope(q, k, cos, sin, backward=False)
        ctx.save_for_backward(cos, sin)  # not q or k: the backward is linear in dq, dk
        return q_out, k_out

    @staticmethod
    def backward(ctx, dq, dk):
        cos, sin = ctx.saved_tensors
        dq_in, dk_in = _rope(dq, dk, cos, sin, backward=True)
        return dq_in, dk_in, None, None


def apply_rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding in the "rotate half" layout. q (B, T, H, D), k (B, T, Hk, D), cos/sin (B, T, D).

    cos and sin get no gradient (they are buffers computed from positions).
    """
    return RopeFunction.apply(q, k, cos, sin)
