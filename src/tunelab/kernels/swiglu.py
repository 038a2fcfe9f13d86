"""SwiGLU, silu(gate) * up, as one elementwise Triton pass forward and one backward.

With s = sigmoid(gate):  out = gate * s * up;  d_gate = dout * up * s * (1 + gate * (1 - s));  d_up = dout * gate * s.
The backward recomputes s from the saved inputs instead of saving silu(gate), which would be a third tensor of the
MLP's widest size. With `reuse_inputs=True` (the caller's promise that nothing else reads gate and up, as in a Llama
MLP, where they are fresh projection outputs) it writes d_gate over gate and d_up over up: each element is read
before the same program writes it, and the MLP's backward peak then holds three (N, intermediate) tensors instead
of five (344 MiB less for a 7B model at 8192 tokens). Such a node refuses a second backward (retain_graph), which
would read gradients as inputs. fp32 inside, rounded once on the store, as in `reference.swiglu`.

gate and up may be column slices of one wider buffer (`lora.lora_group` returns them so): the kernels take row
strides, so nothing is copied, and in-place gradients land where the group's backward reads them as one matrix.
"""

import torch
import triton
import triton.language as tl

_BLOCK = 1024  # columns per program: 8 bf16 (16 bytes) per thread per load at 4 warps; 11008 wastes 2% of lanes


@triton.jit
def _swiglu_forward_kernel(gate_ptr, up_ptr, out_ptr, n_cols, gate_stride, up_stride, out_stride, BLOCK: tl.constexpr):
    """Program (row, column block): rows may be any stride apart (gate/up as column slices of one buffer)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    g = tl.load(gate_ptr + row * gate_stride + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(up_ptr + row * up_stride + cols, mask=mask, other=0.0).to(tl.float32)
    out = g * tl.sigmoid(g) * u
    tl.store(out_ptr + row * out_stride + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_backward_kernel(
    dout_ptr, gate_ptr, up_ptr, dgate_ptr, dup_ptr, n_cols,
    dout_stride, gate_stride, up_stride, dgate_stride, dup_stride, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    dout = tl.load(dout_ptr + row * dout_stride + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(gate_ptr + row * gate_stride + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(up_ptr + row * up_stride + cols, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(g)
    silu = g * s
    dgate = dout * u * s * (1.0 + g * (1.0 - s))
    tl.store(dgate_ptr + row * dgate_stride + cols, dgate.to(dgate_ptr.dtype.element_ty), mask=mask)
    tl.store(dup_ptr + row * dup_stride + cols, (dout * silu).to(dup_ptr.dtype.element_ty), mask=mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(..., C) -> (M, C) with unit column stride and any row stride, copying only if that cannot be a view."""
    if t.dim() >= 2 and t.stride(-1) == 1:
        try:
            return t.view(-1, t.shape[-1])
        except RuntimeError:
            pass
    return t.reshape(-1, t.shape[-1]).contiguous()


def _grid(rows: torch.Tensor) -> tuple[int, int]:
    return rows.shape[0], triton.cdiv(rows.shape[1], _BLOCK)


class SwiGLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor, reuse_inputs: bool) -> torch.Tensor:
        if gate.shape != up.shape:
            raise ValueError(f"swiglu: gate {tuple(gate.shape)} and up {tuple(up.shape)} must have one shape")
        # Never overwrite a leaf (a user's own tensor), whatever the caller says.
        ctx.reuse = reuse_inputs and gate.grad_fn is not None and up.grad_fn is not None
        ctx.done = False
        ctx.shape = gate.shape
        gate2, up2 = _rows(gate), _rows(up)  # (M, C): row strides may differ (column slices of a wider buffer)
        out = torch.empty(gate2.shape, dtype=gate.dtype, device=gate.device)
        if out.numel():
            _swiglu_forward_kernel[_grid(gate2)](
                gate2, up2, out, gate2.shape[1], gate2.stride(0), up2.stride(0), out.stride(0), BLOCK=_BLOCK
            )
        ctx.save_for_backward(gate2, up2)
        return out.view(gate.shape)

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        if ctx.done:
            raise RuntimeError("swiglu(reuse_inputs=True): backward ran once already and overwrote its saved inputs")
        gate, up = ctx.saved_tensors  # (M, C) each
        dout = _rows(dout)
        if ctx.reuse:
            dgate, dup = gate, up  # in place: see the module docstring
            ctx.done = True
        else:
            dgate, dup = (
                torch.empty_like(gate, memory_format=torch.contiguous_format),
                torch.empty_like(up, memory_format=torch.contiguous_format),
            )
        if gate.numel():
            _swiglu_backward_kernel[_grid(gate)](
                dout, gate, up, dgate, dup, gate.shape[1],
                dout.stride(0), gate.stride(0), up.stride(0), dgate.stride(0), dup.stride(0), BLOCK=_BLOCK,
            )  # fmt: skip
        return dgate.view(ctx.shape), dup.view(ctx.shape), None


def swiglu(gate: torch.Tensor, up: torch.Tensor, reuse_inputs: bool = False) -> torch.Tensor:
    """silu(gate) * up, the gated MLP activation; gate and up of one shape, the result in gate's dtype.
    reuse_inputs: backward may overwrite gate and up with their gradients (see the module docstring)."""
    return SwiGLUFunction.apply(gate, up, reuse_inputs)
