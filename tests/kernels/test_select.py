"""The implementation switch: `select` bundles, its errors, and that importing the package touches neither torch
nor Triton."""

import subprocess
import sys

import pytest
import torch

from tunelab.errors import ConfigError
from tunelab.kernels import Ops, reference, select

FIELDS = ["rms_norm", "apply_rope", "swiglu", "attention", "linear_cross_entropy", "lora_linear"]


def test_reference_bundle_is_the_reference_functions():
    ops = select("reference")
    assert [getattr(ops, name) for name in FIELDS] == [getattr(reference, name) for name in FIELDS]
    with pytest.raises(AttributeError):
        ops.rms_norm = None  # frozen


def test_unknown_implementation_names_the_choices():
    with pytest.raises(ConfigError, match="auto, triton, reference"):
        select("fast")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_triton_without_gpu_is_a_config_error_and_auto_falls_back():
    with pytest.raises(ConfigError, match="CUDA GPU"):
        select("triton")
    x, w = torch.randn(3, 10), torch.randn(10)
    assert torch.equal(select("auto").rms_norm(x, w, 1e-6), reference.rms_norm(x, w, 1e-6))


@pytest.mark.gpu
@pytest.mark.triton
def test_auto_dispatches_by_device():
    from tunelab.kernels import rms_norm as fused_module

    ops, fused = select("auto"), select("triton")
    assert isinstance(ops, Ops) and fused.rms_norm is fused_module.rms_norm
    x, w = torch.randn(3, 10), torch.randn(10)
    assert torch.equal(ops.rms_norm(x, w, 1e-6), reference.rms_norm(x, w, 1e-6))  # CPU tensors: reference
    gx, gw = x.cuda().requires_grad_(), w.cuda()
    y = ops.rms_norm(gx, gw, 1e-6)
    assert y.grad_fn is not None and "RMSNorm" in type(y.grad_fn).__name__
    assert torch.allclose(y.cpu(), reference.rms_norm(x, w, 1e-6), atol=1e-5)


def test_import_loads_neither_torch_nor_triton():
    code = "import sys, tunelab, tunelab.kernels; print(sorted(m for m in ('torch', 'triton') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
