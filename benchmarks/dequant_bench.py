"""NF4 dequantization on the GPU: the two Triton kernels side by side, and whether it can hide behind a GEMM.

Kernels: the lane-per-weight kernel and the word kernel (8 weights a lane) of `quant.nf4_triton`, on Llama-2-7B and
Llama-3-8B matrices, contiguous and into the rows of a wider matrix (as grouped projections write them): median
microseconds from CUDA graphs, TB/s counted as 0.5 byte read and 2 written per weight, and whether both give the same bits.

Overlap: can the dequantization hide behind the GEMM before it? Times, on Llama MLP shapes:

  - the gate/up GEMM (8192 x 4096 by 4096 x 22016) alone, and the down weight's dequantization (4096 x 11008) alone;
  - both one after the other on one stream (what a QLoRA layer does now);
  - the dequantization on a second stream while the GEMM runs on the first (a prefetch into a second buffer).

    PYTHONPATH=src python3 benchmarks/dequant_bench.py

Prints median times of 50 repeats and, for the overlap, the share of the dequantization that it hid.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from tunelab.quant.nf4_ops import quantize_nf4
from tunelab.quant.nf4_triton import dequantize_nf4_triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cuda_timing import graphed_ms  # noqa: E402


def probe(tokens: int, d: int, ff: int) -> None:
    dev, bf16 = "cuda", torch.bfloat16
    x = torch.randn(tokens, d, device=dev, dtype=bf16)
    w_up = torch.randn(2 * ff, d, device=dev, dtype=bf16) * 0.02
    q_down = quantize_nf4(torch.randn(d, ff, device=dev, dtype=bf16) * 0.02)
    y = torch.empty(tokens, 2 * ff, device=dev, dtype=bf16)
    buf = torch.empty(d, ff, device=dev, dtype=bf16)
    side = torch.cuda.Stream()

    def gemm():
        torch.mm(x, w_up.T, out=y)

    def dequant():
        dequantize_nf4_triton(q_down, out=buf)

    def serial():
        gemm()
        dequant()

    def overlapped():
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            dequant()
        gemm()
        torch.cuda.current_stream().wait_stream(side)

    t_gemm, t_deq = graphed_ms(gemm), graphed_ms(dequant)
    t_serial, t_over = graphed_ms(serial), graphed_ms(overlapped)
    flops = 2 * tokens * d * 2 * ff
    moved = q_down.numel * 2.5
    hidden = (t_serial - t_over) / t_deq
    print(
        f"tokens {tokens} d {d} ff {ff}: gemm {t_gemm:.3f} ms ({flops / t_gemm / 1e9:.0f} TFLOP/s), dequant "
        f"{t_deq:.3f} ms ({moved / t_deq / 1e9:.2f} TB/s), serial {t_serial:.3f}, overlapped {t_over:.3f}: "
        f"{hidden:.0%} of the dequantization hidden"
    )


def kernels(rows: int, cols: int, extra: int) -> None:
    dev, bf16 = "cuda", torch.bfloat16
    q = quantize_nf4(torch.randn(rows, cols, device=dev, dtype=bf16) * 0.02)
    wide = torch.empty(rows, cols + extra, device=dev, dtype=bf16)
    out = wide[:, :cols] if extra else torch.empty(rows, cols, device=dev, dtype=bf16)
    times, results = {}, {}
    for words in (False, True):
        times[words] = graphed_ms(lambda words=words: dequantize_nf4_triton(q, out=out, words=words)) * 1e3
        results[words] = out.clone()
    same = torch.equal(results[False].view(torch.int16), results[True].view(torch.int16))
    rate = {w: q.numel * 2.5 / (t * 1e-6) / 1e12 for w, t in times.items()}
    print(
        f"  {rows} x {cols}{f' into rows {cols + extra} wide' if extra else ''}: per weight {times[False]:.1f} us "
        f"({rate[False]:.2f} TB/s), words {times[True]:.1f} us ({rate[True]:.2f} TB/s): "
        f"{times[False] / times[True]:.2f}x, same bits {same}"
    )


def sweep(rows: int, cols: int) -> None:
    """The word kernel's weights a program and warps, on one matrix."""
    q = quantize_nf4(torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16) * 0.02)
    out = torch.empty(rows, cols, device="cuda", dtype=torch.bfloat16)
    cells = []
    for block in (1024, 2048, 4096, 8192, 16384):
        for warps in (2, 4, 8):
            t = graphed_ms(lambda b=block, w=warps: dequantize_nf4_triton(q, out=out, block=b, num_warps=w)) * 1e3
            cells.append(f"{block}/{warps}w {t:.1f}")
    print(f"  word kernel, {rows} x {cols}, us by weights a program / warps: " + ", ".join(cells))


def main() -> None:
    torch.manual_seed(0)
    print("kernels (lane per weight vs word of 8 weights):")
    for rows, cols, extra in (
        (4096, 4096, 0), (11008, 4096, 0), (4096, 11008, 0), (14336, 4096, 0), (1024, 4096, 0),
        (11008, 4096, 32), (4096, 4096, 48),
    ):  # fmt: skip
        kernels(rows, cols, extra)
    sweep(11008, 4096)
    print("overlap (dequantization on a second stream during the gate/up GEMM):")
    for tokens, d, ff in ((8192, 4096, 11008), (4096, 4096, 11008), (8192, 4096, 14336)):
        probe(tokens, d, ff)


if __name__ == "__main__":
    main()
