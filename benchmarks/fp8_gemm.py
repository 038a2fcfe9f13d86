"""The base-weight GEMMs of one 7B QLoRA micro-batch in bf16 and in FP8 (e4m3, `torch._scaled_mm`), with the cost of
quantizing their operands: what FP8 products could save on the fast path, measured before building anything.

    PYTHONPATH=src python3 benchmarks/fp8_gemm.py [--tokens 8192]

For each product it prints bf16 and FP8 (row-wise scales: one per token row, one per output column) times, the FP8
product's relative error against the bf16 one, and the time of quantizing the activation operand with torch ops.
Times are medians from CUDA graphs (`cuda_timing.graphed_ms`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cuda_timing import graphed_ms  # noqa: E402

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max


def rowwise(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """t (M, K) -> (fp8 (M, K), fp32 scale (M, 1)) with t ~ q * scale."""
    amax = t.abs().amax(dim=1, keepdim=True).float().clamp_min(1e-12)
    scale = amax / E4M3_MAX
    return (t.float() / scale).to(E4M3), scale


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--intermediate", type=int, default=11008)
    args = ap.parse_args()
    n, d, inter = args.tokens, args.hidden, args.intermediate
    bf = dict(device="cuda", dtype=torch.bfloat16)
    sq = torch.randn(8192, 8192, **bf)
    us = graphed_ms(lambda: sq @ sq, repeats=5) * 1e3
    print(f"ceiling bf16: 8192^3 {us:.0f} us = {2 * 8192**3 / (us * 1e-6) / 1e12:.0f} TFLOP/s")
    q8, s8 = rowwise(sq)
    one = torch.ones(1, 8192, device="cuda")
    us8 = graphed_ms(lambda: torch._scaled_mm(q8, q8.T, s8, one, out_dtype=torch.bfloat16), repeats=5) * 1e3
    print(f"ceiling fp8 : 8192^3 {us8:.0f} us = {2 * 8192**3 / (us8 * 1e-6) / 1e12:.0f} TFLOP/s")
    total_bf = total_f8 = total_q = 0.0
    # (name, in, out): forward x (n, in) @ W^T (in, out); backward dx = g (n, out) @ W (out, in)
    for name, i, o in (("q/k/v", d, 3 * d), ("gate/up", d, 2 * inter), ("o", d, d), ("down", inter, d)):
        w = torch.randn(o, i, **bf) * 0.02
        for direction, (a, b) in {
            "forward": (torch.randn(n, i, **bf), w.T),
            "backward dx": (torch.randn(n, o, **bf) * 1e-3, w),
        }.items():
            ref = a @ b
            ms_bf = graphed_ms(lambda a=a, b=b: a @ b)
            qa, sa = rowwise(a)
            qb_t, sb = rowwise(b.T.contiguous())  # (N, K) row-major: its transpose is the column-major operand
            out = torch._scaled_mm(qa, qb_t.T, sa, sb.T, out_dtype=torch.bfloat16)
            err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
            ms_f8 = graphed_ms(
                lambda qa=qa, qb_t=qb_t, sa=sa, sb=sb: torch._scaled_mm(qa, qb_t.T, sa, sb.T, out_dtype=torch.bfloat16)
            )
            ms_q = graphed_ms(lambda a=a: rowwise(a))
            flop = 2 * a.shape[0] * a.shape[1] * b.shape[1]
            total_bf, total_f8, total_q = total_bf + ms_bf, total_f8 + ms_f8, total_q + ms_q
            print(
                f"{name:8s} {direction:12s} bf16 {ms_bf * 1e3:7.1f} us {flop / ms_bf / 1e9:4.0f} TFLOP/s | "
                f"fp8 {ms_f8 * 1e3:7.1f} us {flop / ms_f8 / 1e9:5.0f} TFLOP/s x{ms_bf / ms_f8:.2f} | "
                f"quantize a {ms_q * 1e3:6.1f} us | rel err {err:.4f}"
            )
    print(
        f"sum: bf16 {total_bf:.3f} ms, fp8 {total_f8:.3f} ms + activation quantization {total_q:.3f} ms "
        f"(torch ops) = x{total_bf / (total_f8 + total_q):.2f}"
    )


if __name__ == "__main__":
    main()
