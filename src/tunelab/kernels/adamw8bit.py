"""The 8-bit AdamW step (`tunelab.training.adamw8bit`) as one Triton kernel per parameter: dequantize both moments,
update them and the parameter in fp32, requantize, one program per block of 256 elements.

Per element it reads the parameter and the gradient (4 + 4 bytes for fp32) and two code bytes, and writes the
parameter and two code bytes; per block two fp32 absmaxes each way. The moments never exist in fp32 outside
registers. The nearest code is found by a branchless binary search over the sorted 256-entry table (8 probes: the
count of codes below x), then the nearer of that code and the one below it, ties to the lower: the rule of
`nearest_code`. The tables are 1 KiB each and the probes come through L1.

The kernel runs with fp fusion off, a correctly rounded division and square root, so every operation rounds as the
PyTorch reference's does on the CPU; `adamw8bit_update_reference` is the ground truth and the fallback.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 256  # tunelab.training.adamw8bit.BLOCK (not imported: that module must not depend on this one)


@triton.jit
def _nearest(x, code_ptr):
    """Index (int32) of the code nearest to each x: hi = count of codes < x (8 halvings), then hi or hi - 1."""
    hi = tl.zeros(x.shape, tl.int32)
    for i in tl.static_range(8):
        half = 128 >> i
        hi = tl.where(tl.load(code_ptr + hi + (half - 1)) < x, hi + half, hi)
    lo = tl.maximum(hi - 1, 0)
    return tl.where(tl.load(code_ptr + hi) - x < x - tl.load(code_ptr + lo), hi, lo)


@triton.jit
def _requantize(x, q_ptr, absmax_ptr, code_ptr, block, offs, live):
    """Store x's block absmax and the nearest code of each x / absmax (a zero block: the code of 0)."""
    absmax = tl.max(tl.abs(x), axis=0)
    tl.store(absmax_ptr + block, absmax)
    scaled = tl.math.div_rn(x, tl.zeros_like(x) + tl.where(absmax > 0, absmax, 1.0))
    tl.store(q_ptr + offs, _nearest(scaled, code_ptr).to(tl.uint8), mask=live)


@triton.jit
def _adamw8bit_kernel(
    p_ptr, g_ptr, m_q_ptr, m_absmax_ptr, v_q_ptr, v_absmax_ptr, signed_ptr, unsigned_ptr, n,
    beta1, one_minus_beta1, beta2, one_minus_beta2, decay, step_size, bc2_sqrt, eps, BLOCK: tl.constexpr,
):  # fmt: skip
    block = tl.program_id(0).to(tl.int64)
    offs = block * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,)
    live = offs < n
    g = tl.load(g_ptr + offs, mask=live, other=0.0).to(tl.float32)
    p = tl.load(p_ptr + offs, mask=live, other=0.0).to(tl.float32)
    m_q = tl.load(m_q_ptr + offs, mask=live, other=0).to(tl.int32)
    v_q = tl.load(v_q_ptr + offs, mask=live, other=0).to(tl.int32)
    m = tl.load(signed_ptr + m_q) * tl.load(m_absmax_ptr + block)
    v = tl.load(unsigned_ptr + v_q) * tl.load(v_absmax_ptr + block)
    m = beta1 * m + one_minus_beta1 * g
    v = beta2 * v + one_minus_beta2 * (g * g)
    p = p * decay
    denom = tl.math.div_rn(tl.sqrt_rn(v), tl.zeros_like(v) + bc2_sqrt) + eps
    p = p - step_size * tl.math.div_rn(m, denom)
    tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=live)  # bf16: rounds to nearest even
    # Lanes past n hold the decoded code of their padding: zero them so that they change no absmax.
    _requantize(tl.where(live, m, 0.0), m_q_ptr, m_absmax_ptr, signed_ptr, block, offs, live)
    _requantize(tl.where(live, v, 0.0), v_q_ptr, v_absmax_ptr, unsigned_ptr, block, offs, live)


def adamw8bit_update(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg_q: torch.Tensor,
    exp_avg_absmax: torch.Tensor,
    exp_avg_sq_q: torch.Tensor,
    exp_avg_sq_absmax: torch.Tensor,
    signed_code: torch.Tensor,
    unsigned_code: torch.Tensor,
    scalars: dict[str, float],
    num_warps: int = 4,
) -> None:
    """`tunelab.training.adamw8bit.adamw8bit_update_reference` in one kernel: same arguments, same in-place result.

    param and grad contiguous (fp32 or bf16), all tensors on one device.
    """
    n = param.numel()
    n_blocks = triton.cdiv(n, BLOCK)
    if not (param.is_contiguous() and grad.is_contiguous()) or exp_avg_q.numel() != n or exp_avg_absmax.numel() != n_blocks:
        raise ValueError(
            f"adamw8bit_update: param and grad must be contiguous with codes ({n},) and absmaxes ({n_blocks},); got "
            f"codes {tuple(exp_avg_q.shape)}, absmaxes {tuple(exp_avg_absmax.shape)}"
        )
    _adamw8bit_kernel[(n_blocks,)](
        param, grad, exp_avg_q, exp_avg_absmax, exp_avg_sq_q, exp_avg_sq_absmax, signed_code, unsigned_code, n,
        scalars["beta1"], scalars["one_minus_beta1"], scalars["beta2"], scalars["one_minus_beta2"], scalars["decay"],
        scalars["step_size"], scalars["bc2_sqrt"], scalars["eps"], BLOCK=BLOCK, num_warps=num_warps,
        enable_fp_fusion=False,
    )  # fmt: skip
