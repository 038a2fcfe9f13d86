"""Tokens/s of padded training with and without train.group_by_length, on a config's own data and model (default: the
company-FAQ example on the embedded model, CPU).

One model, built as `tunelab train` builds it; optimizer steps (`train_step`) alternate between the two batch orders
in rounds (grouped, plain, grouped, plain, ...), so that a machine whose load changes meanwhile slows both alike.
Tokens are real (non-pad) tokens, as `tunelab train` counts them; the padded share of each order is exact.

    PYTHONPATH=src python benchmarks/group_by_length.py [CONFIG] [--steps N] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from tunelab.config import load_config  # noqa: E402
from tunelab.data.batches import make_batches  # noqa: E402
from tunelab.training.optim import build_optimizer  # noqa: E402
from tunelab.training.prepare import load_inputs, load_model  # noqa: E402
from tunelab.training.step import train_step  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", default="examples/company_faq/config.yaml")
    ap.add_argument("--steps", type=int, default=0, help="optimizer steps per order per round (0: one epoch)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    cfg = load_config(args.config).config
    t = cfg.train
    inputs = load_inputs(cfg)
    built, _ = load_model(cfg, inputs)
    optimizer = build_optimizer(built.model, t.lr, t.weight_decay, t.optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    pad = inputs.tokenizer.pad_token_id
    orders = {
        grouped: make_batches(
            inputs.data.train, t.micro_batch, pad, shuffle=True, seed=t.seed, epoch=0, group_by_length=grouped
        )
        for grouped in (True, False)
    }
    for grouped, batches in orders.items():
        real = sum(int(b["attention_mask"].sum()) for b in batches)
        total = sum(b["attention_mask"].numel() for b in batches)
        print(f"group_by_length={grouped}: {len(batches)} micro-batches, padding {100 * (total - real) / total:.1f}%")
    rates: dict[bool, list[float]] = {True: [], False: []}
    for r in range(args.rounds):
        for grouped, batches in orders.items():
            steps = args.steps or len(batches)
            chosen = [batches[(r * steps + i) % len(batches)] for i in range(steps)]
            tic = time.perf_counter()
            for batch in chosen:
                train_step(built.model, [batch], optimizer, scheduler, t.max_grad_norm)
            seconds = time.perf_counter() - tic
            rates[grouped].append(sum(int(b["attention_mask"].sum()) for b in chosen) / seconds)
            print(f"round {r + 1}, group_by_length={grouped}: {rates[grouped][-1]:.0f} tokens/s", flush=True)
    grouped, plain = statistics.median(rates[True]), statistics.median(rates[False])
    print(f"median tokens/s: grouped {grouped:.0f}, plain {plain:.0f}, ratio {grouped / plain:.3f}")


if __name__ == "__main__":
    main()
