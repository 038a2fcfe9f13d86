"""The fused ops of the fast path, and the one switch that picks their implementation.

`select(impl)` returns an `Ops` bundle: "reference" gives the pure-PyTorch functions of `reference.py` (the CPU
path and the ground truth), "triton" the fused GPU versions of `kernels/<op>.py`, and "auto" a per-call dispatcher
that takes the fused version when the op's first tensor is on CUDA and Triton imports, else the reference.

Nothing is imported or probed at import time: `import tunelab.kernels` works where Triton is absent, and the op
modules (which import Triton at their top) are loaded by `select`.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunelab.errors import ConfigError

IMPLS = ("auto", "triton", "reference")

# Field name -> (module under tunelab.kernels holding the fused version, whether that module needs Triton).
# Attention (torch's flash/cuDNN kernels) and LoRA (cuBLAS matmuls) are fast paths written in plain torch.
_FUSED = {
    "rms_norm": ("rms_norm", True),
    "apply_rope": ("rope", True),
    "swiglu": ("swiglu", True),
    "attention": ("attention", False),
    "linear_cross_entropy": ("cross_entropy", True),
    "linear_log_probs": ("log_probs", True),
    "lora_linear": ("lora", False),
}


@dataclass(frozen=True)
class Ops:
    """One implementation of every fused op; each field has the signature of its namesake in `reference.py`."""

    rms_norm: Callable[..., Any]
    apply_rope: Callable[..., Any]
    swiglu: Callable[..., Any]
    attention: Callable[..., Any]
    linear_cross_entropy: Callable[..., Any]
    linear_log_probs: Callable[..., Any]
    lora_linear: Callable[..., Any]


def select(impl: str = "auto") -> Ops:
    """The ops for `impl` ("auto", "triton" or "reference"); raises ConfigError for another name or a missing GPU."""
    if impl not in IMPLS:
        raise ConfigError(f"kernels: unknown implementation {impl!r}; choose one of {', '.join(IMPLS)}.")
    from tunelab.kernels import reference

    references = {name: getattr(reference, name) for name in _FUSED}
    if impl == "reference":
        return Ops(**references)
    import torch

    has_cuda = torch.cuda.is_available()
    has_triton = importlib.util.find_spec("triton") is not None
    if impl == "triton":
        if not (has_cuda and has_triton):
            wants = (("a CUDA GPU", has_cuda), ("the triton package", has_triton))
            lacks = " and ".join(what for what, present in wants if not present)
            raise ConfigError(
                f"kernels: 'triton' needs {lacks}, missing here; set kernels to 'auto' (fused on GPU, reference "
                "elsewhere) or 'reference'."
            )
        return Ops(**{name: _fused(name) for name in _FUSED})
    chosen = {}
    for name, (_, needs_triton) in _FUSED.items():
        usable = has_cuda and (has_triton or not needs_triton)
        chosen[name] = _on_cuda(_fused(name), references[name]) if usable else references[name]
    return Ops(**chosen)


def _fused(name: str) -> Callable[..., Any]:
    """The fused function for the field `name`; it lives under the same name in its module."""
    return getattr(importlib.import_module(f"tunelab.kernels.{_FUSED[name][0]}"), name)


def _on_cuda(fused: Callable[..., Any], fallback: Callable[..., Any]) -> Callable[..., Any]:
    """A function that calls `fused` when its first argument is a CUDA tensor, else `fallback`."""

    def dispatch(first: Any, *args: Any, **kwargs: Any) -> Any:
        chosen = fused if first.is_cuda else fallback
        return chosen(first, *args, **kwargs)

    dispatch.__name__ = getattr(fused, "__name__", "dispatch")
    dispatch.__doc__ = f"Fused on CUDA tensors, reference elsewhere.\n\n{fused.__doc__ or ''}"
    return dispatch
