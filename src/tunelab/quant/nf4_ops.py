"""NF4 on whatever device the weight is: the one switch between the PyTorch reference (`quant.nf4`) and the Triton
kernels (`quant.nf4_triton`, taken for CUDA weights when Triton imports), and the scratch buffer that weights are
dequantized into (`DequantWorkspace`).

Triton is imported here only when a CUDA weight asks for it, so that the CPU path never loads it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from tunelab.quant.nf4 import NF4Weight, dequantize_nf4, quantize_nf4_reference


def quantize_nf4(w: torch.Tensor) -> NF4Weight:
    """Quantize a float tensor (any shape) to NF4 with double quantization, on w's device.

    On CUDA with Triton: the kernels of `quant.nf4_triton` (bitsandbytes' CUDA rounding, no fp32 copy of w);
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
    """`tunelab.quant.nf4_triton`, or None where Triton does not import."""
    try:
        from tunelab.quant import nf4_triton
    except ImportError:
        return None
    return nf4_triton


class DequantWorkspace:
    """A scratch buffer that NF4 layers dequantize their weight into, so that a model holds one 16-bit weight at a
    time, however many layers it has. Grown to the largest weight seen; reallocated when the dtype or device changes.

    Safe because each use ends before the next starts on the same CUDA stream (dequantize, then the GEMM that reads
    it); do not share one workspace between streams or threads.

    reuse=False dequantizes on every `weight` call. FSDP2 needs it: it frees a layer's gathered NF4 state after use
    and gathers the next layer's into memory the allocator may hand out at the same address, keeping the version
    counters as they were, so the (address, version) key of a held weight no longer names one weight.
    """

    def __init__(self, reuse: bool = True) -> None:
        self.reuse = reuse
        self._flat: torch.Tensor | None = None
        self._held: tuple | None = None  # what `weight` last left in the buffer

    def get(self, shape: Iterable[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A (shape) view of the buffer for the caller to write; whatever `weight` left there is forgotten."""
        self._held = None
        return self._view(shape, dtype, device)

    def weight(self, q: NF4Weight, dtype: torch.dtype) -> torch.Tensor:
        """q dequantized to `dtype` in the buffer: left as it is when the buffer already holds it, as for the down
        projection in each token chunk of checkpointing's MLP backward. The NF4 state is frozen: only a write into
        it (a load, which moves its version counter) or another use of the buffer makes the content stale."""
        out = self._view(q.shape, dtype, q.device)
        key = (q.packed.data_ptr(), q.packed._version, out.data_ptr(), tuple(q.shape), dtype)
        if key != self._held or not self.reuse:
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
            # Free the old buffer before allocating the new one, which may then start at the same address: what it
            # held is forgotten.
            self._flat = flat = self._held = None
            self._flat = flat = torch.empty(n, dtype=dtype, device=device)
        return flat[:n].view(shape)
