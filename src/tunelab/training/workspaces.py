"""The cuBLAS workspaces a training step holds on the GPU: the memory model's part for them (`training.memory`).

torch gives each cuBLAS handle a workspace per stream it runs on, from its caching allocator, and keeps it for the
process (aten/src/ATen/cuda/CublasHandlePool.cpp: `setWorkspaceForHandle` keys them by (handle, stream); only
`torch._C._cuda_clearCublasWorkspaces` frees them). A thread has its own handle, so the forward's GEMMs (the Python
thread) and the backward's (autograd's thread for the device) hold one each per stream:
- an eager step runs on one stream: 2;
- a micro-batch replayed from a CUDA graph (`training.graphs.CapturedLoss`) runs its warm-up passes on a side stream
  and its capture on the capture stream: 4, of which the captured backward's is taken only when that backward starts,
  so a peak in the head or the forward holds 3.
The trace of benchmarks/results/2026-12-05-h100-first-step-memory.txt (torch 2.11, H100) shows them: three 32 MiB
blocks alive at the graphed QLoRA step's peak (its head), two at a LoRA GEMM line of the forward and one at the
backward's, and four at the graphed full step's peak (its optimizer step), two at a forward line and two with no
Python frame (autograd's thread).

One workspace is CUBLAS_WORKSPACE_CONFIG's size, the sum of its ":SIZE:COUNT" pairs (SIZE in KiB), or torch's
default (`parseChosenWorkspaceSize`): ":4096:8", 32 MiB, from compute capability 9 on (Hopper; Blackwell since
pytorch/pytorch#175344), ":4096:2:16:8", 8 MiB + 128 KiB, below it. cuBLASLt uses the same workspace
(TORCH_CUBLASLT_UNIFIED_WORKSPACE, on unless set off) or, in older torch, one of CUBLASLT_WORKSPACE_SIZE (1 MiB) of its
own, which is not counted. grpo's graph-replayed sampler (`models.decode`) and every captured width after the first
warm up on the same side stream (`models.streams`) and capture on torch's one capture stream, so they add none.
"""

from __future__ import annotations

import re

BLAS_WORKSPACE = 4096 * 1024 * 8  # ":4096:8", torch's default from compute capability 9 on
BLAS_WORKSPACE_BEFORE_SM90 = 4096 * 1024 * 2 + 16 * 1024 * 8  # ":4096:2:16:8"


def cublas_workspace_bytes(capability: tuple[int, int] | None = None, config: str | None = None) -> int:
    """One cuBLAS workspace as torch allocates it: CUBLAS_WORKSPACE_CONFIG (`config`) as the sum of its ":SIZE:COUNT"
    pairs, SIZE KiB each (one without any pair is torch's default), else by the GPU's compute capability. An unknown
    GPU (None: planning for another machine) is taken for a Hopper, which the planner is calibrated on."""
    pairs = re.findall(r":([0-9]+):([0-9]+)", config or "")
    if pairs:
        return sum(int(size) * 1024 * int(count) for size, count in pairs)
    if capability is None or capability[0] >= 9:
        return BLAS_WORKSPACE
    return BLAS_WORKSPACE_BEFORE_SM90


def step_workspaces(graphed: bool) -> tuple[int, int]:
    """(workspaces alive through the step, those the captured backward adds once it starts): eager (2, 0), graphed
    (3, 1)."""
    return (3, 1) if graphed else (2, 0)
