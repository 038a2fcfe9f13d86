"""Kernels compiled for an H100/H200 (sm_90) on any machine with Triton, GPU or not.

Triton's interpreter (TRITON_INTERPRET=1, how the other kernel tests run without a GPU) runs a kernel's Python
directly and misses errors of its compiler's frontend (a variable whose type differs between branches, a constexpr
used as a value); compiling to PTX finds them without a GPU. Where Triton is not installed, or runs interpreted,
this skips."""

import os

import pytest

triton = pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") == "1":  # the kernels are then Python functions, with nothing to compile
    pytest.skip("TRITON_INTERPRET=1: the kernels run in Triton's interpreter", allow_module_level=True)


def _compile(fn, signature: dict[str, str], constants: dict[str, object]) -> str:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {**signature, **dict.fromkeys(constants, "constexpr")}
    return triton.compile(ASTSource(fn, signature, constants), target=GPUTarget("cuda", 90, 32)).asm["ptx"]


@pytest.mark.parametrize("members", [1, 2, 3])
def test_the_stacking_kernel_compiles_for_sm90(members):
    from tunelab.kernels import lora_stack

    signature = {"w_ptr": "*bf16"} | dict.fromkeys(
        ("ld", "width", "total_out", "total_rank", "right_programs", "bottom_col_tiles"), "i32"
    )
    for i in range(lora_stack.MAX_MEMBERS):
        signature |= {f"b{i}": "*fp32", f"a{i}": "*fp32", f"s{i}": "fp32", f"o{i}": "i32", f"r{i}": "i32"}
    ptx = _compile(
        lora_stack._stack_kernel, signature, dict(K=members, BLOCK_O=64, BLOCK_R=64, BLOCK_A=16, BLOCK_W=256)
    )
    assert ".entry _stack_kernel" in ptx


@pytest.mark.parametrize("has_res", [False, True])
def test_the_rms_norm_backward_compiles_for_sm90(has_res):
    from tunelab.kernels import rms_norm

    signature = dict.fromkeys(("dy_ptr", "x_ptr", "w_ptr", "dres_ptr", "dx_ptr"), "*bf16") | {
        "rstd_ptr": "*fp32",
        "dw_partial_ptr": "*fp32",
    }
    signature |= dict.fromkeys(("dy_stride", "x_stride", "dres_stride", "dx_stride", "n_rows", "n_cols"), "i32")
    constants = dict(BLOCK_M=1, BLOCK=4096, COMPUTE_DW=True, HAS_RES=has_res)
    ptx = _compile(rms_norm._rms_norm_backward_kernel, signature, constants)
    assert ".entry _rms_norm_backward_kernel" in ptx


def test_the_fp8_row_quantization_compiles_for_sm90():
    from tunelab.quant import fp8_triton

    signature = {"x_ptr": "*bf16", "q_ptr": "*fp8e4nv", "scale_ptr": "*fp32", "n_cols": "i32", "x_stride": "i32"}
    ptx = _compile(fp8_triton._quantize_rows_kernel, signature, dict(CHUNK=4096, MIN_AMAX=1e-12))
    assert ".entry _quantize_rows_kernel" in ptx
    assert "cvt.rn.satfinite.e4m3x2.f32" in ptx  # one rounding to nearest, straight from fp32


def test_the_nf4_to_fp8_dequantization_compiles_for_sm90():
    from tunelab.quant import nf4_triton

    signature = {"words_ptr": "*i32", "absmax_q_ptr": "*u8", "absmax2_ptr": "*fp32", "offset_ptr": "*fp32"}
    signature |= {"code4_ptr": "*fp32", "code8_ptr": "*fp32", "out_ptr": "*fp8e4nv", "n_words": "i32"}
    signature |= {"out_row_stride": "i32", "scale_ptr": "*fp32"}
    constants = dict(N_COLS=1, STRIDED=False, WORDS=512, SCALED=True)
    ptx = _compile(nf4_triton._dequantize_words_kernel, signature, constants)
    assert ".entry _dequantize_words_kernel" in ptx
    assert "cvt.rn.satfinite.e4m3x2.f32" in ptx


def test_the_transposing_nf4_to_fp8_dequantization_compiles_for_sm90():
    from tunelab.quant import fp8_triton

    signature = {"packed_ptr": "*u8", "absmax_q_ptr": "*u8", "absmax2_ptr": "*fp32", "offset_ptr": "*fp32"}
    signature |= {"code4_ptr": "*fp32", "code8_ptr": "*fp32", "scale_ptr": "*fp32", "out_ptr": "*fp8e4nv"}
    signature |= {"n_rows": "i32", "n_cols": "i32", "out_stride": "i32"}
    ptx = _compile(fp8_triton._dequantize_transposed_kernel, signature, dict(TILE=64))
    assert ".entry _dequantize_transposed_kernel" in ptx
    assert "cvt.rn.satfinite.e4m3x2.f32" in ptx
