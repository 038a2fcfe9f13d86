"""RMSNorm as one Triton pass forward and one backward: y = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps).

Forward keeps only rstd (one fp32 per row) for the backward, which recomputes x_hat = x * rstd. All arithmetic is
fp32 whatever the input dtype, rounded once on the store, as in `reference.rms_norm`. A program works on tiles of
BLOCK_M whole rows, the hidden size padded to the next power of two in registers (4099 -> 8192), so any hidden
size works; small hidden sizes take several rows per tile.

Backward, per row, with g = dy * w:  dx = rstd * (g - x_hat * mean(g * x_hat)),  dw = sum over rows of dy * x_hat.
dw is summed in fp32 by a persistent grid (one partial row per program, then one torch sum), not with atomics, so
the result is deterministic.

On an H200 at 8192 x 4096 bf16: forward ~0.07 ms, backward ~0.12 ms (~1.8 TB/s, under half the copy ceiling;
tile height, warps and programs per SM moved it by less than run-to-run noise), fwd+bwd 0.39 ms against 1.53 ms
for the reference, which also holds 320 MiB for its backward against 64 MiB here.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_forward_kernel(
    x_ptr, w_ptr, y_ptr, rstd_ptr,
    x_stride, y_stride, n_rows, n_cols, eps,
    BLOCK_M: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    rows64 = rows.to(tl.int64)[:, None]
    cols = tl.arange(0, BLOCK)[None, :]  # (1, BLOCK)
    mask = (rows[:, None] < n_rows) & (cols < n_cols)
    x = tl.load(x_ptr + rows64 * x_stride + cols, mask=mask, other=0.0).to(tl.float32)  # (BLOCK_M, BLOCK)
    w = tl.load(w_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / n_cols + eps)  # (BLOCK_M,)
    tl.store(rstd_ptr + rows, rstd, mask=rows < n_rows)
    tl.store(y_ptr + rows64 * y_stride + cols, (x * rstd[:, None] * w).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_backward_kernel(
    dy_ptr, x_ptr, w_ptr, rstd_ptr, dres_ptr, dx_ptr, dw_partial_ptr,
    dy_stride, x_stride, dres_stride, dx_stride, n_rows, n_cols,
    BLOCK_M: tl.constexpr, BLOCK: tl.constexpr, COMPUTE_DW: tl.constexpr, HAS_RES: tl.constexpr,
):  # fmt: skip
    """Persistent: program p takes row blocks p, p + P, p + 2P, ... and keeps its share of dw in registers.
    HAS_RES: dx also gets dres, the gradient x receives through the residual stream (one pass instead of an add)."""
    pid = tl.program_id(0)
    step = tl.num_programs(0) * BLOCK_M
    cols = tl.arange(0, BLOCK)[None, :]  # (1, BLOCK)
    col_mask = cols < n_cols
    w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    for first in range(pid * BLOCK_M, n_rows, step):
        rows = first + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
        rows64 = rows.to(tl.int64)[:, None]
        mask = (rows[:, None] < n_rows) & col_mask
        dy = tl.load(dy_ptr + rows64 * dy_stride + cols, mask=mask, other=0.0).to(tl.float32)  # (BLOCK_M, BLOCK)
        x = tl.load(x_ptr + rows64 * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=rows < n_rows, other=0.0)[:, None]  # (BLOCK_M, 1)
        x_hat = x * rstd
        g = dy * w
        dx = rstd * (g - x_hat * (tl.sum(g * x_hat, axis=1) / n_cols)[:, None])
        if HAS_RES:
            dx += tl.load(dres_ptr + rows64 * dres_stride + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_ptr + rows64 * dx_stride + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        if COMPUTE_DW:
            dw += tl.sum(dy * x_hat, axis=0)
    if COMPUTE_DW:
        tl.store(dw_partial_ptr + pid * n_cols + tl.arange(0, BLOCK), dw, mask=tl.arange(0, BLOCK) < n_cols)


def _launch_shape(n_cols: int, block_m: int | None = None, warps: int | None = None) -> tuple[int, int, int]:
    """(BLOCK columns, BLOCK_M rows per tile, num_warps) for a hidden size; a block_m or warps the caller chose is
    kept."""
    block = triton.next_power_of_2(n_cols)
    tile_rows = max(1, 4096 // block)  # tiles of about 4096 elements: several rows at once for small hidden sizes
    default_warps = 8 if block * tile_rows <= 8192 else 16
    return block, block_m or min(tile_rows, 16), warps or default_warps


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(..., D) -> (M, D) with unit column stride, copying only if needed."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _sm_count(device: torch.device) -> int:
    # Off CUDA only Triton's interpreter (TRITON_INTERPRET=1) runs these kernels; any count works there.
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 2


def _forward(x2, weight, eps, block_m=None, warps=None, spare=0):
    """y (M, D) and rstd (M,) fp32 for x2 (M, D); y is the first D columns of an (M, D + spare) buffer."""
    n_rows, n_cols = x2.shape
    block, block_m, warps = _launch_shape(n_cols, block_m, warps)
    y = torch.empty((n_rows, n_cols + spare), dtype=x2.dtype, device=x2.device)[:, :n_cols]
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x2.device)
    if n_rows:
        _rms_norm_forward_kernel[(triton.cdiv(n_rows, block_m),)](
            x2, weight, y, rstd, x2.stride(0), y.stride(0), n_rows, n_cols, eps,
            BLOCK_M=block_m, BLOCK=block, num_warps=warps,
        )  # fmt: skip
    return y, rstd


def _backward(dy2, x2, weight, rstd, compute_dw, dres2=None, block_m=None, warps=None, programs_per_sm=4):
    """dx (M, D) and dw (D,) in weight's dtype (None unless compute_dw). dres2 (M, D): added to dx (fp32 sum)."""
    n_rows, n_cols = x2.shape
    block, block_m, warps = _launch_shape(n_cols, block_m, warps)
    dx = torch.empty_like(x2)
    programs = max(1, min(triton.cdiv(n_rows, block_m), programs_per_sm * _sm_count(x2.device)))
    dw_partial = torch.empty((programs, n_cols) if compute_dw else (1,), dtype=torch.float32, device=x2.device)
    res = dy2 if dres2 is None else dres2  # without a residual gradient: a placeholder the kernel never reads
    if n_rows:
        _rms_norm_backward_kernel[(programs,)](
            dy2, x2, weight, rstd, res, dx, dw_partial,
            dy2.stride(0), x2.stride(0), res.stride(0), dx.stride(0), n_rows, n_cols,
            BLOCK_M=block_m, BLOCK=block, COMPUTE_DW=compute_dw, HAS_RES=dres2 is not None, num_warps=warps,
        )  # fmt: skip
    if not compute_dw:
        return dx, None
    dw = dw_partial.sum(0) if n_rows else torch.zeros(n_cols, device=x2.device)
    return dx, dw.to(weight.dtype)


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float, spare: int, with_residual: bool):
        x2 = _rows(x)  # (M, D)
        weight = weight.contiguous()
        y, rstd = _forward(x2, weight, eps, spare=spare)
        ctx.save_for_backward(x2, weight, rstd)
        ctx.x_shape = x.shape
        ctx.set_materialize_grads(False)
        y = y.view(x.shape)
        # The second output is x itself (a view of it): the residual stream's use of x, whose gradient backward adds
        # to dx in the same kernel instead of autograd summing the two uses in a pass of its own.
        return (y, x.view_as(x)) if with_residual else y

    @staticmethod
    def backward(ctx, dy: torch.Tensor | None, dres: torch.Tensor | None = None):
        x2, weight, rstd = ctx.saved_tensors
        if dy is None:  # only the residual's use of x was differentiated
            return dres, None, None, None, None
        dres2 = None if dres is None else _rows(dres)
        dx, dw = _backward(_rows(dy), x2, weight, rstd, ctx.needs_input_grad[1], dres2)
        return dx.view(ctx.x_shape), dw, None, None, None


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, spare_columns: int = 0, with_residual: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """y = x / sqrt(mean(x^2) + eps) * weight over the last dim, fp32 inside, in x's dtype. x (..., D), weight (D,).

    spare_columns > 0: y is written as the first D columns of a new (..., D + spare_columns) buffer whose last
    columns nothing else reads or writes, for a consumer that wants room after each row (`models.slots`).
    with_residual: returns (y, x) where the second is x for the residual stream to read; its gradient is added to
    x's by the backward kernel (same values as using x directly)."""
    return RMSNormFunction.apply(x, weight, eps, spare_columns, with_residual)
