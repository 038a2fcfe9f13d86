"""GPU timings for the kernel benchmarks: CUDA events around a call, and the same from a CUDA graph of many calls
(a launch from Python takes ~50 us, longer than many of our kernels: timed one by one, the GPU would wait for it)."""

from __future__ import annotations

import statistics

import torch


def median_ms(fn, iters: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of fn() between CUDA events, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def graphed_ms(fn, repeats: int = 20, iters: int = 50) -> float:
    """GPU milliseconds of one fn(), from a CUDA graph of `repeats` calls replayed `iters` times (median)."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeats):
            fn()
    return median_ms(graph.replay, iters=iters, warmup=5) / repeats
