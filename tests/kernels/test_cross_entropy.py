"""Fused linear + cross-entropy: the reference against a float64 ground truth (CPU), the Triton version against the
reference (CUDA): the summed loss, grad hidden and grad weight.

Without a GPU, `TRITON_INTERPRET=1` runs the Triton tests on the CPU in Triton's interpreter (slow; for kernel work).
"""

import zlib

import pytest
import torch
import torch.nn.functional as F

from tunelab.kernels import reference

# (N tokens, d, V, chunk_size): one token; chunks that do not divide N; vocabularies that are primes or not powers
# of two, one of them just above 4096 (the kernel's block over V).
SHAPES = [(1, 64, 577, 4096), (7, 32, 1000, 3), (129, 48, 4099, 50), (40, 16, 97, 40)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
GRAD_OUTPUT = 0.37  # not 1, so that the backward's rescaling is checked

# Reference vs float64 truth, relative error: the reference rounds the logits to the dtype before its fp32
# softmax (a logit of size ~3 is off by up to 3 * 2^-9 in bf16), and its gradients are rounded to the dtype once
# more; the loss stays within ~3e-4 and the gradients within about one ulp (bf16 3.9e-3, fp16 4.9e-4). The bounds
# are about twice that.
TRUTH_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
# Triton vs reference: the logits come from the same cuBLAS call on both sides, the loss is an fp32 sum in a
# different order (1e-5). dlogits is rounded to the dtype on both sides (one-ulp flips: bf16 3.9e-3, fp16 4.9e-4)
# and grad_W is summed over chunks in the dtype (one rounding per chunk on both sides): about twice one ulp.
LOSS_TOL = 1e-5
GRAD_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def make_inputs(shape, dtype, device="cpu", ignore_index=-100):
    n, d, v, _ = shape
    g = torch.Generator().manual_seed(zlib.crc32(repr((shape, dtype)).encode()))
    hidden = torch.randn(n, d, generator=g).to(device, dtype)
    weight = (torch.randn(v, d, generator=g) * 2 / d**0.5).to(device, dtype)  # logits of std ~2
    labels = torch.randint(0, v, (n,), generator=g)
    labels[1::4] = ignore_index  # token 0 always counts
    return hidden, weight, labels.to(device)


def run(fn, hidden, weight, labels, weight_grad=True, **kwargs):
    hidden = hidden.detach().clone().requires_grad_()
    weight = weight.detach().clone().requires_grad_(weight_grad)
    loss = fn(hidden, weight, labels, **kwargs)
    (loss * GRAD_OUTPUT).backward()
    return loss, hidden.grad, weight.grad


def ground_truth(hidden, weight, labels, ignore_index=-100, chunk_size=None):
    logits = hidden.double() @ weight.double().T
    return F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_reference_matches_float64_ground_truth(shape, dtype, rel_error):
    hidden, weight, labels = make_inputs(shape, dtype)
    loss, dh, dw = run(reference.linear_cross_entropy, hidden, weight, labels, chunk_size=shape[3])
    loss64, dh64, dw64 = run(ground_truth, hidden, weight, labels)
    assert loss.dtype == torch.float32 and dh.dtype == dtype and dw.dtype == dtype
    for got, want in ((loss, loss64), (dh, dh64), (dw, dw64)):
        assert rel_error(got, want) < TRUTH_TOL[dtype]


@pytest.mark.triton
@pytest.mark.parametrize("weight_grad", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [(300, 256, 32000, 128)])
def test_triton_matches_reference(shape, dtype, weight_grad, rel_error, triton_device):
    from tunelab.kernels.cross_entropy import linear_cross_entropy

    hidden, weight, labels = make_inputs(shape, dtype, triton_device)
    loss, dh, dw = run(linear_cross_entropy, hidden, weight, labels, weight_grad, chunk_size=shape[3])
    loss_ref, dh_ref, dw_ref = run(reference.linear_cross_entropy, hidden, weight, labels, weight_grad,
                                   chunk_size=shape[3])  # fmt: skip
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert rel_error(loss, loss_ref) < LOSS_TOL
    assert dh.dtype == dtype and rel_error(dh, dh_ref) < GRAD_TOL[dtype]
    if weight_grad:
        assert dw.dtype == dtype and rel_error(dw, dw_ref) < GRAD_TOL[dtype]
    else:
        assert dw is None


@pytest.mark.triton
def test_triton_custom_ignore_index_all_ignored_and_no_grad(rel_error, triton_device):
    from tunelab.kernels.cross_entropy import linear_cross_entropy

    shape = (9, 32, 1000, 4)
    hidden, weight, labels = make_inputs(shape, torch.float32, triton_device, ignore_index=5)
    got = run(linear_cross_entropy, hidden, weight, labels, ignore_index=5, chunk_size=4)
    want = run(reference.linear_cross_entropy, hidden, weight, labels, ignore_index=5, chunk_size=4)
    for g, w in zip(got, want):
        assert rel_error(g, w) < GRAD_TOL[torch.float32]
    all_ignored = torch.full_like(labels, -100)
    loss, dh, dw = run(linear_cross_entropy, hidden, weight, all_ignored)
    assert loss.item() == 0.0 and not dh.any() and not dw.any()
    with torch.no_grad():
        assert rel_error(linear_cross_entropy(hidden, weight, labels, 5), want[0]) < LOSS_TOL


@pytest.mark.triton
def test_triton_second_backward_is_refused(triton_device):
    from tunelab.kernels.cross_entropy import linear_cross_entropy

    hidden, weight, labels = make_inputs((5, 16, 100, 2), torch.float32, triton_device)
    loss = linear_cross_entropy(hidden.requires_grad_(), weight, labels)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()


@pytest.mark.gpu  # measures CUDA memory
@pytest.mark.triton
def test_triton_keeps_one_chunk_of_logits(triton_device):
    from tunelab.kernels.cross_entropy import linear_cross_entropy

    n, d, v, chunk = 2048, 256, 32000, 512
    hidden, weight, labels = make_inputs((n, d, v, chunk), torch.bfloat16, triton_device)
    hidden.requires_grad_()
    weight.requires_grad_()

    def peak_extra(fn):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn(hidden, weight, labels, chunk_size=chunk).backward()
        torch.cuda.synchronize()
        hidden.grad = weight.grad = None
        return torch.cuda.max_memory_allocated() - start

    fused, ref = peak_extra(linear_cross_entropy), peak_extra(reference.linear_cross_entropy)
    # One (chunk, V) bf16 logits block (32.8 MB) + grad_h (1 MB) + grad_W (16.4 MB) + cuBLAS workspace; the
    # reference keeps fp32 logits of every chunk for its backward (262 MB).
    assert fused < 80e6, fused
    assert fused < ref / 3, (fused, ref)
