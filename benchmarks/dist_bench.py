"""Throughput and memory of tunelab's step on several GPUs: the same code `tunelab train --nproc N` runs (the
ranks of training/distributed.py, DDP or FSDP2 from `parallelize`, `train_step` with the ranks), on the shapes of
train_bench.py, random-init weights. Run it under torchrun, once per rank count, and compare the lines:

    torchrun --standalone --nproc-per-node 1 benchmarks/dist_bench.py --shape llama2-7b --method lora --out R.jsonl
    torchrun --standalone --nproc-per-node 2 benchmarks/dist_bench.py --shape llama2-7b --method lora --out R.jsonl
    torchrun --standalone --nproc-per-node 2 benchmarks/dist_bench.py --shape llama2-7b --method full --out R.jsonl
    torchrun --standalone --nproc-per-node 2 benchmarks/dist_bench.py --shape llama3-70b --method qlora \
        --sharding fsdp2 --batch 1 --no-checkpointing --out R.jsonl

Each rank runs one micro-batch of --batch x --seq tokens per optimizer step (its own random ids, labels = ids, the
same batch every step so that the loss must fall); tokens/s counts all ranks' tokens, from the median step time
after warm-up. Rank 0 prints one JSON line and appends it to --out. Memory is each rank's peak allocated, the
largest over ranks: over the whole run, and over the training steps alone (after the model is built and sharded:
a QLoRA model is quantized whole on every rank before FSDP2 keeps 1/N of it, so the build's peak is the whole NF4
base); `nf4_gib_per_gpu` is what a rank holds of the NF4 base between layers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from train_bench import GIB, build  # noqa: E402

from tunelab.config import RunConfig  # noqa: E402
from tunelab.training.distributed import nf4_bytes_held, parallelize, session  # noqa: E402
from tunelab.training.step import train_step  # noqa: E402


def run(args) -> dict | None:
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    cuda = torch.cuda.is_available()  # the CPU (gloo) runs only to check the script: --shape tiny
    device = "cuda" if cuda else "cpu"
    with session(RunConfig()) as ranks:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        sharding = args.sharding or ("fsdp2" if args.method == "full" else "ddp")
        checkpointing = args.checkpointing and sharding == "ddp"  # FSDP2 does not take tunelab's recompute yet
        model = build(args.shape, args.method, args.r, checkpointing, device, one_process=False)  # DDP/FSDP2 hooks
        trained = parallelize(model, sharding, ranks)
        nf4_held = nf4_bytes_held(model)[0]
        build_peak = torch.cuda.max_memory_allocated() if cuda else 0
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=args.lr, fused=cuda or None)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        gen = torch.Generator().manual_seed(ranks.rank)
        vocab = model.config.vocab_size
        ids = torch.randint(0, vocab, (args.batch, args.seq), generator=gen).to(device)
        batch = {
            "input_ids": ids,
            "labels": ids,
            "attention_mask": torch.ones_like(ids),
            "position_ids": torch.arange(args.seq, device=device).expand(args.batch, -1),
        }
        times, losses = [], []
        for _ in range(args.steps):
            if cuda:
                torch.cuda.synchronize()
            tic = time.perf_counter()
            stats = train_step(trained, [batch], optimizer, scheduler, 1.0, ranks=ranks)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - tic)
            losses.append(stats["loss"])
        steps_peak = torch.cuda.max_memory_allocated() if cuda else 0
        peaks = torch.tensor([max(build_peak, steps_peak), steps_peak, nf4_held], dtype=torch.float64, device=device)
        if ranks.world > 1:
            dist.all_reduce(peaks, op=dist.ReduceOp.MAX)
        peak, steps_peak, nf4_held = (float(x) / GIB for x in peaks)
        steady = times[3:] if len(times) > 4 else times
        median = statistics.median(steady)
        record = {
            "config": f"tunelab_{args.method}_{sharding if ranks.world > 1 else 'single'}_x{ranks.world}",
            "shape": args.shape,
            "gpus": ranks.world,
            "seq": args.seq,
            "batch_per_gpu": args.batch,
            "checkpointing": checkpointing,
            "median_s": round(median, 4),
            "tokens_per_s": round(ranks.world * args.batch * args.seq / median, 1),
            "peak_alloc_gib_per_gpu": round(peak, 2),
            "steps_peak_alloc_gib_per_gpu": round(steps_peak, 2),
            "nf4_gib_per_gpu": round(nf4_held, 2),
            "losses": [round(x, 4) for x in losses],
            "versions": {"torch": torch.__version__, "gpu": torch.cuda.get_device_name() if cuda else "cpu"},
        }
        assert statistics.mean(losses[-3:]) < statistics.mean(losses[:3]), f"loss did not fall: {losses}"
        return record if ranks.main else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="llama2-7b")
    parser.add_argument("--method", default="lora", choices=("lora", "qlora", "full"))
    parser.add_argument("--sharding", choices=("ddp", "fsdp2"), help="default: fsdp2 for full, ddp for the adapters")
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    record = run(args)
    if record is not None:
        print("SUMMARY " + json.dumps(record), flush=True)
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
