"""How many kernels and host-side operations one training step issues, and what the host spends per step.

At small micro-batches the GPU waits for the CPU: this counts, over one step after warm-up, the CUDA launch calls
(runtime and driver API: cuLaunchKernel is how Triton launches), the aten operators, and the host time by operator
name (top rows), so a change that cuts launches can be measured by its count as well as by tokens/s.

    python benchmarks/launch_count.py --method qlora --offload --batch 1
"""

from __future__ import annotations

import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from cpu_profile import arguments, training_step  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402


def main() -> None:
    args = arguments(__doc__)
    step = training_step(args)
    torch.cuda.synchronize()
    # The time to issue one step's work, and to finish it: when issuing takes as long as finishing, the GPU has been
    # waiting for the host (CPU-bound).
    tic = time.perf_counter()
    step()
    issued = time.perf_counter() - tic
    torch.cuda.synchronize()
    total = time.perf_counter() - tic
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    launches = collections.Counter()
    host_ops = collections.Counter()
    host_us = collections.Counter()
    for e in prof.events():
        name = e.name
        if name in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx"):
            launches[name] += 1
        elif e.device_type == torch.autograd.DeviceType.CPU:
            host_ops[name] += 1
            host_us[name] += e.self_cpu_time_total
    print(f"step issued in {issued * 1e3:.1f} ms, finished in {total * 1e3:.1f} ms")
    print(f"launches per step: {dict(launches)} total {sum(launches.values())}")
    print(f"host operators per step: {sum(host_ops.values())}")
    for name, us in host_us.most_common(args.top):
        print(f"  {name[:70]:<70} {host_ops[name]:>6} calls {us / 1e3:>8.1f} ms self")


if __name__ == "__main__":
    main()
