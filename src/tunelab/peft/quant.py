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
    with bitsandbytes' signed dynamic code (`dynamic_code`), one fp32 absmax2 per 256 block.
  Dequantization, every step an fp32 operation rounded on its own (no fused multiply-add):
      absmax[b] = code8[absmax_q[b]] * absmax2[b // 256] + offset,    w[i] = code4[nibble(i)] * absmax[i // 64],
  then one rounding to the output dtype.

Quantizing is bit-identical to bitsandbytes (0.50) on the same device. bitsandbytes rounds a little differently on
the CPU (4-bit stage: reciprocal then multiply, but a division in a trailing partial block; 8-bit stage: a 65536-bin
lookup table) and on CUDA (kernels built with fast math: an approximate reciprocal then a multiply; the 8-bit code by
binary search and a midpoint test). `quantize_nf4_reference` follows the CPU rules; on CUDA `quantize_nf4` runs the
Triton kernels of `tunelab.kernels.nf4`, which follow the CUDA ones. The two rules pick different codes only for values
very near a decision boundary (4-bit: about an ulp, a few fp32 weights in 10^7; 8-bit: the CPU table's bins, 3e-5 of
absmax2 wide); bytes decode the same way everywhere. A block of zeros is stored as index 7 on the CPU (decoded as 0)
and as index 0 on CUDA (0 * (1 / 0) is NaN and fails every test), decoded as -1.0 times its absmax as it comes back
from 8 bits (about 1e-3 of the weight scale rather than 0), as bitsandbytes does.

`NF4Linear` is the frozen leaf module holding such a weight as buffers; it never keeps a 16-bit copy. Its forward
dequantizes into a scratch buffer (`DequantWorkspace`, shared by all layers of a model) and runs one cuBLAS GEMM; its
autograd node (`nf4_linear`) dequantizes again in backward instead of saving the weight, and so does the fused LoRA
node (`kernels.lora`) over an NF4 base, given the weight as a function (`NF4Linear.frozen_weight`).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from fractions import Fraction
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.errors import ConfigError

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


def dynamic_code(device: torch.device | str | None = None) -> torch.Tensor:
    """bitsandbytes' signed 8-bit dynamic code (`create_dynamic_map(signed=True)`), sorted, (256,) fp32.

    For exponent e = 0..6, 2^e + 1 points evenly spaced on [0.1, 1] give 2^e midpoints, scaled by 10^(e - 6) and taken
    with both signs (254 values), plus 0 and 1. Built in fp32 with the same operations as bitsandbytes, on the CPU.
    """
    values: list[float] = [0.0, 1.0]
    for e in range(7):
        edges = torch.linspace(0.1, 1, 2**e + 1, dtype=torch.float32)
        means = (edges[:-1] + edges[1:]) / 2.0
        scaled = (10 ** (e - 6)) * means
        values += scaled.tolist() + (-scaled).tolist()
    values.sort()
    return torch.tensor(values, dtype=torch.float32, device=device)


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
# Quantize and dequantize (pure PyTorch: the CPU path and the reference of the Triton kernels)


def quantize_nf4(w: torch.Tensor) -> NF4Weight:
    """Quantize a float tensor (any shape) to NF4 with double quantization, on w's device.

    On CUDA with Triton: the kernels of `tunelab.kernels.nf4` (bitsandbytes' CUDA rounding, no fp32 copy of w);
    elsewhere `quantize_nf4_reference` (bitsandbytes' CPU rounding).
    """
    if w.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"quantize_nf4: expected a float32/bfloat16/float16 tensor, got {w.dtype}")
    if w.numel() == 0 or w.is_meta:
        raise ValueError(f"quantize_nf4: cannot quantize an empty or meta tensor of shape {tuple(w.shape)}")
    kernels = _triton_kernels() if w.is_cuda else None
    if kernels is not None:
        return kernels.quantize_nf4_triton(w)
    return quantize_nf4_reference(w)


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


def dequantize(q: NF4Weight, dtype: torch.dtype, workspace: DequantWorkspace | None = None) -> torch.Tensor:
    """The weight in `dtype`: the Triton kernel on CUDA (into `workspace` when given), else `dequantize_nf4`."""
    kernels = _triton_kernels() if q.packed.is_cuda else None
    if kernels is None:
        return dequantize_nf4(q, dtype)
    if workspace is not None:
        return workspace.weight(q, dtype)
    return kernels.dequantize_nf4_triton(q, dtype=dtype)


def dequantize_into(q: NF4Weight, out: torch.Tensor) -> torch.Tensor:
    """Write the weight into `out` (q.shape, unit column stride, any row stride), in out's dtype: the Triton kernel
    on CUDA (straight into out's rows), else `dequantize_nf4` and a copy. Returns out."""
    if tuple(out.shape) != tuple(q.shape) or out.stride(-1) != 1:
        raise ValueError(f"dequantize_into: out must have shape {tuple(q.shape)} and unit column stride")
    kernels = _triton_kernels() if q.packed.is_cuda else None
    if kernels is None:
        return out.copy_(dequantize_nf4(q, out.dtype))
    return kernels.dequantize_nf4_triton(q, out=out, dtype=out.dtype)


def _triton_kernels():
    """`tunelab.kernels.nf4`, or None where Triton does not import."""
    try:
        from tunelab.kernels import nf4
    except ImportError:
        return None
    return nf4


class DequantWorkspace:
    """A scratch buffer that NF4 layers dequantize their weight into, so that a model holds one 16-bit weight at a
    time, however many layers it has. Grown to the largest weight seen; reallocated when the dtype or device changes.

    Safe because each use ends before the next starts on the same CUDA stream (dequantize, then the GEMM that reads
    it); do not share one workspace between streams or threads.
    """

    def __init__(self) -> None:
        self._flat: torch.Tensor | None = None
        self._held: tuple | None = None  # what `weight` last left in the buffer

    def get(self, shape: Iterable[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A (shape) view of the buffer for the caller to write; whatever `weight` left there is forgotten."""
        self._held = None
        return self._view(shape, dtype, device)

    def weight(self, q: NF4Weight, dtype: torch.dtype) -> torch.Tensor:
        """q dequantized to `dtype` in the buffer: left as it is when the buffer already holds it from this pass
        (`begin_pass`), as for the down projection in each token chunk of checkpointing's MLP backward."""
        out = self._view(q.shape, dtype, q.device)
        key = (_pass, q.packed.data_ptr(), q.packed._version, out.data_ptr(), tuple(q.shape), dtype)
        if key != self._held:
            self._held = None
            _triton_kernels().dequantize_nf4_triton(q, out=out, dtype=dtype)
            self._held = key
        return out

    def reserve(self, numel: int, dtype: torch.dtype, device: torch.device) -> None:
        """Grow the buffer to `numel` now (before a step's activations), so that it is not grown mid-step, which
        leaves the smaller buffer's block as a hole in the allocator's segments."""
        self._view((numel,), dtype, device)

    def _view(self, shape: Iterable[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        shape = tuple(shape)
        n = math.prod(shape)
        flat = self._flat
        if flat is None or flat.numel() < n or flat.dtype != dtype or flat.device != torch.device(device):
            self._flat = flat = None  # free the old buffer before allocating the new one
            self._flat = flat = torch.empty(n, dtype=dtype, device=device)
        return flat[:n].view(shape)


_pass = 0


def begin_pass() -> None:
    """Start a new forward pass: dequantized or stacked weights kept in buffers before it are stale. The model calls
    this at the top of each forward. Weights change only between passes (an optimizer step, whose fused kernels move
    no version counter), so within one forward and its backward a buffer's content stays valid."""
    global _pass
    _pass += 1


def current_pass() -> int:
    return _pass


# --------------------------------------------------------------------------------------------------------------------
# Autograd nodes: the weight is dequantized in forward and again in backward, never saved


class NF4LinearFunction(torch.autograd.Function):
    """y = x W^T + b with W dequantized from q; saves nothing but references to q (frozen): dx = dy W."""

    @staticmethod
    def forward(ctx, x, bias, q, workspace, output):
        ctx.q, ctx.workspace = q, workspace
        ctx.bias_dtype = None if bias is None else bias.dtype
        if not output:  # recomputation for backward only: the result is never read
            return x.new_empty(*x.shape[:-1], q.shape[0])
        weight = dequantize(q, x.dtype, workspace)  # (out, in)
        return F.linear(x, weight, None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx, dy):
        dx = dbias = None
        if ctx.needs_input_grad[0]:
            dx = dy @ dequantize(ctx.q, dy.dtype, ctx.workspace)  # (..., in)
        if ctx.needs_input_grad[1]:
            dbias = dy.reshape(-1, dy.shape[-1]).sum(0, dtype=torch.float32).to(ctx.bias_dtype)
        return dx, dbias, None, None, None


def nf4_linear(
    x: torch.Tensor,
    q: NF4Weight,
    bias: torch.Tensor | None = None,
    workspace: DequantWorkspace | None = None,
    output: bool = True,
) -> torch.Tensor:
    """x @ W^T (+ b) with W = dequantize(q) in x's dtype. x (..., in) -> (..., out). The weight takes no gradient.
    output=False records the node for backward without computing the result (its values are undefined)."""
    return NF4LinearFunction.apply(x, bias, q, workspace, output)


# --------------------------------------------------------------------------------------------------------------------
# The module, and putting it into a model

_STATE = ("weight_packed", "weight_absmax_q", "weight_absmax2", "weight_offset")
_TABLES = ("nf4_code", "absmax_code")


class NF4Linear(nn.Module):
    """A frozen linear layer whose weight is stored in NF4 (`NF4Weight`), with an optional frozen bias.

    Buffers (in the state dict): weight_packed, weight_absmax_q, weight_absmax2, weight_offset; the two code tables
    travel with `.to()` but are not saved. There is no `.weight`: `dequantized()` builds the 16-bit matrix on request.
    `.to(dtype)`, `.half()` and the like move the quantization state but never cast it (a bf16 absmax2 would lose the
    format); they do cast the bias.
    """

    def __init__(self, q: NF4Weight, bias: torch.Tensor | None = None, workspace: DequantWorkspace | None = None):
        super().__init__()
        if len(q.shape) != 2:
            raise ValueError(f"NF4Linear: expected a 2-D weight, got shape {tuple(q.shape)}")
        self.out_features, self.in_features = q.shape
        self.weight_dtype = q.dtype
        self.register_buffer("weight_packed", q.packed)
        self.register_buffer("weight_absmax_q", q.absmax_q)
        self.register_buffer("weight_absmax2", q.absmax2)
        self.register_buffer("weight_offset", q.offset)
        self.register_buffer("nf4_code", q.code4, persistent=False)
        self.register_buffer("absmax_code", q.code8, persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.workspace = workspace

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, device: torch.device | str | None = None, workspace: DequantWorkspace | None = None
    ) -> NF4Linear:
        """Quantize `linear`'s weight (moved to `device` first, if given); the bias is kept as it is."""
        weight = linear.weight.detach()
        q = quantize_nf4(weight if device is None else weight.to(device))
        bias = None if linear.bias is None else linear.bias.detach().to(q.device)
        return cls(q, bias, workspace)

    def nf4(self) -> NF4Weight:
        """The quantized weight, as views of this module's buffers."""
        return NF4Weight(
            self.weight_packed, self.weight_absmax_q, self.weight_absmax2, self.weight_offset,
            torch.Size((self.out_features, self.in_features)), self.weight_dtype, self.nf4_code, self.absmax_code,
        )  # fmt: skip

    @torch.no_grad()
    def dequantized(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A new (out, in) tensor holding the weight in `dtype` (default: the dtype it was quantized from)."""
        dtype = dtype or self.weight_dtype
        if self.weight_packed.is_cuda:
            return dequantize(self.nf4(), dtype)  # a fresh tensor: no workspace
        return dequantize_nf4(self.nf4(), dtype)

    def frozen_weight(self) -> Callable[[torch.dtype], torch.Tensor]:
        """A function dtype -> the (out, in) weight in that dtype, dequantized on each call (into the workspace on
        CUDA: valid until the workspace's next use), for a node that must not keep the weight (`kernels.lora`)."""
        return partial(dequantize, self.nf4(), workspace=self.workspace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nf4_linear(x, self.nf4(), self.bias, self.workspace)

    def grad_only(self, x: torch.Tensor) -> torch.Tensor:
        """forward's autograd node without its result (uninitialised): for a recomputation whose output is unread."""
        return nf4_linear(x, self.nf4(), self.bias, self.workspace, output=False)

    def _apply(self, fn, recurse=True):
        # Learn where fn sends tensors from an empty probe, move the quantization state there uncast, and let
        # nn.Module apply fn to everything else (the bias) as usual.
        probe = fn(torch.empty(0, device=self.weight_packed.device))
        kept = {name: self._buffers[name] for name in _STATE + _TABLES}
        for name in kept:
            self._buffers[name] = None
        try:
            super()._apply(fn, recurse)
        finally:
            for name, tensor in kept.items():
                self._buffers[name] = tensor.to(probe.device)
        return self

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, nf4"


def quantizable_names(model: nn.Module, skip: Iterable[str] = ("lm_head",)) -> list[str]:
    """Qualified names of the nn.Linear modules `quantize_model_` replaces: all but the output embeddings, the
    adapters (`.lora_`) and those whose last name part is in `skip`."""
    skip = set(skip)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and m is not output and ".lora_" not in f".{name}" and _last(name) not in skip
    ]


def _last(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def quantize_model_(
    model: nn.Module,
    skip: Iterable[str] = ("lm_head",),
    device: torch.device | str | None = None,
    workspace: DequantWorkspace | None = None,
) -> list[str]:
    """Replace every nn.Linear of `model` (but the output head and `skip`) by an NF4Linear, in place, one at a time.

    Each 16-bit weight is dropped as soon as it is quantized, so no more than one extra 16-bit weight exists at any
    moment. With `device`, each weight is moved there to be quantized and its NF4Linear lives there: a model loaded
    in CPU memory then reaches the GPU in NF4, layer by layer (move the remaining modules with `.to(device)` after).
    All the new layers share one DequantWorkspace (a new one unless given). Returns the replaced names.
    """
    names = quantizable_names(model, skip)
    workspace = workspace or DequantWorkspace()
    for name in names:
        linear = model.get_submodule(name)
        if linear.weight.is_meta:
            raise ConfigError(
                f"quantize_model_: {name} is on the meta device (no weights); use materialize_quantized_ to build a "
                "randomly initialised quantized model."
            )
        _swap(model, name, NF4Linear.from_linear(linear, device, workspace))
        del linear  # the module held the last reference to its 16-bit weight
    return names


@torch.no_grad()
def materialize_quantized_(
    model: nn.Module,
    device: torch.device | str,
    init_std: float = 0.02,
    skip: Iterable[str] = ("lm_head",),
    generator: torch.Generator | None = None,
    workspace: DequantWorkspace | None = None,
) -> list[str]:
    """Turn a model built on the meta device into a random-init model on `device` with NF4 linear layers.

    Layer by layer: each meta nn.Linear gets a N(0, init_std) weight in its dtype on `device` (zero bias), which is
    quantized and dropped at once, so a 70B model never exists in 16 bits. The other modules (embeddings, norms, the
    head) are then allocated and initialised by the model's `init_weights(std=init_std)` when it has one (ours:
    N(0, std) matrices, unit norms), else nn.Linear / nn.Embedding get N(0, init_std) and the rest stays
    uninitialised. Returns the quantized names.
    """
    names = [n for n in quantizable_names(model, skip) if model.get_submodule(n).weight.is_meta]
    workspace = workspace or DequantWorkspace()
    for name in names:
        meta = model.get_submodule(name)
        weight = torch.empty(meta.weight.shape, dtype=meta.weight.dtype, device=device)
        weight.normal_(0.0, init_std, generator=generator)
        bias = None if meta.bias is None else torch.zeros(meta.bias.shape, dtype=meta.bias.dtype, device=device)
        q = quantize_nf4(weight)
        del weight
        _swap(model, name, NF4Linear(q, bias, workspace))
    for module in model.modules():
        own = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        if any(t.is_meta for t in own):
            module.to_empty(device=device, recurse=False)
    if hasattr(model, "init_weights"):
        model.init_weights(std=init_std)
    else:
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, init_std, generator=generator)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
    return names
