"""FP8 products for a frozen NF4 base (`train.fp8`): the two GEMMs that read the base weight, y = x W^T in forward
and dx = dy W in backward, run on FP8 tensor cores (float8_e4m3fn operands, bf16 results, fp32 accumulation).

On an H100 a 7B layer's base GEMMs take 1.55x less time in FP8 than in bf16 (`benchmarks/fp8_gemm.py`, BENCHMARKS
2026-12-06), and they are most of a QLoRA step. What stays in 16 or 32 bits: the adapters (A, B, their products and
gradients), norms, attention, the loss, the optimizer.

Scaling. The weight: one scale for the whole matrix, s_w = max|W| / 448, found once from the NF4 block absmaxes (an
NF4 code lies in [-1, 1], so max|W| is the largest absmax); the codes are dequantized straight to FP8
(`quant.nf4_triton`, the word kernel with a scale: 1.5 bytes of traffic a weight instead of 2.5 to bf16). The
activations and the output gradients: one scale per row (token), s = max|row| / 448, by one Triton kernel
(`quant.fp8_triton.quantize_rows`). `torch._scaled_mm` takes row-wise scales for both operands, the weight's as a
(1, N) vector filled with s_w. Backward needs W, not W^T, as the column-major operand: a second kernel dequantizes
the codes straight into the transposed layout (`quant.fp8_triton.dequantize_transposed`).

Memory. Every FP8 weight on CUDA, straight or transposed, is written into one buffer (`SCRATCH`), grown to the
largest (a q/k/v or gate/up stack) before the first step: a model holds one FP8 weight at a time. Fresh tensors of
the four sizes a layer has, allocated and freed at each use among the step's activations, split the allocator's
cached blocks: at 7B, micro-batch 2 without checkpointing, 1.28 GiB reserved above the allocated peak instead of
0.16 (BENCHMARKS 2026-12-06).

Off CUDA the same arithmetic runs in plain torch (`*_reference`): FP8 values and scales bit-identical to the kernels,
the product in fp32. That is for tests; `train.fp8` itself needs a GPU with FP8 tensor cores (`unsupported_reason`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

from tunelab.quant.nf4 import NF4Weight, block_absmax, dequantize_nf4
from tunelab.quant.nf4_ops import DequantWorkspace

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
MIN_AMAX = 1e-12  # an all-zero row still gets a finite scale
ALIGN = 16  # torch._scaled_mm wants both widths of the weight divisible by 16


def unsupported_reason(device: torch.device) -> str | None:
    """Why FP8 products cannot run on `device`, or None when they can."""
    if device.type != "cuda":
        return f"FP8 products need a CUDA GPU with FP8 tensor cores (this run is on {device.type})"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        name = torch.cuda.get_device_name(device)
        return f"FP8 tensor cores start at compute capability 8.9 (Ada, Hopper); {name} is {major}.{minor}"
    if not hasattr(torch, "_scaled_mm"):
        return f"this torch ({torch.__version__}) has no torch._scaled_mm"
    return None


def misaligned(shape: tuple[int, int]) -> bool:
    """True when an (out, in) weight cannot be an FP8 GEMM operand (a width not divisible by ALIGN)."""
    return shape[0] % ALIGN != 0 or shape[1] % ALIGN != 0


# --------------------------------------------------------------------------------------------------------------------
# The arithmetic, in plain torch (any device): what the kernels compute, bit for bit


def weight_scale(q: NF4Weight) -> torch.Tensor:
    """(1,) fp32: 448 / max|W| (at least MIN_AMAX), the factor the weight is multiplied by before rounding to FP8."""
    amax = block_absmax(q).abs().max().clamp_min(MIN_AMAX).reshape(1)
    return torch.full_like(amax, E4M3_MAX).div_(amax)


def weight_fp8_reference(q: NF4Weight, scale: torch.Tensor) -> torch.Tensor:
    """(out, in) float8_e4m3fn: the fp32 weight times `scale`, clamped to +-448, rounded once."""
    w = dequantize_nf4(q, torch.float32) * scale
    return w.clamp_(-E4M3_MAX, E4M3_MAX).to(E4M3)


def quantize_rows_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) -> (q (M, K) float8_e4m3fn, scale (M, 1) fp32) with x ~ q * scale row by row."""
    amax = x.float().abs().amax(dim=1, keepdim=True).clamp_min(MIN_AMAX)
    limit = torch.full_like(amax, E4M3_MAX)
    q = (x.float() * (limit / amax)).clamp_(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return q, amax / limit  # tensor by tensor: a correctly rounded division on CUDA too (by a number it multiplies)


def scaled_mm_reference(
    a: torch.Tensor, scale_a: torch.Tensor, b: torch.Tensor, scale_b: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """(a * scale_a) @ (b * scale_b^T)^T in fp32, rounded to `dtype`: a (M, K), b (N, K) FP8, scales (M, 1), (1, N)."""
    return ((a.float() * scale_a) @ (b.float() * scale_b.reshape(-1, 1)).T).to(dtype)


# --------------------------------------------------------------------------------------------------------------------
# The same on CUDA, by the kernels


def _kernels():
    from tunelab.quant import fp8_triton

    return fp8_triton


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize_rows_reference`, by one Triton kernel on CUDA (which reads rows of unit column stride)."""
    if not x.is_cuda:
        return quantize_rows_reference(x)
    return _kernels().quantize_rows(x if x.stride(-1) == 1 else x.contiguous(), MIN_AMAX)


class _LastRows:
    """The row quantization of the last input `FP8Base.product` was given, kept while that tensor lives unchanged:
    q, k and v (and gate and up) read one input, which is then quantized once instead of three times (twice)."""

    def __init__(self) -> None:
        self.owner: weakref.ref | None = None
        self.key: tuple | None = None
        self.result: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        owner = x2 if x2._base is None else x2._base  # the reshape of one tensor is a new view each time
        key = (x2.data_ptr(), tuple(x2.shape), x2.stride(), owner._version, x2.dtype)
        if self.owner is not None and self.owner() is owner and self.key == key:
            return self.result
        self.owner = self.key = self.result = None  # drop the last one before making the next
        result = quantize_rows(x2)
        self.owner, self.key, self.result = weakref.ref(owner), key, result
        return result


_last_rows = _LastRows()


class FP8Scratch:
    """The buffer that FP8 weights are written into (see Memory above): valid until its next use, which is safe for
    the same reason as `DequantWorkspace`'s (each use ends on the stream before the next starts)."""

    def __init__(self) -> None:
        self._workspace = DequantWorkspace(reuse=False)

    def get(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        return self._workspace.get(shape, E4M3, device)

    def reserve(self, numel: int, dtype: torch.dtype, device: torch.device) -> None:
        """Grow to `numel` FP8 values now (`models.slots.reserve_scratch`): FP8 whatever the input's dtype."""
        self._workspace.reserve(numel, E4M3, device)

    def numel(self) -> int:
        flat = self._workspace._flat
        return 0 if flat is None else flat.numel()


SCRATCH = FP8Scratch()


def weight_fp8(q: NF4Weight, scale: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """`weight_fp8_reference`, by the NF4 word kernel on CUDA; written into `out` when given."""
    if not q.packed.is_cuda:
        w = weight_fp8_reference(q, scale)
        return w if out is None else out.copy_(w)
    from tunelab.quant.nf4_triton import dequantize_nf4_triton

    out = torch.empty(q.shape, dtype=E4M3, device=q.device) if out is None else out
    return dequantize_nf4_triton(q, out=out, scale=scale)


def scaled_mm(a: torch.Tensor, scale_a: torch.Tensor, b: torch.Tensor, scale_b: torch.Tensor, dtype: torch.dtype):
    """a (M, K) @ b (N, K)^T with their row-wise scales, the result in `dtype`: torch._scaled_mm on CUDA (bf16 out,
    then cast), else `scaled_mm_reference`."""
    if not a.is_cuda:
        return scaled_mm_reference(a, scale_a, b, scale_b, dtype)
    out = torch._scaled_mm(a, b.T, scale_a=scale_a, scale_b=scale_b, out_dtype=torch.bfloat16)
    return out if dtype == torch.bfloat16 else out.to(dtype)


class FP8Base:
    """The FP8 products of one frozen NF4 weight, or of several stacked by rows (the weights of a projection group,
    q/k/v or gate/up, which read one input): `product(x)` = x W^T and `input_grad(g)` = g W, (N, .) in the input's
    dtype. `sources` give the weights at each use (the layers' buffers, wherever they are now). One scale serves the
    whole stack (the largest absmax of its weights maps to 448): backward reduces over its rows, where torch._scaled_mm
    takes no scale. The scale is found at first use and kept while the codes stay the same tensors (a load writes into
    them, which moves their version counters)."""

    def __init__(self, *sources: Callable[[], NF4Weight]) -> None:
        shapes = [tuple(source().shape) for source in sources]
        if not shapes or any(misaligned(shape) for shape in shapes) or len({shape[1] for shape in shapes}) != 1:
            raise ValueError(f"FP8Base: weights {shapes} need one input width, and widths divisible by {ALIGN}")
        self.sources = sources
        self.out_features = sum(shape[0] for shape in shapes)
        self.in_features = shapes[0][1]
        self._key: tuple | None = None
        self._scales: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def _weights(self) -> list[NF4Weight]:
        return [source() for source in self.sources]

    def scales(self, qs: list[NF4Weight]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(factor (1,), 1/factor as a (1, out) vector, the same as a (1, in) vector), all fp32."""
        key = tuple((q.packed.data_ptr(), q.packed._version, q.absmax_q._version, q.packed.device) for q in qs)
        if self._scales is None or key != self._key:
            factor = torch.stack([weight_scale(q) for q in qs]).amin(dim=0) if len(qs) > 1 else weight_scale(qs[0])
            inverse = torch.full_like(factor, 1.0).div_(factor)
            out, inp = self.out_features, self.in_features
            self._scales = (factor, inverse.expand(1, out).contiguous(), inverse.expand(1, inp).contiguous())
            self._key = key
        return self._scales

    def scratch_need(self) -> int:
        """The FP8 values its weight takes in `SCRATCH`."""
        return self.out_features * self.in_features

    def weight(self, qs: list[NF4Weight], factor: torch.Tensor) -> torch.Tensor:
        """(out, in) float8_e4m3fn: the weights stacked by rows, each times `factor`, in `SCRATCH`."""
        w = SCRATCH.get((self.out_features, self.in_features), qs[0].device)
        row = 0
        for q in qs:
            weight_fp8(q, factor, out=w[row : row + q.shape[0]])
            row += q.shape[0]
        return w

    def product(self, x2: torch.Tensor) -> torch.Tensor:
        """x2 (N, in) -> x2 W^T (N, out)."""
        qs = self._weights()
        factor, per_out, _ = self.scales(qs)
        xq, xs = _last_rows(x2)
        return scaled_mm(xq, xs, self.weight(qs, factor), per_out, x2.dtype)

    def transposed(self, qs: list[NF4Weight], factor: torch.Tensor) -> torch.Tensor:
        """(in, out) float8_e4m3fn: `weight(qs, factor)` transposed, in `SCRATCH`, written so by the kernel on CUDA."""
        if not qs[0].packed.is_cuda:
            w = self.weight(qs, factor).T.clone()
            return SCRATCH.get((self.in_features, self.out_features), qs[0].device).copy_(w)
        from tunelab.quant.fp8_triton import dequantize_transposed

        wt = SCRATCH.get((self.in_features, self.out_features), qs[0].device)
        col = 0
        for q in qs:
            dequantize_transposed(q, factor, out=wt[:, col : col + q.shape[0]])
            col += q.shape[0]
        return wt

    def input_grad(self, g: torch.Tensor) -> torch.Tensor:
        """g (N, out) -> g W (N, in)."""
        qs = self._weights()
        factor, _, per_in = self.scales(qs)
        gq, gs = quantize_rows(g)
        return scaled_mm(gq, gs, self.transposed(qs, factor), per_in, g.dtype)  # W^T: the column-major operand


class FP8LinearFunction(torch.autograd.Function):
    """y = x W^T (+ b) by `FP8Base.product`; dx = dy W by `FP8Base.input_grad`. Saves nothing but the weight's
    reference (frozen)."""

    @staticmethod
    def forward(ctx, x, bias, base, output):
        ctx.base = base
        ctx.bias_dtype = None if bias is None else bias.dtype
        if not output:
            return x.new_empty(*x.shape[:-1], base.out_features)
        y = base.product(x.reshape(-1, x.shape[-1]))
        if bias is not None:
            y = y + bias.to(y.dtype)
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        g = dy.reshape(-1, dy.shape[-1])
        dx = ctx.base.input_grad(g).view(*dy.shape[:-1], -1) if ctx.needs_input_grad[0] else None
        dbias = g.sum(0, dtype=torch.float32).to(ctx.bias_dtype) if ctx.needs_input_grad[1] else None
        return dx, dbias, None, None


def fp8_linear(x: torch.Tensor, base: FP8Base, bias: torch.Tensor | None = None, output: bool = True):
    """x (..., in) @ W^T (+ b) with FP8 products; the weight takes no gradient. output=False: the node only."""
    return FP8LinearFunction.apply(x, bias, base, output)
