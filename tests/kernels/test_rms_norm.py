"""RMSNorm: the reference against a float64 autograd ground truth (CPU), the Triton kernel against the reference (CUDA).

Without a GPU, `TRITON_INTERPRET=1` runs the Triton tests on the CPU in Triton's interpreter (slow; for kernel work).
"""

import zlib

import pytest
import torch

from tunelab.kernels import reference

# Hidden sizes: primes and non-powers of two, one above a power of two (4099 pads to 8192 in the kernel).
SHAPES = [(1, 577), (7, 1000), (3, 5, 4099), (129, 64)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
EPS = 1e-6

# Relative error ||a - b|| / ||b|| allowed per dtype. Both sides compute in fp32 and round once to the output
# dtype, so they differ by rounding flips of one unit in the last place (bf16 2^-8 = 3.9e-3, fp16 2^-11 = 4.9e-4)
# plus fp32 reduction order (~1e-6 over 4099 terms); the bounds are about twice one ulp.
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def make_inputs(shape, dtype, device="cpu", weight_grad=True):
    g = torch.Generator().manual_seed(zlib.crc32(repr((shape, dtype)).encode()))
    x = (torch.randn(shape, generator=g) * 3).to(device, dtype).requires_grad_()
    w = (1 + 0.5 * torch.randn(shape[-1], generator=g)).to(device, dtype).requires_grad_(weight_grad)
    dy = torch.randn(shape, generator=g).to(device, dtype)
    return x, w, dy


def run(fn, x, w, dy):
    x, w = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_(w.requires_grad)
    y = fn(x, w, EPS)
    y.backward(dy)
    return y, x.grad, w.grad


def ground_truth(x, w, eps):
    x64, w64 = x.double(), w.double()
    return x64 / torch.sqrt((x64 * x64).mean(-1, keepdim=True) + eps) * w64


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_reference_matches_float64_ground_truth(shape, dtype, rel_error):
    x, w, dy = make_inputs(shape, dtype)
    y, dx, dw = run(reference.rms_norm, x, w, dy)
    y64, dx64, dw64 = run(ground_truth, x, w, dy)
    assert y.dtype == dtype and dx.dtype == dtype and dw.dtype == dtype
    # One rounding of each output to the dtype against exact float64: half the TOL ulp bound above suffices,
    # but dw sums 129 rows in fp32, so keep the same bound.
    for got, want in ((y, y64), (dx, dx64), (dw, dw64)):
        assert rel_error(got, want) < TOL[dtype]


@pytest.mark.triton
@pytest.mark.parametrize("weight_grad", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [(2, 1024, 4096)])
def test_triton_matches_reference(shape, dtype, weight_grad, rel_error, triton_device):
    from tunelab.kernels.rms_norm import rms_norm

    x, w, dy = make_inputs(shape, dtype, triton_device, weight_grad)
    y, dx, dw = run(rms_norm, x, w, dy)
    y_ref, dx_ref, dw_ref = run(reference.rms_norm, x, w, dy)
    assert y.dtype == dtype and dx.dtype == dtype
    assert rel_error(y, y_ref) < TOL[dtype]
    assert rel_error(dx, dx_ref) < TOL[dtype]
    if weight_grad:
        assert dw.dtype == dtype and rel_error(dw, dw_ref) < TOL[dtype]
    else:
        assert dw is None


@pytest.mark.triton
def test_triton_handles_strided_rows_and_fp32_weight_over_bf16_input(rel_error, triton_device):
    from tunelab.kernels.rms_norm import rms_norm

    base = torch.randn(6, 2 * 1000, device=triton_device, dtype=torch.bfloat16)
    x = base[:, :1000]  # row stride 2000: the kernel reads it without a copy
    w = torch.randn(1000, device=triton_device)
    assert rel_error(rms_norm(x, w, EPS), reference.rms_norm(x, w, EPS)) < TOL[torch.bfloat16]


@pytest.mark.triton
def test_triton_leaves_spare_columns_after_its_output(rel_error, triton_device):
    from tunelab.kernels.rms_norm import rms_norm

    x = torch.randn(2, 3, 1000, device=triton_device, requires_grad=True)
    w = torch.randn(1000, device=triton_device)
    y = rms_norm(x, w, EPS, spare_columns=24)
    assert y.shape == x.shape and y.stride() == (3 * 1024, 1024, 1)
    assert rel_error(y, reference.rms_norm(x, w, EPS)) < TOL[torch.float32]
    dy = torch.randn_like(y)
    y.backward(dy)
    x_ref = x.detach().clone().requires_grad_()
    reference.rms_norm(x_ref, w, EPS).backward(dy)
    assert rel_error(x.grad, x_ref.grad) < TOL[torch.float32]


def _with_residual_grads(fn, x, w, dy, dres):
    """x.grad and w.grad of  sum(dy * y) + sum(dres * r)  for (y, r) = fn(x, w, with_residual=True)."""
    x, w = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    y, r = fn(x, w, EPS, with_residual=True)
    torch.autograd.backward([y, r], [dy, dres])
    return y, r, x.grad, w.grad


def test_reference_with_residual_returns_x_itself():
    x, w, _ = make_inputs((3, 64), torch.float32)
    y, r = reference.rms_norm(x, w, EPS, with_residual=True)
    assert r is x and torch.equal(y, reference.rms_norm(x, w, EPS))


@pytest.mark.triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 1000), (3, 5, 4099)])
def test_triton_with_residual_adds_the_residual_gradient_in_its_backward(shape, dtype, rel_error, triton_device):
    from tunelab.kernels.rms_norm import rms_norm

    x, w, dy = make_inputs(shape, dtype, triton_device)
    dres = torch.randn(shape, generator=torch.Generator().manual_seed(5)).to(triton_device, dtype)
    y, r, dx, dw = _with_residual_grads(rms_norm, x, w, dy, dres)
    y_ref, r_ref, dx_ref, dw_ref = _with_residual_grads(reference.rms_norm, x, w, dy, dres)
    assert torch.equal(r, x) and r.shape == x.shape
    assert rel_error(y, y_ref) < TOL[dtype]
    # One fp32 sum rounded once against the reference's two roundings (its dx, then dx + dres).
    assert dx.dtype == dtype and rel_error(dx, dx_ref) < TOL[dtype]
    assert rel_error(dw, dw_ref) < TOL[dtype]
    # Only y differentiated (the residual output unused), and only the residual one: each alone is right too.
    x1 = x.detach().clone().requires_grad_()
    y1, _ = rms_norm(x1, w.detach(), EPS, with_residual=True)
    y1.backward(dy)
    assert rel_error(x1.grad, run(reference.rms_norm, x, w, dy)[1]) < TOL[dtype]
    x2 = x.detach().clone().requires_grad_()
    _, r2 = rms_norm(x2, w.detach(), EPS, with_residual=True)
    r2.backward(dres)
    assert torch.equal(x2.grad, dres)
