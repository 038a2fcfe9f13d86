"""SwiGLU: the reference against a float64 autograd ground truth (CPU), the Triton kernel against the reference (CUDA).

Without a GPU, `TRITON_INTERPRET=1` runs the Triton tests on the CPU in Triton's interpreter (slow; for kernel work).
"""

import zlib

import pytest
import torch

from tunelab.kernels import reference

# Sizes that leave a ragged last block (the kernel works in blocks of 2048 elements) and an MLP-like width.
SHAPES = [(1, 577), (7, 1000), (3, 5, 4099), (1, 1), (2, 129, 1376)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# Relative error ||a - b|| / ||b|| allowed per dtype. Both sides compute in fp32 and round once, so they differ by
# one-ulp rounding flips (bf16 3.9e-3, fp16 4.9e-4) plus fp32 sigmoid/exp differences (~1e-7); about twice one ulp.
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def make_inputs(shape, dtype, device="cpu"):
    g = torch.Generator().manual_seed(zlib.crc32(repr((shape, dtype)).encode()))
    gate = (torch.randn(shape, generator=g) * 4).to(device, dtype)  # wide enough to reach both silu tails
    up = torch.randn(shape, generator=g).to(device, dtype)
    dout = torch.randn(shape, generator=g).to(device, dtype)
    return gate, up, dout


def run(fn, gate, up, dout):
    gate, up = gate.detach().clone().requires_grad_(), up.detach().clone().requires_grad_()
    out = fn(gate, up)
    out.backward(dout)
    return out, gate.grad, up.grad


def ground_truth(gate, up):
    g = gate.double()
    return g / (1 + torch.exp(-g)) * up.double()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_reference_matches_float64_ground_truth(shape, dtype, rel_error):
    inputs = make_inputs(shape, dtype)
    got = run(reference.swiglu, *inputs)
    want = run(ground_truth, *inputs)
    for g, w in zip(got, want):
        assert g.dtype == dtype and rel_error(g, w) < TOL[dtype]


@pytest.mark.triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [(4, 1024, 2752)])
def test_triton_matches_reference(shape, dtype, rel_error, triton_device):
    from tunelab.kernels.swiglu import swiglu

    inputs = make_inputs(shape, dtype, triton_device)
    got = run(swiglu, *inputs)
    want = run(reference.swiglu, *inputs)
    for g, w in zip(got, want):
        assert g.dtype == dtype and rel_error(g, w) < TOL[dtype]


@pytest.mark.triton
def test_triton_takes_halves_of_a_fused_projection(rel_error, triton_device):
    from tunelab.kernels.swiglu import swiglu

    gate_up = torch.randn(3, 7, 2 * 577, device=triton_device, dtype=torch.bfloat16)
    gate, up = gate_up.chunk(2, dim=-1)  # non-contiguous views
    assert rel_error(swiglu(gate, up), reference.swiglu(gate, up)) < TOL[torch.bfloat16]


@pytest.mark.triton
def test_triton_reusing_its_inputs_gives_the_same_gradients_and_refuses_a_second_backward(triton_device):
    from tunelab.kernels.swiglu import swiglu

    torch.manual_seed(0)
    x = torch.randn(64, 32, device=triton_device, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(2, 96, 32, device=triton_device, dtype=torch.bfloat16)
    dout = torch.randn(64, 96, device=triton_device, dtype=torch.bfloat16)
    grads = []
    for reuse in (False, True):
        gate, up = x @ w[0].T, x @ w[1].T  # fresh intermediates, as in the MLP
        out = swiglu(gate, up, reuse_inputs=reuse)
        grads.append(torch.autograd.grad(out, x, dout, retain_graph=True)[0])
        if reuse:
            with pytest.raises(RuntimeError, match="overwrote"):
                torch.autograd.grad(out, x, dout)
    assert torch.equal(grads[0], grads[1])
    leaf = torch.randn(8, 16, device=triton_device, dtype=torch.bfloat16, requires_grad=True)
    before = leaf.detach().clone()
    swiglu(leaf, leaf * 2, reuse_inputs=True).sum().backward()
    assert torch.equal(leaf.detach(), before)  # a leaf is never overwritten


@pytest.mark.triton
def test_triton_reuses_column_slices_of_one_buffer_in_place(rel_error, triton_device):
    """`peft.group` hands gate and up over as column slices of one (N, 2I + R) buffer; the in-place gradients must
    land side by side in that buffer, and nothing be copied."""
    from tunelab.kernels.swiglu import swiglu

    torch.manual_seed(0)
    x = torch.randn(2, 5, 16, device=triton_device, requires_grad=True)
    w = torch.randn(2 * 1100 + 8, 16, device=triton_device)
    dout = torch.randn(2, 5, 1100, device=triton_device)
    buf = x @ w.T  # (2, 5, 2208): gate, up, 8 spare columns
    gate, up = buf[..., :1100], buf[..., 1100:2200]
    want = torch.autograd.grad(reference.swiglu(gate, up), (gate, up), dout, retain_graph=True)
    out = swiglu(gate, up, reuse_inputs=True)
    assert rel_error(out, reference.swiglu(gate, up)) < TOL[torch.float32]
    got = torch.autograd.grad(out, (gate, up), dout)
    assert got[0].data_ptr() == gate.data_ptr() and got[1].data_ptr() == up.data_ptr()  # written in place
    for g, w_ in zip(got, want):
        assert rel_error(g, w_) < TOL[torch.float32]
