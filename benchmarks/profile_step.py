"""Where a training step's time and memory go, on the shapes of `train_bench.py`.

    python benchmarks/profile_step.py --shape llama2-7b --method lora --kernels   # GPU time by kernel and by kind
    python benchmarks/profile_step.py --shape llama2-7b --method qlora --offload --memory   # what grew the reserve
    python benchmarks/profile_step.py --shape llama2-7b --method qlora --batch 2 --no-checkpointing --graphs --kernels
    python benchmarks/profile_step.py --shape llama2-7b --method qlora --offload --fp8 --kernels   # train.fp8

--kernels profiles two steps after three warm-up steps and prints the CUDA time per kernel family (GEMM, attention,
our Triton kernels, elementwise, copies) and the GPU's idle share of the step. --memory records the allocator's
history from the model build on, and prints each growth of reserved memory with the allocated total at that moment
and the Python frames that asked for it, then the segments' free space at the end (fragmentation).
"""

from __future__ import annotations

import argparse
import collections
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from train_bench import SHAPES, build  # noqa: E402

GIB = 2**30
KINDS = [  # (kind, pattern on the kernel name), first match wins
    ("gemm", r"gemm|nvjet|cutlass|sm90_xmma|cublas|splitK"),
    ("attention", r"flash|cudnn|fmha|attn|sdpa"),
    ("triton", r"^triton|_kernel$|rms|rope|swiglu|nf4|cross_entropy"),
    ("copy", r"[Mm]emcpy|[Mm]emset|copy"),
    ("elementwise", r"elementwise|vectorized|reduce|unrolled|fill|index|cat|Foreach|foreach|adam"),
]


def step_fn(model, params, optimizer, ids, graphs: bool = False):
    if graphs:  # the micro-batch replayed from a CUDA graph, as `tunelab train` runs it (`training/graphs.py`)
        from tunelab.training.graphs import CapturedLoss

        captured = CapturedLoss(lambda m, b: m(b["ids"], labels=b["ids"]), params)
        scale = 1.0 / (ids.shape[0] * (ids.shape[1] - 1))

    def step():
        if graphs:
            captured(model, {"ids": ids}, scale)
        else:
            loss_sum, count = model(ids, labels=ids)
            (loss_sum / count).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if graphs:
            captured.zero_grads()
        else:
            optimizer.zero_grad(set_to_none=True)

    return step


def kernels(args, step) -> None:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    walls = []
    activities = [ProfilerActivity.CUDA] + ([ProfilerActivity.CPU] if args.who else [])
    with profile(activities=activities) as prof:
        for _ in range(2):
            torch.cuda.synchronize()
            tic = time.perf_counter()
            step()
            torch.cuda.synchronize()
            walls.append(time.perf_counter() - tic)
    by_kind: dict[str, float] = collections.Counter()
    by_name: dict[str, tuple[float, int]] = {}
    for e in prof.key_averages():
        if e.device_type == torch.autograd.DeviceType.CPU:  # torch ops (recorded for --who): not kernels
            continue
        t = e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total  # us over both steps
        if t <= 0:
            continue
        kind = next((k for k, pat in KINDS if re.search(pat, e.key)), "other")
        by_kind[kind] += t
        by_name[e.key] = (t, e.count)
    wall = sum(walls) * 1e6
    busy = sum(by_kind.values())
    print(
        f"KERNELS {args.shape} {args.method} batch {args.batch}: step {statistics.mean(walls) * 1e3:.1f} ms; "
        f"GPU busy {busy / wall:.1%} of the wall time (kernel times summed; overlap counts twice)"
    )
    for kind, t in by_kind.most_common():
        print(f"  {kind:12s} {t / 2e3:8.1f} ms/step  {t / busy:6.1%}")
    print("  top kernels (ms/step, calls/step):")
    for name, (t, n) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"    {t / 2e3:7.2f} {n // 2:5d}  {name[:150]}")
    gaps(prof)
    if args.who:
        launchers(prof, args.who)


def launchers(prof, pattern: str) -> None:
    """Which torch ops launched the kernels whose name matches `pattern`: each launching op with its enclosing ops
    (innermost last), by count per step. Eager steps only: a graph's replay launches its kernels with no op around."""
    sites: collections.Counter = collections.Counter()
    for event in prof.events():
        if any(re.search(pattern, k.name) for k in getattr(event, "kernels", ())):
            chain, parent = [], event
            while parent is not None and len(chain) < 4:
                chain.append(parent.name)
                parent = parent.cpu_parent
            sites[" < ".join(chain)] += 1
    print(f"  ops launching /{pattern}/ (count/step, op < enclosing ops):")
    for chain, n in sites.most_common(12):
        print(f"    {n // 2:5d}  {chain[:200]}")


def gaps(prof) -> None:
    """Where the GPU's compute work pauses: gaps between consecutive kernels (copies and memsets left out, they run
    beside), summed by the pair of kernels around them. A pause means the CPU had not queued the next kernel yet
    (launch overhead, Python, or a host wait); the profiler's own overhead inflates them somewhat."""
    spans = sorted(
        (e.time_range.start, e.time_range.end, e.name)
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA and not re.search(r"Memcpy|Memset", e.name)
    )
    sites: dict[str, list] = {}
    total, busy_end = 0.0, None
    previous = ""
    for start, end, name in spans:
        if busy_end is not None and start - busy_end > 20:  # us
            gap = start - busy_end
            total += gap
            key = f"{previous[:45]} -> {name[:45]}"
            sites.setdefault(key, [0.0, 0])
            sites[key][0] += gap
            sites[key][1] += 1
        if busy_end is None or end > busy_end:
            busy_end, previous = end, name
    print(f"  GPU compute pauses over 20 us: {total / 2e3:.1f} ms/step; largest sites (ms/step, count/step):")
    for key, (t, n) in sorted(sites.items(), key=lambda kv: -kv[1][0])[:15]:
        print(f"    {t / 2e3:7.2f} {n // 2:5d}  {key}")


def memory(args, step) -> None:
    for i in range(args.steps):
        step()
        torch.cuda.synchronize()
        stats = torch.cuda.memory_stats()
        print(
            f"  after step {i + 1}: peak alloc {stats['allocated_bytes.all.peak'] / GIB:.2f} reserved "
            f"{stats['reserved_bytes.all.peak'] / GIB:.2f} (large pool {stats['reserved_bytes.large_pool.peak'] / GIB:.2f}, "
            f"small pool {stats['reserved_bytes.small_pool.peak'] / GIB:.2f}) GiB"
        )
    snap = torch.cuda.memory._snapshot()
    allocated, reserved = 0, 0
    growth: dict[str, list] = {}
    order = []
    for event in snap["device_traces"][0]:
        action, size = event["action"], event["size"]
        if action == "alloc":
            allocated += size
        elif action == "free_completed":
            allocated -= size
        elif action in ("segment_alloc", "segment_map"):
            reserved += size
            frames = [
                f for f in event.get("frames", []) if "/tunelab/" in f["filename"] or "benchmarks/" in f["filename"]
            ]
            where = " < ".join(f"{Path(f['filename']).name}:{f['line']}:{f['name']}" for f in frames[:4]) or "?"
            if where not in growth:
                growth[where] = [0, 0, 0.0]
                order.append(where)
            entry = growth[where]
            entry[0] += 1
            entry[1] += size
            entry[2] = max(entry[2], allocated / GIB)
        elif action in ("segment_free", "segment_unmap"):
            reserved -= size
    print(
        f"MEMORY {args.shape} {args.method} batch {args.batch} offload {args.offload}: peak alloc "
        f"{torch.cuda.max_memory_allocated() / GIB:.2f} GiB, peak reserved {torch.cuda.max_memory_reserved() / GIB:.2f} GiB, "
        f"now alloc {torch.cuda.memory_allocated() / GIB:.2f} reserved {torch.cuda.memory_reserved() / GIB:.2f}"
    )
    print("  reserve growth, in order of first growth: times, GiB, allocated GiB at the latest growth, where")
    for where in order:
        n, size, alloc = growth[where]
        print(f"    {n:5d} {size / GIB:7.3f} {alloc:7.2f}  {where[:220]}")
    free_in_segments = sum(b["size"] for s in snap["segments"] for b in s["blocks"] if b["state"] != "active_allocated")
    print(
        f"  segments {len(snap['segments'])}, free inside them {free_in_segments / GIB:.3f} GiB; "
        f"largest free blocks (MiB): {sorted((b['size'] >> 20 for s in snap['segments'] for b in s['blocks'] if b['state'] != 'active_allocated'), reverse=True)[:8]}"
    )
    stats = torch.cuda.memory_stats()
    print(
        f"  num_alloc_retries {stats.get('num_alloc_retries')}, inactive_split peak "
        f"{stats.get('inactive_split_bytes.all.peak', 0) / GIB:.3f} GiB"
    )


def main() -> None:
    import os

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama2-7b")
    ap.add_argument("--method", choices=["lora", "qlora"], default="lora")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--offload", action="store_true")
    ap.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    ap.add_argument("--graphs", action="store_true", help="replay the forward and backward from a CUDA graph")
    ap.add_argument("--fp8", action="store_true", help="qlora: the NF4 base's products in FP8 (train.fp8)")
    ap.add_argument("--no-group", action="store_true", help="run q/k/v and gate/up adapters one by one")
    ap.add_argument("--kernels", action="store_true")
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--who", default=None, help="with --kernels: the ops that launch kernels matching this regex")
    args = ap.parse_args()
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    if args.memory:
        torch.cuda.memory._record_memory_history(max_entries=2_000_000)
    checkpointing = "offload" if args.offload else args.checkpointing
    model = build(args.shape, args.method, 16, checkpointing, "cuda")
    if args.no_group:
        from tunelab.peft.group import set_grouping

        set_grouping(model, False)
    if args.fp8:
        from tunelab.quant.linear import use_fp8_

        use_fp8_(model)
    print(
        f"  after build: alloc {torch.cuda.memory_allocated() / GIB:.2f} GiB, reserved {torch.cuda.memory_reserved() / GIB:.2f} GiB, "
        f"peak reserved {torch.cuda.max_memory_reserved() / GIB:.2f} GiB"
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-4, fused=True)
    ids = torch.randint(
        0, SHAPES[args.shape]["vocab_size"], (args.batch, args.seq), generator=torch.Generator().manual_seed(0)
    ).cuda()
    step = step_fn(model, params, optimizer, ids, args.graphs)
    if args.kernels:
        kernels(args, step)
    if args.memory:
        memory(args, step)


if __name__ == "__main__":
    main()
