"""Where the CPU spends a training step (cProfile over a few steps after warm-up): at small micro-batches the GPU
waits for the CPU's launches, and this names the Python functions that cost the most.

    python benchmarks/cpu_profile.py --method qlora --offload --batch 1
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from train_bench import build  # noqa: E402


def arguments(doc: str) -> argparse.Namespace:
    """The options this script and launch_count.py share: the shape, method, batch and checkpointing of the step."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llama2-7b")
    ap.add_argument("--method", choices=["lora", "qlora"], default="qlora")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--offload", action="store_true")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--top", type=int, default=35)
    return ap.parse_args()


def training_step(args: argparse.Namespace):
    """A function running one training step of the model `args` describe (warmed up twice), for profilers to wrap."""
    model = build(args.shape, args.method, 16, "offload" if args.offload else True, "cuda")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    ids = torch.randint(0, 1000, (args.batch, args.seq), device="cuda")

    def step() -> None:
        loss_sum, count = model(ids, labels=ids)
        (loss_sum / count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    return step


def main() -> None:
    args = arguments(__doc__)
    step = training_step(args)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(args.steps):
        step()
        torch.cuda.synchronize()
    profiler.disable()
    stats = pstats.Stats(profiler).sort_stats("tottime")
    stats.print_stats(args.top)


if __name__ == "__main__":
    main()
