"""The GEMMs of one QLoRA micro-batch, one by one, against a square matmul: which shapes run below the ceiling.

A 7B layer at micro-batch 2 x 2048 (N = 4096 tokens) multiplies by the grouped projections' stacked matrix
(`peft.group`): its inner dimension is `in + R` (R = the group's ranks, 48 for q/k/v, 32 for gate/up), not 4096.
This prints, for each GEMM of the forward and the backward, its TFLOP/s as the layer runs it and with the inner
dimension rounded up to 64 and to 128 (zero columns), and the rank-wide adapter products, so that an unaligned
shape that cuBLAS runs slowly shows up as a ratio.

    PYTHONPATH=src python3 benchmarks/gemm_shapes.py [--tokens 4096]

Times are medians from CUDA graphs (`cuda_timing.graphed_ms`), bf16.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cuda_timing import graphed_ms  # noqa: E402


def rounded(n: int, to: int) -> int:
    return -(-n // to) * to


def time_mm(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(us, TFLOP/s) of a @ b into a preallocated output."""
    out = a.new_empty(a.shape[0], b.shape[1])
    ms = graphed_ms(lambda: torch.mm(a, b, out=out))
    return ms * 1e3, 2 * a.shape[0] * a.shape[1] * b.shape[1] / (ms * 1e-3) / 1e12


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--intermediate", type=int, default=11008)
    ap.add_argument("--kv", type=int, default=4096, help="k and v output width (fewer under grouped-query attention)")
    ap.add_argument("--r", type=int, default=16)
    args = ap.parse_args()
    n, d, inter, r = args.tokens, args.hidden, args.intermediate, args.r
    bf = dict(device="cuda", dtype=torch.bfloat16)
    sq = torch.randn(8192, 8192, **bf)
    us = graphed_ms(lambda: sq @ sq, repeats=5) * 1e3
    print(f"ceiling: 8192^3 {us:.0f} us = {2 * 8192**3 / (us * 1e-6) / 1e12:.0f} TFLOP/s")
    groups = {"q/k/v": (d + 2 * args.kv, 3 * r), "gate/up": (2 * inter, 2 * r)}
    for name, (out, R) in groups.items():
        for label, k in (("as run", d + R), ("K to 64", rounded(d + R, 64)), ("K to 128", rounded(d + R, 128))):
            # The layer's layout: x_ext (N, K) row-major, W_all (O + R, K) row-major; forward x_ext W_all[:O]^T,
            # backward g W_all[:O] with g (N, O).
            w = torch.randn(out + R, k, **bf) * 0.02
            x = torch.randn(n, k, **bf)
            g = torch.randn(n, out, **bf)
            fwd = time_mm(x, w[:out].T)
            bwd = time_mm(g, w[:out])
            print(
                f"{name:8s} {label:9s} K {k:6d}: forward {fwd[0]:7.1f} us {fwd[1]:4.0f} TFLOP/s, "
                f"backward dx {bwd[0]:7.1f} us {bwd[1]:4.0f} TFLOP/s"
            )
        x = torch.randn(n, d, **bf)
        a = torch.randn(R, d, **bf)
        g = torch.randn(n, out, **bf)
        xa = torch.randn(n, R, **bf)
        print(
            f"{name:8s} adapters: x A^T {time_mm(x, a.T)[0]:.1f} us, dA = gxa^T x {time_mm(xa.T, x)[0]:.1f} us, "
            f"dB = g^T xa {time_mm(g.T, xa)[0]:.1f} us"
        )
    for name, (i, o) in {"o": (d, d), "down": (inter, d)}.items():
        x = torch.randn(n, i, **bf)
        w = torch.randn(o, i, **bf)
        g = torch.randn(n, o, **bf)
        fwd, bwd = time_mm(x, w.T), time_mm(g, w)
        print(
            f"{name:8s} plain     K {i:6d}: forward {fwd[0]:7.1f} us {fwd[1]:4.0f} TFLOP/s, "
            f"backward dx {bwd[0]:7.1f} us {bwd[1]:4.0f} TFLOP/s"
        )


if __name__ == "__main__":
    main()
