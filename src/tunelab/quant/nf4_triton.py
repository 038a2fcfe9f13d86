"""NF4 weights with double quantization on the GPU (the format of `quant.nf4`): Triton kernels that
dequantize a whole weight in one pass, and that quantize one bit for bit as bitsandbytes' CUDA kernels do.

Dequantize: the word kernel gives each lane a 32-bit word of codes (8 weights): one load of the codes, one absmax for
the 8 (a 64-block is 8 words: absmax = code8[absmax_q] * absmax2 + offset), w = code4[nibble] * absmax, rounded once
to the output dtype, and one 16-byte store. Weight counts or row widths not divisible by 8 take the lane-per-weight
kernel. DRAM traffic: 0.5 byte in and 2 (bf16) out per weight, plus 1.06 bytes per 64. On an H200, timed from CUDA
graphs (`benchmarks/dequant_bench.py`; a launch from Python takes longer than the kernel), 11008 x 4096 to bf16 takes
33.7 us (3.35 TB/s by that count) and 4096 x 4096 11.9 us (3.54 TB/s), against 36.7 and 14.1 us for the
lane-per-weight kernel; bitsandbytes' dequantize_4bit runs three kernels.
Kernels run with fp fusion off: bitsandbytes multiplies, rounds, then adds the offset, and an FMA would round once
and differ in the last bit.

Quantize follows bitsandbytes' CUDA kernels, which are built with fast math: the block absmax is inverted with the
approximate reciprocal (`rcp.approx.ftz.f32`: their SASS is MUFU.RCP then FMUL) and multiplied in; the NF4 code is
the number of their decision tree's thresholds strictly below (`nf4_cuda_thresholds`); the 8-bit absmax code is their
binary search over the sorted dynamic code followed by a midpoint test. A zero block gives 0 * inf = NaN, which
every comparison rejects: code 0 (-1.0), as there. Pass `approx_reciprocal=False` for a correctly rounded
1 / absmax (Triton's interpreter has no PTX).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tunelab.quant.codes import dynamic_code
from tunelab.quant.nf4 import ABSMAX_BLOCK, BLOCK, NF4Weight, nf4_code, nf4_cuda_thresholds

DEQUANT_BLOCK = 4096  # weights per program (fastest of 1024..8192 x 4 or 8 warps on an H200)
DEQUANT_WARPS = 4
QUANT_BLOCKS = 32
FP8_MAX = tl.constexpr(448.0)  # float8_e4m3fn's largest finite value


@triton.jit
def _absmax_of(absmax_q_ptr, absmax2_ptr, offset_ptr, code8_ptr, block, live):
    """The first-level absmax of 64-block `block`: code8[q] * absmax2 + offset, two roundings (fp fusion is off)."""
    q8 = tl.load(absmax_q_ptr + block, mask=live, other=0).to(tl.int32)
    absmax2 = tl.load(absmax2_ptr + block // 256, mask=live, other=0.0)
    return tl.load(code8_ptr + q8) * absmax2 + tl.load(offset_ptr)


@triton.jit
def _dequantize_kernel(
    packed_ptr, absmax_q_ptr, absmax2_ptr, offset_ptr, code4_ptr, code8_ptr, out_ptr, n, out_row_stride,
    N_COLS: tl.constexpr, STRIDED: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < n
    byte = tl.load(packed_ptr + offs // 2, mask=live, other=0).to(tl.int32)
    nibble = tl.where(offs % 2 == 0, byte >> 4, byte & 15)  # element 2i is the high nibble
    absmax = _absmax_of(absmax_q_ptr, absmax2_ptr, offset_ptr, code8_ptr, offs // 64, live)
    w = tl.load(code4_ptr + nibble) * absmax
    if STRIDED:  # rows of N_COLS weights, out_row_stride apart (a constant divisor: a multiply and a shift)
        dest = (offs // N_COLS) * out_row_stride + offs % N_COLS
    else:
        dest = offs
    tl.store(out_ptr + dest, w.to(out_ptr.dtype.element_ty), mask=live)  # rounds to nearest even


@triton.jit
def _dequantize_words_kernel(
    words_ptr, absmax_q_ptr, absmax2_ptr, offset_ptr, code4_ptr, code8_ptr, out_ptr, n_words, out_row_stride,
    scale_ptr, N_COLS: tl.constexpr, STRIDED: tl.constexpr, WORDS: tl.constexpr, SCALED: tl.constexpr,
):  # fmt: skip
    """As `_dequantize_kernel`, a lane per 32-bit word of codes: 8 weights from one load, one absmax for them (a
    64-block is 8 words), one 16-byte store. Needs n % 8 == 0 and, strided, N_COLS % 8 == 0 (a word's weights then
    lie in one row). SCALED (an FP8 output): each weight is multiplied by the fp32 at scale_ptr and clamped to the
    format's largest finite value before the one rounding to the output dtype."""
    w = tl.program_id(0).to(tl.int64) * WORDS + tl.arange(0, WORDS)  # (WORDS,)
    live = w < n_words
    word = tl.load(words_ptr + w, mask=live, other=0)  # int32: bytes 4w..4w+3, little-endian
    j = tl.arange(0, 8)
    shift = 8 * (j // 2) + 4 * (1 - j % 2)  # weight 2i is byte i's high nibble
    nibble = (word[:, None] >> shift[None, :]) & 15  # (WORDS, 8)
    absmax = _absmax_of(absmax_q_ptr, absmax2_ptr, offset_ptr, code8_ptr, w // 8, live)  # (WORDS,)
    v = tl.load(code4_ptr + nibble) * absmax[:, None]
    if SCALED:
        v = v * tl.load(scale_ptr)
        v = tl.minimum(tl.maximum(v, -FP8_MAX), FP8_MAX)
    first = w * 8  # the word's first weight
    if STRIDED:
        start = (first // N_COLS) * out_row_stride + first % N_COLS
    else:
        start = first
    start = tl.multiple_of(start, 8)
    tl.store(out_ptr + start[:, None] + j[None, :], v.to(out_ptr.dtype.element_ty), mask=live[:, None])


@triton.jit
def _reciprocal(x, APPROX: tl.constexpr):
    if APPROX:
        return tl.inline_asm_elementwise(
            "rcp.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        return tl.math.div_rn(tl.full(x.shape, 1.0, tl.float32), x)


@triton.jit
def _quantize_kernel(
    w_ptr, threshold_ptr, packed_ptr, absmax_ptr, n, n_blocks, BLOCKS: tl.constexpr, APPROX: tl.constexpr,
):  # fmt: skip
    blocks = tl.program_id(0).to(tl.int64) * BLOCKS + tl.arange(0, BLOCKS)  # (BLOCKS,)
    elem = blocks[:, None] * 64 + tl.arange(0, 64)[None, :]  # (BLOCKS, 64)
    x = tl.load(w_ptr + elem, mask=elem < n, other=0.0).to(tl.float32)  # padding 0: code 7, as bitsandbytes pads
    absmax = tl.max(tl.abs(x), axis=1)
    tl.store(absmax_ptr + blocks, absmax, mask=blocks < n_blocks)
    scaled = x * _reciprocal(absmax, APPROX)[:, None]
    code = tl.zeros((BLOCKS, 64), dtype=tl.int32)
    for k in tl.static_range(15):  # code = number of thresholds strictly below (bitsandbytes' tree of x > t tests)
        code += (scaled > tl.load(threshold_ptr + k)).to(tl.int32)
    high, low = tl.split(code.reshape(BLOCKS, 32, 2))
    byte = blocks[:, None] * 32 + tl.arange(0, 32)[None, :]
    tl.store(packed_ptr + byte, ((high << 4) | low).to(tl.uint8), mask=byte < (n + 1) // 2)


@triton.jit
def _quantize_absmax_kernel(centered_ptr, code_ptr, q_ptr, absmax2_ptr, n, APPROX: tl.constexpr):
    """One program per 256 block of (absmax - offset): absmax2, then bitsandbytes' `dQuantize<0>` on v / absmax2."""
    offs = tl.program_id(0) * 256 + tl.arange(0, 256)
    live = offs < n
    v = tl.load(centered_ptr + offs, mask=live, other=0.0)
    absmax2 = tl.max(tl.abs(v), axis=0)
    tl.store(absmax2_ptr + tl.program_id(0), absmax2)
    x = v * _reciprocal(tl.zeros((256,), tl.float32) + absmax2, APPROX)
    # Binary search: 7 halvings from index 127; `lower`/`upper` track the last codes seen below / at-or-above x.
    pivot = tl.full((256,), 127, tl.int32)
    lower_pivot = tl.zeros((256,), tl.int32)
    upper_pivot = tl.full((256,), 255, tl.int32)
    lower = tl.full((256,), -1.0, tl.float32)
    upper = tl.full((256,), 1.0, tl.float32)
    val = tl.load(code_ptr + pivot)
    for i in tl.static_range(7):
        up = x > val
        lower_pivot = tl.where(up, pivot, lower_pivot)
        lower = tl.where(up, val, lower)
        upper_pivot = tl.where(up, upper_pivot, pivot)
        upper = tl.where(up, upper, val)
        pivot = tl.where(up, pivot + (64 >> i), pivot - (64 >> i))
        val = tl.load(code_ptr + pivot)
    upper = tl.where(upper_pivot == 255, tl.load(code_ptr + 255), upper)
    lower = tl.where(lower_pivot == 0, tl.load(code_ptr), lower)
    # The nearer of pivot and its neighbour on x's side; a tie stays on the pivot.
    above = tl.where(x > (upper + val) * 0.5, upper_pivot, pivot)
    below = tl.where(x < (lower + val) * 0.5, lower_pivot, pivot)
    q = tl.where(x > val, above, below)
    tl.store(q_ptr + offs, q.to(tl.uint8), mask=live)


def dequantize_nf4_triton(
    q: NF4Weight,
    out: torch.Tensor | None = None,
    dtype: torch.dtype = torch.bfloat16,
    block: int = DEQUANT_BLOCK,
    num_warps: int = DEQUANT_WARPS,
    words: bool = True,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """The weight of `q` in `dtype` (or in `out`'s dtype, written into `out`), shape q.shape, in one kernel.

    `out` may be contiguous with q's element count, or a 2-D (rows, cols) = q.shape view with unit column stride and
    any row stride (the rows of a wider matrix). Bit-identical to `quant.nf4.dequantize_nf4` and to
    bitsandbytes' `dequantize_4bit`. `words` takes the word kernel (8 weights a lane) where the layout allows it (a
    weight count and a row width divisible by 8: every Llama-family matrix), else the lane-per-weight one.
    `scale` (a 1-element fp32 tensor; FP8 outputs, `quant.fp8`): the weight times scale, clamped to +-448, rounded
    once to float8_e4m3fn; the word kernel only.
    """
    if out is None:
        out = torch.empty(q.shape, dtype=dtype, device=q.device)
    strided = not out.is_contiguous()
    if out.numel() != q.numel or (
        strided and (tuple(out.shape) != tuple(q.shape) or out.dim() != 2 or out.stride(1) != 1)
    ):
        shape, strides = tuple(out.shape), out.stride()
        raise ValueError(
            f"dequantize_nf4_triton: out must be contiguous with {q.numel} elements, or {tuple(q.shape)} with unit "
            f"column stride; got shape {shape}, strides {strides}"
        )
    n_cols = out.shape[1] if strided else 1
    row_stride = out.stride(0) if strided else 0
    # The word kernel stores 8 weights at once at element offsets it declares multiples of 8 (`tl.multiple_of`), so
    # every row must start 8 elements apart from the last and the buffer must start 16-byte aligned: a stacked group
    # matrix whose ranks sum to 12 has rows 64 + 12 = 76 wide, and 16-byte stores there fault (misaligned address).
    aligned = out.data_ptr() % 16 == 0 and (not strided or (n_cols % 8 == 0 and row_stride % 8 == 0))
    words_fit = words and q.numel % 8 == 0 and aligned and q.packed.data_ptr() % 4 == 0
    if scale is not None and not (words_fit and out.dtype == torch.float8_e4m3fn):
        raise ValueError(
            "dequantize_nf4_triton: a scaled (FP8) output needs float8_e4m3fn and the word kernel's layout"
        )
    if words_fit:
        _dequantize_words_kernel[(triton.cdiv(q.numel // 8, block // 8),)](
            q.packed.view(torch.int32), q.absmax_q, q.absmax2, q.offset, q.code4, q.code8, out, q.numel // 8,
            row_stride, q.offset if scale is None else scale, N_COLS=n_cols, STRIDED=strided, WORDS=block // 8,
            SCALED=scale is not None, num_warps=num_warps, enable_fp_fusion=False,
        )  # fmt: skip
        return out
    _dequantize_kernel[(triton.cdiv(q.numel, block),)](
        q.packed, q.absmax_q, q.absmax2, q.offset, q.code4, q.code8, out, q.numel, row_stride,
        N_COLS=n_cols, STRIDED=strided, BLOCK=block, num_warps=num_warps,
        enable_fp_fusion=False,
    )  # fmt: skip
    return out


def quantize_blocks_triton(
    w: torch.Tensor, approx_reciprocal: bool = True, thresholds: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 4-bit stage: packed codes ((n + 1) // 2,) uint8 and block absmaxes (ceil(n / 64),) fp32 of flattened w.

    `thresholds` (15,) fp32 defaults to bitsandbytes' CUDA ones; `nf4_midpoints()` gives its CPU rule instead.
    """
    flat = w.detach().contiguous().view(-1)
    n = flat.numel()
    n_blocks = triton.cdiv(n, BLOCK)
    packed = torch.empty((n + 1) // 2, dtype=torch.uint8, device=w.device)
    absmax = torch.empty(n_blocks, dtype=torch.float32, device=w.device)
    _quantize_kernel[(triton.cdiv(n_blocks, QUANT_BLOCKS),)](
        flat, nf4_cuda_thresholds(w.device) if thresholds is None else thresholds.to(w.device), packed, absmax, n,
        n_blocks, BLOCKS=QUANT_BLOCKS, APPROX=approx_reciprocal,
        enable_fp_fusion=False,
    )  # fmt: skip
    return packed, absmax


def quantize_absmax_triton(
    centered: torch.Tensor, code8: torch.Tensor, approx_reciprocal: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8-bit stage on (n,) fp32 absmax - offset: codes (n,) uint8 and absmax2 (ceil(n / 256),) fp32."""
    n = centered.numel()
    absmax_q = torch.empty(n, dtype=torch.uint8, device=centered.device)
    absmax2 = torch.empty(triton.cdiv(n, ABSMAX_BLOCK), dtype=torch.float32, device=centered.device)
    _quantize_absmax_kernel[(absmax2.numel(),)](
        centered.contiguous(), code8, absmax_q, absmax2, n, APPROX=approx_reciprocal, enable_fp_fusion=False
    )
    return absmax_q, absmax2


def quantize_nf4_triton(w: torch.Tensor, approx_reciprocal: bool | None = None) -> NF4Weight:
    """Quantize `w` (fp32/bf16/fp16, any shape) on its device; bit-identical to bitsandbytes' CUDA `quantize_4bit`
    with blocksize 64, nf4 and compress_statistics. `approx_reciprocal` defaults to True on CUDA."""
    approx = w.is_cuda if approx_reciprocal is None else approx_reciprocal
    packed, absmax = quantize_blocks_triton(w, approx)
    offset = absmax.mean()  # torch's reduction on this device, as bitsandbytes computes it
    code8 = dynamic_code(w.device)
    absmax_q, absmax2 = quantize_absmax_triton(absmax - offset, code8, approx)
    return NF4Weight(packed, absmax_q, absmax2, offset, w.shape, w.dtype, nf4_code(w.device), code8)
