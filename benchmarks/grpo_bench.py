"""GRPO throughput on the fast path: how fast the policy samples its answers, and how fast it trains on them.

Random-init weights of a real shape (speed does not depend on weight values), LoRA r=16 on q, k, v, o, gate, up,
down over a bf16 base (--method lora) or an NF4 base (--method qlora); P prompts of random token ids, G answers each.
One iteration is what task grpo does before and in an optimizer step (tasks/grpo.py):

1. generation: `models.decode.sample` of the P x G answers (KV cache, temperature 1, no stop id, so every answer is
   --answer tokens long): gen tokens/s = new tokens / seconds;
2. the fixed log-probs: the answers' per-token log p under the policy as it sampled and under the base (adapters
   off), no gradient (what `rollout` attaches to each micro-batch);
3. the train step: `training.step.train_step` with the grpo loss over the P x G rows in micro-batches of
   --micro-batch rows: train tokens/s = the rows' real tokens (prompt + answer) / seconds.

Advantages come from a reward with spread (the answer's share of even token ids), so the loss has a gradient.
Medians over the iterations after the first (warm-up); peak memory over all of them. One JSON line per run:

    python3 benchmarks/grpo_bench.py --shape llama2-7b --method qlora --out $OUT/grpo.jsonl
    python3 benchmarks/grpo_bench.py --shape tiny --iterations 2     # a CPU smoke test in seconds
    python3 benchmarks/grpo_bench.py --shape llama2-7b --method qlora --dora   # DoRA: each norm once a sampling

scripts/gpu_grpo.sh runs the GPU tests of task grpo and this benchmark with LoRA and QLoRA.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # as `tunelab train` runs

import torch  # noqa: E402
from train_bench import build  # noqa: E402

GIB = 2**30


def _sync(device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def _predicted(config, args) -> dict:
    """What `tunelab plan` predicts for this iteration: the memory model's peak (the sampler's KV cache and prefill
    among its phases) and the sampler's seconds (`training.speed.sample_time`), for the setup the bench runs."""
    from tunelab.training.memory import estimate
    from tunelab.training.memory_setup import Setup
    from tunelab.training.speed import sample_time

    setup = Setup(
        quantized=args.method == "qlora",
        rank=16,
        micro_batch=args.micro_batch,
        seq=args.prompt + args.answer,
        checkpointed=config.num_layers if args.checkpointing else 0,
        sampled=args.prompts * args.group,
        sample_len=args.prompt + args.answer,
        sample_prompt=args.prompt,
        dora=args.dora,
    )
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    found = estimate(config, setup)
    return {"peak": found.peak, "phase": found.peak_phase, "gen_s": sample_time(config, setup, name)}


def run(args) -> dict:
    from tunelab.config import GrpoConfig
    from tunelab.models.decode import SampleSettings, sample
    from tunelab.peft.dora import norms_held
    from tunelab.peft.lora import adapters_disabled
    from tunelab.tasks.grpo import collate, group_advantages, make_task
    from tunelab.tasks.log_probs import token_log_probs
    from tunelab.training.step import train_step

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build(args.shape, args.method, 16, args.checkpointing, device, args.dora)
    vocab = model.config.vocab_size
    task = make_task(GrpoConfig(num_generations=args.group, beta=0.04, rewards=["length"]))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device == "cuda" or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, vocab, (args.prompt,), generator=gen).tolist() for _ in range(args.prompts)]
    rows = [p for p in prompts for _ in range(args.group)]
    settings = SampleSettings(max_new_tokens=args.answer, temperature=1.0)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    gen_s, fixed_s, train_s, losses = [], [], [], []
    for it in range(args.iterations):
        sampler = torch.Generator(device).manual_seed(it)
        tic = _sync(device)
        with norms_held(model):  # as task grpo samples: a DoRA layer's norm once for the whole sampling
            answers = sample(model, rows, settings, pad_id=0, generator=sampler)
        gen_s.append(_sync(device) - tic)
        even = torch.tensor([sum(t % 2 == 0 for t in a) / max(len(a), 1) for a in answers])
        advantages = group_advantages(even, args.group)
        tic = _sync(device)
        batches = []
        for start in range(0, len(rows), args.micro_batch):
            part = range(start, min(start + args.micro_batch, len(rows)))
            batch = collate([rows[i] for i in part], [answers[i] for i in part], ["bench"] * len(part), 0)
            batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
            batch["advantages"] = advantages[start : start + args.micro_batch].to(device)
            with torch.no_grad(), norms_held(model):
                model.eval()
                batch["old"] = token_log_probs(model, batch)[0]
                with adapters_disabled(model):
                    batch["ref"] = token_log_probs(model, batch)[0]
                model.train()
            batch["step_figures"] = {}
            batches.append(batch)
        fixed_s.append(_sync(device) - tic)
        tic = _sync(device)
        stats = train_step(model, batches, optimizer, scheduler, 1.0, task)
        train_s.append(_sync(device) - tic)
        losses.append(stats["loss"])
    steady = slice(1, None) if args.iterations > 1 else slice(None)
    new_tokens = len(rows) * args.answer
    train_tokens = len(rows) * (args.prompt + args.answer)
    cuda = device == "cuda"
    predicted = _predicted(model.config, args)
    record = {
        "config": f"tunelab_grpo_{args.method}" + ("_dora" if args.dora else ""),
        "shape": args.shape,
        "prompts": args.prompts,
        "group": args.group,
        "prompt": args.prompt,
        "answer": args.answer,
        "micro_batch": args.micro_batch,
        "checkpointing": args.checkpointing,
        "iterations": args.iterations,
        "gen_s": round(statistics.median(gen_s[steady]), 3),
        "gen_tokens_per_s": round(new_tokens / statistics.median(gen_s[steady]), 1),
        "fixed_logp_s": round(statistics.median(fixed_s[steady]), 3),
        "train_s": round(statistics.median(train_s[steady]), 3),
        "train_tokens_per_s": round(train_tokens / statistics.median(train_s[steady]), 1),
        "iteration_s": round(statistics.median([a + b + c for a, b, c in zip(gen_s, fixed_s, train_s)][steady]), 3),
        "peak_alloc_gib": round(torch.cuda.max_memory_allocated() / GIB, 2) if cuda else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2) if cuda else None,
        "predicted_peak_gib": round(predicted["peak"] / GIB, 2),
        "predicted_peak_phase": predicted["phase"],
        "predicted_gen_s": round(predicted["gen_s"], 3),
        "losses": [round(x, 5) for x in losses],
        "versions": {"torch": torch.__version__, "gpu": torch.cuda.get_device_name() if cuda else "cpu"},
    }
    print(json.dumps(record), flush=True)
    print(
        f"SUMMARY grpo {args.method} [{args.shape}]: generation {record['gen_tokens_per_s']:,.0f} new tok/s "
        f"({len(rows)} rows x {args.answer}), train {record['train_tokens_per_s']:,.0f} tok/s, log-probs "
        f"{record['fixed_logp_s']} s, peak {record['peak_reserved_gib']} GiB (predicted "
        f"{record['predicted_peak_gib']} GiB, {record['predicted_peak_phase']}; generation predicted "
        f"{record['predicted_gen_s']} s, measured {record['gen_s']} s)",
        flush=True,
    )
    if args.out:
        with args.out.open("a") as f:
            f.write(json.dumps(record) + "\n")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="llama2-7b")
    parser.add_argument("--method", default="qlora", choices=("lora", "qlora"))
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step (P)")
    parser.add_argument("--group", type=int, default=8, help="answers per prompt (G)")
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    parser.add_argument("--answer", type=int, default=256, help="answer tokens (no stop id: every answer this long)")
    parser.add_argument("--micro-batch", type=int, default=16, help="rows per forward in the train step")
    parser.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--dora", action="store_true", help="DoRA adapters (peft/dora.py) instead of LoRA")
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.shape == "tiny" and not torch.cuda.is_available():
        args.prompts, args.group, args.prompt, args.answer, args.micro_batch = 2, 4, 16, 16, 4
    run(args)


if __name__ == "__main__":
    main()
