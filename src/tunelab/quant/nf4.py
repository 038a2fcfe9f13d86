"""QLoRA's frozen base: 4-bit NormalFloat (NF4) weights with double-quantized absmaxes, stored as bitsandbytes stores
them, so that `bitsandbytes.functional.dequantize_4bit` and `dequantize_nf4` give the same bits from the same bytes.

The format (bitsandbytes `quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)`):
  - w is flattened and cut into blocks of BLOCK = 64; absmax[b] = max |w| over block b (fp32);
  - each w / absmax[b] is replaced by the index of the nearest of the 16 NF4 values (`NF4_VALUES`): the number of
    thresholds strictly below it. On the CPU the thresholds are the fp32 midpoints of neighbouring values; bitsandbytes'
    CUDA kernel writes them as decimal literals that the compiler rounds straight to fp32, and 4 of the 15 (the
    midpoints that fall on an fp32 tie) land one unit in the last place away (`nf4_cuda_thresholds`);
  - two 4-bit indices per byte, element 2i in the HIGH nibble, 2i+1 in the low one (an odd count pads with index 7,
    the value 0);
  - double quantization: offset = mean(absmax); absmax - offset is quantized blockwise (ABSMAX_BLOCK = 256) to 8 bits
    with bitsandbytes' signed dynamic code (`quant.codes.dynamic_code`), one fp32 absmax2 per 256 block.
  Dequantization, every step an fp32 operation rounded on its own (no fused multiply-add):
      absmax[b] = code8[absmax_q[b]] * absmax2[b // 256] + offset,    w[i] = code4[nibble(i)] * absmax[i // 64],
  then one rounding to the output dtype.

Quantizing is bit-identical to bitsandbytes (0.50) on the same device. bitsandbytes rounds a little differently on
the CPU (4-bit stage: reciprocal then multiply, but a division in a trailing partial block; 8-bit stage: a 65536-bin
lookup table) and on CUDA (kernels built with fast math: an approximate reciprocal then a multiply; the 8-bit code by
binary search and a midpoint test). `quantize_nf4_reference` follows the CPU rules; the Triton kernels of
`quant.nf4_triton` follow the CUDA ones (`quant.nf4_ops.quantize_nf4` picks by device). The two rules pick different
codes only for values very near a decision boundary (4-bit: about an ulp, a few fp32 weights in 10^7; 8-bit: the CPU
table's bins, 3e-5 of absmax2 wide); bytes decode the same way everywhere. A block of zeros is stored as index 7 on
the CPU (decoded as 0) and as index 0 on CUDA (0 * (1 / 0) is NaN and fails every test), decoded as -1.0 times its
absmax as it comes back from 8 bits (about 1e-3 of the weight scale rather than 0), as bitsandbytes does.

This module is the format and its pure-PyTorch reference (the CPU path and the ground truth of the kernels):
`quant.nf4_triton` holds the Triton kernels, `quant.nf4_ops` the switch between the two and the scratch buffer weights
are dequantized into, `quant.linear` the frozen NF4 linear layer.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, replace
from fractions import Fraction

import torch
import torch.nn.functional as F

from tunelab.quant.codes import dynamic_code

BLOCK = 64
"""Weights per 4-bit block (one absmax each)."""
ABSMAX_BLOCK = 256
"""Absmaxes per 8-bit block of the double quantization (one fp32 absmax2 each)."""

# The NF4 table of bitsandbytes (`get_4bit_type("nf4")`): quantiles of N(0, 1) scaled to [-1, 1], 8 negative values,
# zero and 7 positive ones. Index = the 4-bit code.
NF4_VALUES = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
    -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip
ZERO_CODE = 7  # NF4_VALUES[7] == 0.0


def nf4_code(device: torch.device | str | None = None) -> torch.Tensor:
    """The 16 NF4 values, fp32, indexed by code."""
    return torch.tensor(NF4_VALUES, dtype=torch.float32, device=device)


def nf4_midpoints(device: torch.device | str | None = None) -> torch.Tensor:
    """(15,) fp32 midpoints between neighbouring NF4 values, computed in fp32: bitsandbytes' CPU thresholds."""
    code = nf4_code(device)
    return (code[:-1] + code[1:]) / 2


# The thresholds of bitsandbytes' CUDA decision tree (`dQuantizeNF4` in csrc/kernels.cu), as written there.
NF4_CUDA_TREE = (
    "-0.8480964004993439", "-0.6106329262256622", "-0.4599952697753906", "-0.33967943489551544", "-0.23460740596055984",
    "-0.13791173323988914", "-0.045525018125772476", "0.03979014977812767", "0.1202552504837513", "0.2035212516784668",
    "0.2920137718319893", "0.3893125355243683", "0.5016634166240692", "0.6427869200706482", "0.8614784181118011",
)  # fmt: skip


def nf4_cuda_thresholds(device: torch.device | str | None = None) -> torch.Tensor:
    """(15,) fp32: `NF4_CUDA_TREE`, each decimal rounded once to the nearest fp32 as nvcc rounds an `f` literal.

    Reading them through a double first (Python's float) would round twice and give back the fp32 midpoints: the
    literals are 16-digit forms of midpoints that lie exactly between two fp32 values, and 4 of them sit just below or
    above that tie. These values are the constants in bitsandbytes' compiled kernel (its SASS, read with cuobjdump).
    """
    return torch.tensor([_decimal_to_float32(t) for t in NF4_CUDA_TREE], dtype=torch.float32, device=device)


def _decimal_to_float32(text: str) -> float:
    """The fp32 nearest to the decimal `text` (ties to even), rounded once."""
    exact = Fraction(text)
    bits = struct.unpack("<I", struct.pack("<f", float(text)))[0]  # within one unit of the answer

    def value(b: int) -> float:
        return struct.unpack("<f", struct.pack("<I", b))[0]

    return value(min((bits - 1, bits, bits + 1), key=lambda b: (abs(Fraction(value(b)) - exact), b & 1)))


@dataclass
class NF4Weight:
    """One weight matrix in NF4 with double quantization; n = prod(shape), n_blocks = ceil(n / 64)."""

    packed: torch.Tensor
    """(ceil(n / 2),) uint8: two 4-bit codes per byte, element 2i in the high nibble."""
    absmax_q: torch.Tensor
    """(n_blocks,) uint8: index into code8 of (absmax - offset) / absmax2."""
    absmax2: torch.Tensor
    """(ceil(n_blocks / 256),) fp32: the absmax of each 256 block of (absmax - offset)."""
    offset: torch.Tensor
    """() fp32: the mean of the block absmaxes."""
    shape: torch.Size
    """The weight's shape, (out_features, in_features) for a linear layer."""
    dtype: torch.dtype
    """The dtype the weight had: what `dequantize_nf4` returns by default."""
    code4: torch.Tensor
    """(16,) fp32: NF4_VALUES."""
    code8: torch.Tensor
    """(256,) fp32: `dynamic_code()`."""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def n_blocks(self) -> int:
        return self.absmax_q.numel()

    @property
    def device(self) -> torch.device:
        return self.packed.device

    @property
    def nbytes(self) -> int:
        """Bytes of the quantized state (codes, both absmax levels, offset), tables left out."""
        return sum(t.numel() * t.element_size() for t in (self.packed, self.absmax_q, self.absmax2, self.offset))

    def to(self, device: torch.device | str) -> NF4Weight:
        names = ("packed", "absmax_q", "absmax2", "offset", "code4", "code8")
        return replace(self, **{k: getattr(self, k).to(device) for k in names})


# --------------------------------------------------------------------------------------------------------------------
# Quantize and dequantize in plain PyTorch: the CPU path and the reference of the Triton kernels


def quantize_nf4_reference(w: torch.Tensor) -> NF4Weight:
    """`quantize_nf4` in plain PyTorch, rounding as bitsandbytes does on the CPU."""
    flat = w.detach().reshape(-1).float()  # (n,)
    n = flat.numel()
    full = n - n % BLOCK
    blocks = flat[:full].view(-1, BLOCK)  # (full / 64, 64)
    absmax = blocks.abs().amax(dim=1)
    # Reciprocal then multiply; a zero block gets 0 (code 7) through the clamp instead of 0 * inf.
    scaled = (blocks * (1.0 / absmax.clamp(min=1e-38))[:, None]).reshape(-1)
    if full < n:  # a trailing partial block is divided, not multiplied, and its absmax is stored clamped
        tail_max = flat[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, tail_max[None]])
        scaled = torch.cat([scaled, flat[full:] / tail_max])
    codes = torch.bucketize(scaled, nf4_midpoints(w.device), out_int32=True).to(torch.uint8)  # (n,)
    del scaled
    if n % 2:
        codes = F.pad(codes, (0, 1), value=ZERO_CODE)
    packed = (codes[0::2] << 4) | codes[1::2]  # (ceil(n / 2),)
    offset = absmax.mean()
    absmax_q, absmax2 = _quantize_absmax_reference(absmax - offset)
    return NF4Weight(packed, absmax_q, absmax2, offset, w.shape, w.dtype, nf4_code(w.device), dynamic_code(w.device))


def _quantize_absmax_reference(centered: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """8-bit blockwise dynamic quantization of (n_blocks,) fp32, as bitsandbytes' CPU library (0.50) does it.

    Per block of 256: absmax2 = max |v|; x = clamp(v * (1 / absmax2), -1, 1) picks one of 65536 evenly spaced bins of
    [-1, 1], i = trunc(((x + 1) * 0.5) * 65535 + 0.5), and bin i holds the code nearest to -1 + 2i / 65535 (the number
    of code midpoints strictly below it). Near a midpoint this can pick the farther code (by up to 1.5e-5 of absmax2),
    which is why it is followed exactly rather than replaced by the true nearest code. A block of zeros gets code 0.
    """
    code = dynamic_code(centered.device)
    midpoints = 0.5 * (code[:-1] + code[1:])
    grid = -1.0 + (2.0 * torch.arange(65536, dtype=torch.float32, device=centered.device)) / 65535.0
    table = torch.bucketize(grid, midpoints)  # (65536,): number of midpoints strictly below each grid point
    n = centered.numel()
    n_blocks2 = -(-n // ABSMAX_BLOCK)
    blocks = F.pad(centered, (0, n_blocks2 * ABSMAX_BLOCK - n)).view(n_blocks2, ABSMAX_BLOCK)  # zeros: max unchanged
    absmax2 = blocks.abs().amax(dim=1)  # (n_blocks2,)
    x = (blocks * (1.0 / absmax2)[:, None]).clamp(-1.0, 1.0).reshape(-1)[:n]
    bins = (((x + 1.0) * 0.5) * 65535.0 + 0.5).to(torch.int64)  # each step rounded on its own; trunc toward zero
    q = torch.where(torch.isnan(x), 0, table[bins.clamp(0, 65535)])
    return q.to(torch.uint8), absmax2


def block_absmax(q: NF4Weight) -> torch.Tensor:
    """(n_blocks,) fp32: the first-level absmaxes, code8[absmax_q] * absmax2 + offset (a multiply, then an add)."""
    absmax2 = q.absmax2.repeat_interleave(ABSMAX_BLOCK)[: q.n_blocks]
    scaled = q.code8[q.absmax_q.long()] * absmax2
    return scaled + q.offset


def dequantize_nf4(q: NF4Weight, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The weight back in `dtype` (default: the dtype it was quantized from), in plain PyTorch. Shape q.shape."""
    n = q.numel
    codes = torch.stack((q.packed >> 4, q.packed & 0xF), dim=1).view(-1)  # (2 * bytes,): element 2i first
    values = q.code4[codes.long()]  # fp32
    values = F.pad(values, (0, q.n_blocks * BLOCK - values.numel())).view(q.n_blocks, BLOCK)
    w = (values * block_absmax(q)[:, None]).view(-1)[:n]  # fp32 products, rounded once below
    return w.view(q.shape).to(dtype or q.dtype)
