"""RMSNorm as one Triton pass forward and one backward: y = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps).

Forward keeps only rstd (one fp32 per row) for the backward, which recomputes x_hat = x * rstd. All arithmetic is
fp32 whatever the input dtype, rounded once on the store, as in `reference.rms_norm`. A row is one block: the
hidden size is padded to the next power of two in registers (4099 -> 8192), so any hidden size works.

Backward, per row, with g = dy * w:  dx = rstd * (g - x_hat * mean(g * x_hat)),  dw = sum over rows of dy * x_hat.
dw is summed in fp32 by a persistent grid (one partial row per program, then one torch sum), not with atomics, so
the result is deterministic.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_forward_kernel(
    x_ptr, w_ptr, y_ptr, rstd_ptr,
    x_stride, y_stride, n_cols, eps,
    BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)  # (BLOCK,)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    tl.store(rstd_ptr + row, rstd)
    tl.store(y_ptr + row * y_stride + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_backward_kernel(
    dy_ptr, x_ptr, w_ptr, rstd_ptr, dx_ptr, dw_partial_ptr,
    dy_stride, x_stride, dx_stride, n_rows, n_cols, rows_per_program,
    BLOCK: tl.constexpr, COMPUTE_DW: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    first = pid * rows_per_program
    for i in range(0, rows_per_program):
        row = (first + i).to(tl.int64)
        if row < n_rows:
            dy = tl.load(dy_ptr + row * dy_stride + cols, mask=mask, other=0.0).to(tl.float32)
            x = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(rstd_ptr + row)
            x_hat = x * rstd
            g = dy * w
            dx = rstd * (g - x_hat * (tl.sum(g * x_hat, axis=0) / n_cols))
            tl.store(dx_ptr + row * dx_stride + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
            if COMPUTE_DW:
                dw += dy * x_hat
    if COMPUTE_DW:
        tl.store(dw_partial_ptr + pid * n_cols + cols, dw, mask=mask)


def _block_and_warps(n_cols: int) -> tuple[int, int]:
    block = triton.next_power_of_2(n_cols)
    # About 8-16 fp32 values per thread keeps a row in registers without spilling.
    warps = 4 if block <= 2048 else 8 if block <= 8192 else 16
    return block, warps


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(..., D) -> (M, D) with unit column stride, copying only if needed."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def _sm_count(device: torch.device) -> int:
    # Off CUDA only Triton's interpreter (TRITON_INTERPRET=1) runs these kernels; any count works there.
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 2


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x2 = _rows(x)  # (M, D)
        weight = weight.contiguous()
        n_rows, n_cols = x2.shape
        y = torch.empty((n_rows, n_cols), dtype=x.dtype, device=x.device)
        rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
        block, warps = _block_and_warps(n_cols)
        if n_rows:
            _rms_norm_forward_kernel[(n_rows,)](
                x2, weight, y, rstd, x2.stride(0), y.stride(0), n_cols, eps, BLOCK=block, num_warps=warps
            )
        ctx.save_for_backward(x2, weight, rstd)
        ctx.x_shape = x.shape
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x2, weight, rstd = ctx.saved_tensors
        n_rows, n_cols = x2.shape
        dy2 = _rows(dy)
        dx = torch.empty_like(x2)
        compute_dw = ctx.needs_input_grad[1]
        # Persistent grid: a few programs per SM, each walking a contiguous run of rows.
        programs = max(1, min(n_rows, 4 * _sm_count(x2.device)))
        rows_per_program = triton.cdiv(n_rows, programs)
        dw_partial = torch.empty((programs, n_cols) if compute_dw else (1,), dtype=torch.float32, device=x2.device)
        block, warps = _block_and_warps(n_cols)
        if n_rows:
            _rms_norm_backward_kernel[(programs,)](
                dy2, x2, weight, rstd, dx, dw_partial,
                dy2.stride(0), x2.stride(0), dx.stride(0), n_rows, n_cols, rows_per_program,
                BLOCK=block, COMPUTE_DW=compute_dw, num_warps=warps,
            )  # fmt: skip
        dw = None
        if compute_dw:
            dw = (dw_partial.sum(0) if n_rows else torch.zeros(n_cols, device=x2.device)).to(weight.dtype)
        return dx.view(ctx.x_shape), dw, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """y = x / sqrt(mean(x^2) + eps) * weight over the last dim, fp32 inside, in x's dtype. x (..., D), weight (D,)."""
    return RMSNormFunction.apply(x, weight, eps)
