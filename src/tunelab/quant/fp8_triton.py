"""The row-wise FP8 quantization of `quant.fp8` as one Triton kernel: a program per row reads it twice (its absmax,
then the scaled values; a row of up to 16 K bf16 elements stays in L1/L2 between the two reads) and writes the
float8_e4m3fn row and its fp32 scale. Bit-identical to `quant.fp8.quantize_rows_reference`: both divisions are
correctly rounded (`div_rn`), the product is one fp32 multiply, the clamp comes before the one rounding to FP8.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK = 4096  # elements a program reads at a time
WARPS = 4
TILE = 64  # the transposing dequantization's tile: TILE x TILE weights a program


@triton.jit
def _quantize_rows_kernel(x_ptr, q_ptr, scale_ptr, n_cols, x_stride, CHUNK: tl.constexpr, MIN_AMAX: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * x_stride
    q_row = q_ptr + row * n_cols
    cols = tl.arange(0, CHUNK)
    amax = tl.zeros((CHUNK,), tl.float32)
    for start in tl.range(0, n_cols, CHUNK):
        x = tl.load(x_row + start + cols, mask=start + cols < n_cols, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    top = tl.maximum(tl.max(amax, axis=0), MIN_AMAX)
    inv = tl.math.div_rn(448.0, top)
    tl.store(scale_ptr + row, tl.math.div_rn(top, 448.0))
    for start in tl.range(0, n_cols, CHUNK):
        live = start + cols < n_cols
        x = tl.load(x_row + start + cols, mask=live, other=0.0).to(tl.float32)
        v = tl.minimum(tl.maximum(x * inv, -448.0), 448.0)
        tl.store(q_row + start + cols, v.to(q_ptr.dtype.element_ty), mask=live)


def quantize_rows(x: torch.Tensor, min_amax: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K), unit column stride -> (q (M, K) float8_e4m3fn contiguous, scale (M, 1) fp32): x ~ q * scale, a row's
    absmax taken as at least min_amax."""
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"quantize_rows: expected a 2-D tensor with unit column stride, got {tuple(x.shape)}")
    m, k = x.shape
    q = torch.empty(m, k, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty(m, 1, dtype=torch.float32, device=x.device)
    if m:
        _quantize_rows_kernel[(m,)](
            x, q, scale, k, x.stride(0), CHUNK=min(CHUNK, triton.next_power_of_2(k)), MIN_AMAX=min_amax,
            num_warps=WARPS, enable_fp_fusion=False,
        )  # fmt: skip
    return q, scale


@triton.jit
def _dequantize_transposed_kernel(
    packed_ptr, absmax_q_ptr, absmax2_ptr, offset_ptr, code4_ptr, code8_ptr, scale_ptr, out_ptr, n_rows, n_cols,
    out_stride, TILE: tl.constexpr,
):  # fmt: skip
    """W^T (n_cols, n_rows) in FP8 from W (n_rows, n_cols) in NF4, a TILE x TILE tile a program: each weight as
    `nf4_triton._dequantize_words_kernel` makes it (code4 * absmax, times the scale, clamped, rounded once), stored
    transposed, so that stores run along W's rows."""
    rows = tl.program_id(0).to(tl.int64) * TILE + tl.arange(0, TILE)
    cols = tl.program_id(1).to(tl.int64) * TILE + tl.arange(0, TILE)
    live = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    flat = rows[:, None] * n_cols + cols[None, :]  # (TILE, TILE) element indices of W
    byte = tl.load(packed_ptr + flat // 2, mask=live, other=0).to(tl.int32)
    nibble = tl.where(flat % 2 == 0, byte >> 4, byte & 15)  # element 2i is the high nibble
    block = flat // 64
    q8 = tl.load(absmax_q_ptr + block, mask=live, other=0).to(tl.int32)
    absmax2 = tl.load(absmax2_ptr + block // 256, mask=live, other=0.0)
    absmax = tl.load(code8_ptr + q8) * absmax2 + tl.load(offset_ptr)
    v = tl.load(code4_ptr + nibble) * absmax * tl.load(scale_ptr)
    v = tl.minimum(tl.maximum(v, -448.0), 448.0).to(out_ptr.dtype.element_ty)
    # transposed in registers, so that the stores run along the output's rows
    stored = (cols[:, None] < n_cols) & (rows[None, :] < n_rows)
    tl.store(out_ptr + cols[:, None] * out_stride + rows[None, :], tl.trans(v), mask=stored)


def dequantize_transposed(q, scale: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """(in, out) float8_e4m3fn: the NF4 weight q (out, in) times `scale` (a 1-element fp32 tensor), transposed:
    `quant.fp8.weight_fp8_reference(q, scale).T`, bit for bit. Written into `out` when given: an (in, out) view with
    unit column stride (the columns of a wider matrix: a group's stacked weights)."""
    n_rows, n_cols = q.shape
    if out is None:
        out = torch.empty(n_cols, n_rows, dtype=torch.float8_e4m3fn, device=q.packed.device)
    if tuple(out.shape) != (n_cols, n_rows) or out.stride(1) != 1 or out.dtype != torch.float8_e4m3fn:
        raise ValueError(
            f"dequantize_transposed: out must be a ({n_cols}, {n_rows}) float8_e4m3fn view, unit column stride"
        )
    grid = (triton.cdiv(n_rows, TILE), triton.cdiv(n_cols, TILE))
    _dequantize_transposed_kernel[grid](
        q.packed, q.absmax_q, q.absmax2, q.offset, q.code4, q.code8, scale, out, n_rows, n_cols, out.stride(0),
        TILE=TILE, num_warps=WARPS, enable_fp_fusion=False,
    )  # fmt: skip
    return out
