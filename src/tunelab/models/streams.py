"""One side stream per CUDA device for the eager warm-up passes before a CUDA graph's capture.

PyTorch's rule for capturing is to warm up on a side stream. cuBLAS keeps a workspace for each (handle, stream) pair
from the caching allocator and never gives it back (32 MiB on Hopper; aten/src/ATen/cuda/CublasHandlePool.cpp), and
`torch.cuda.Stream()` hands out the streams of a pool of 32 in turn. A new stream for every capture (each new
micro-batch width of the training step, each sampling round of grpo) therefore held up to 32 more workspaces over a
run, up to 1 GiB. Every capture warms up on the same stream of its device instead.
"""

import torch

_STREAMS: dict[int, torch.cuda.Stream] = {}


def warmup_stream(device: torch.device | int | None = None) -> torch.cuda.Stream:
    """The side stream captures on `device` (the current CUDA device when None) warm up on, made at the first call."""
    index = device if isinstance(device, int) else None if device is None else torch.device(device).index
    if index is None:  # no device, or torch.device("cuda"), which names no index: the current device
        index = torch.cuda.current_device()
    if index not in _STREAMS:
        _STREAMS[index] = torch.cuda.Stream(index)
    return _STREAMS[index]
