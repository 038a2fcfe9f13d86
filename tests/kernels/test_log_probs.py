"""Fused linear + per-token log-probabilities: the reference against a float64 ground truth (CPU), the Triton version
against the reference (CUDA, or the CPU under TRITON_INTERPRET=1): log p, grad hidden and grad weight, with a
different upstream gradient per token (the case the summed cross-entropy never meets), W frozen and W trained.
"""

import os
import zlib

import pytest
import torch

from tunelab.kernels import reference

# (N tokens, d, V, chunk_size): one token; chunks that do not divide N; vocabularies prime / not a power of two.
SHAPES = [(1, 64, 577, 4096), (7, 32, 1000, 3), (129, 48, 4099, 50)]
DTYPES = [torch.float32, torch.bfloat16]
# Tolerances as in test_cross_entropy.py (same logits, same row kernel): the reference rounds logits to the dtype
# before its fp32 log-softmax and its gradients once more (bf16: ~one ulp, 3.9e-3), about twice that as the bound.
TRUTH_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
GRAD_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}

DEVICE = "cuda" if torch.cuda.is_available() else "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else None
needs_triton = pytest.mark.skipif(DEVICE is None, reason="needs a CUDA device (or TRITON_INTERPRET=1)")


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape and torch.isfinite(actual).all()
    a, e = actual.double(), expected.double()
    return ((a - e).norm() / e.norm().clamp_min(1e-30)).item()


def make_inputs(shape, dtype, device="cpu"):
    n, d, v, _ = shape
    g = torch.Generator().manual_seed(zlib.crc32(repr((shape, dtype)).encode()))
    hidden = torch.randn(n, d, generator=g).to(device, dtype)
    weight = (torch.randn(v, d, generator=g) * 2 / d**0.5).to(device, dtype)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[1::4] = -100
    upstream = torch.randn(n, generator=g).to(device)  # a different gradient per token
    return hidden, weight, labels.to(device), upstream


def run(fn, hidden, weight, labels, upstream, weight_grad=True, **kwargs):
    hidden = hidden.detach().clone().requires_grad_()
    weight = weight.detach().clone().requires_grad_(weight_grad)
    logp = fn(hidden, weight, labels, **kwargs)
    (logp * upstream.to(logp.dtype)).sum().backward()
    return logp, hidden.grad, weight.grad


def ground_truth(hidden, weight, labels, chunk_size=None, temperature=1.0):
    logp = torch.log_softmax(hidden.double() @ weight.double().T / temperature, dim=-1)
    keep = labels != -100
    return torch.where(keep, logp.gather(1, labels.clamp(min=0)[:, None])[:, 0], 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_reference_matches_float64_ground_truth(shape, dtype):
    hidden, weight, labels, upstream = make_inputs(shape, dtype)
    logp, dh, dw = run(reference.linear_log_probs, hidden, weight, labels, upstream, chunk_size=shape[3])
    logp64, dh64, dw64 = run(ground_truth, hidden, weight, labels, upstream.double())
    assert logp.dtype == torch.float32 and logp.shape == (shape[0],)
    assert (logp[labels == -100] == 0).all() and (logp[labels != -100] < 0).all()
    for got, want in ((logp, logp64), (dh, dh64), (dw, dw64)):
        assert rel_error(got, want) < TRUTH_TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_reference_at_a_temperature_matches_float64_ground_truth(shape, dtype):
    """log softmax(h W^T / T) (grpo's sampling distribution) and its gradients; at T = 1 the plain op, bit for bit."""
    hidden, weight, labels, upstream = make_inputs(shape, dtype)
    got = run(reference.linear_log_probs, hidden, weight, labels, upstream, chunk_size=shape[3], temperature=0.7)
    want = run(ground_truth, hidden, weight, labels, upstream.double(), temperature=0.7)
    plain = run(ground_truth, hidden, weight, labels, upstream.double())
    for a, b, c in zip(got, want, plain):
        assert rel_error(a, b) < TRUTH_TOL[dtype] < rel_error(a, c)
    one = run(reference.linear_log_probs, hidden, weight, labels, upstream, chunk_size=shape[3], temperature=1.0)
    default = run(reference.linear_log_probs, hidden, weight, labels, upstream, chunk_size=shape[3])
    assert all(torch.equal(a, b) for a, b in zip(one, default))


def test_log_probs_are_minus_the_token_cross_entropy():
    hidden, weight, labels, _ = make_inputs(SHAPES[2], torch.float32)
    total = reference.linear_cross_entropy(hidden, weight, labels, chunk_size=50)
    assert torch.allclose(-reference.linear_log_probs(hidden, weight, labels, chunk_size=50).sum(), total, rtol=1e-6)


@needs_triton
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("weight_grad", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_matches_reference(shape, dtype, weight_grad, temperature):
    pytest.importorskip("triton")
    from tunelab.kernels.log_probs import linear_log_probs

    inputs = make_inputs(shape, dtype, DEVICE)
    kw = {"weight_grad": weight_grad, "chunk_size": shape[3], "temperature": temperature}
    want = run(reference.linear_log_probs, *inputs, **kw)
    got = run(linear_log_probs, *inputs, **kw)
    assert rel_error(got[0], want[0]) < 1e-5  # fp32 logsumexp of the same logits, another summation order
    assert rel_error(got[1], want[1]) < GRAD_TOL[dtype]
    if weight_grad:
        assert rel_error(got[2], want[2]) < GRAD_TOL[dtype]
    else:
        assert got[2] is None
