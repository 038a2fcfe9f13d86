"""DPO training throughput and memory: tunelab's `task: dpo` step against TRL's DPOTrainer, same model shape, data,
sequence lengths, batch and LoRA settings, one process each.

Random-init weights of a real shape (speed and memory do not depend on weight values); P preference pairs of
random token ids, each row = prompt (--prompt tokens) + answer (--answer tokens) + EOS, the same P pairs every step
(so the loss must fall: a benchmark of a model that does not learn proves nothing). LoRA r=16, alpha=16 on q, k, v,
o, gate, up, down; gradient checkpointing; bf16; AdamW (fused); constant lr. tokens/s counts the real tokens of the
chosen and rejected rows of a step over the median step time (steps 5..N); peak memory is
`torch.cuda.max_memory_allocated/reserved` over the training steps (the model already on the device).

The reference log-probs: tunelab computes them once before training (the base with adapters off) and reads them
from the rows; TRL by default runs the reference forward inside every step, or, with --precompute-ref
(`precompute_ref_log_probs=True`), once before training as tunelab does. Both are measured; the time of a
precomputation is reported as ref_s, outside the steps.

On the GPU machine, with ../shared/bench's bundle carried as .anchors + .pk (TRL and datasets live in .site):
    python3 benchmarks/dpo_bench.py --impl tunelab --out $OUT/dpo.jsonl
    PYTHONPATH=$PWD/.site python3 benchmarks/dpo_bench.py --impl trl --out $OUT/dpo.jsonl
    PYTHONPATH=$PWD/.site python3 benchmarks/dpo_bench.py --impl trl --precompute-ref --out $OUT/dpo.jsonl
    python3 benchmarks/dpo_bench.py --table --out $OUT/dpo.jsonl
(scripts/gpu_dpo_bench.sh runs all four.) `--shape tiny` runs on a CPU in seconds, as a smoke test.
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

import torch  # noqa: E402
from train_bench import SHAPES, TARGETS  # noqa: E402

GIB = 2**30
EOS = 2  # ids 0..2 are <unk>/pad, <s>, </s> in the word-level tokenizer of the TRL side; data ids start at 3


def make_pairs(args) -> list[tuple[list[int], list[int], list[int]]]:
    """P (prompt, chosen, rejected) id lists, the answers without EOS; the same for both implementations."""
    gen = torch.Generator().manual_seed(0)
    vocab = SHAPES[args.shape]["vocab_size"]

    def ids(n: int) -> list[int]:
        return torch.randint(3, vocab, (n,), generator=gen).tolist()

    return [(ids(args.prompt), ids(args.answer), ids(args.answer)) for _ in range(args.pairs)]


def finish(args, name: str, step_times: list[float], losses: list[float], extra: dict) -> dict:
    steady = step_times[4:] if len(step_times) > 5 else step_times
    median = statistics.median(steady)
    tokens = 2 * args.pairs * (args.prompt + args.answer + 1)
    cuda = torch.cuda.is_available()
    record = {
        "config": name,
        "shape": args.shape,
        "pairs": args.pairs,
        "prompt": args.prompt,
        "answer": args.answer,
        "steps": len(step_times),
        "median_s": round(median, 4),
        "tokens_per_s": round(tokens / median, 1),
        "train_peak_alloc_gib": round(torch.cuda.max_memory_allocated() / GIB, 2) if cuda else None,
        "train_peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2) if cuda else None,
        "losses": [round(x, 4) for x in losses],
        "versions": {"torch": torch.__version__, "gpu": torch.cuda.get_device_name() if cuda else "cpu"},
        **extra,
    }
    print(json.dumps(record), flush=True)
    print(
        f"SUMMARY {name} [{args.shape}]: {record['tokens_per_s']:,.0f} tok/s, median {median * 1e3:.1f} ms, peak alloc "
        f"{record['train_peak_alloc_gib']} GiB reserved {record['train_peak_reserved_gib']} GiB, loss {losses[0]:.4f} "
        f"-> {losses[-1]:.4f}",
        flush=True,
    )
    assert len(losses) >= 2 and statistics.mean(losses[-2:]) < losses[0], f"loss did not fall: {losses}"
    if args.out:
        with args.out.open("a") as f:
            f.write(json.dumps(record) + "\n")
    return record


def run_tunelab(args) -> dict:
    from train_bench import build

    from tunelab.config import DpoConfig
    from tunelab.tasks.dpo import cache_reference, make_task
    from tunelab.tasks.preference_data import PreferenceRow
    from tunelab.training.step import train_step

    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # as `tunelab train` sets it
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build(args.shape, "lora", 16, True, device)  # LoRA r=16, alpha=16 on TARGETS, checkpointing on
    rows = []
    for prompt, chosen, rejected in make_pairs(args):
        c, r = prompt + chosen + [EOS], prompt + rejected + [EOS]
        mask = [-100] * len(prompt)
        rows.append(PreferenceRow(c, mask + c[len(prompt) :], r, mask + r[len(prompt) :], "bench", 0))
    task = make_task(DpoConfig(loss="sigmoid", beta=0.1))
    tic = time.perf_counter()
    cache_reference(model, rows, args.pairs, 0, device)
    ref_s = time.perf_counter() - tic
    (batch,) = task.make_batches(rows, args.pairs, 0, shuffle=False, seed=0, epoch=0)
    batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, fused=device == "cuda" or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for _ in range(args.steps):
        if device == "cuda":
            torch.cuda.synchronize()
        tic = time.perf_counter()
        stats = train_step(model, [batch], optimizer, scheduler, 1.0, task)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - tic)
        losses.append(stats["loss"])
    return finish(args, "tunelab_dpo_lora_bf16", times, losses, {"ref_s": round(ref_s, 2)})


def run_trl(args) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    cuda = torch.cuda.is_available()
    shape = {k: v for k, v in SHAPES[args.shape].items() if k != "model_type"}
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"t{i}": i for i in range(3, shape["vocab_size"])}
    word_level = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_level, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<unk>"
    )
    config = LlamaConfig(**shape, bos_token_id=1, eos_token_id=EOS, pad_token_id=0, tie_word_embeddings=False)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if cuda else torch.float32)
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(default)
    model.config._attn_implementation = "sdpa"

    def text(ids: list[int]) -> str:
        return " ".join(f"t{i}" for i in ids)

    pairs = make_pairs(args)
    # TRL tokenizes prompt + chosen as one string: the answer's leading space keeps the words apart
    rows = [{"prompt": text(p), "chosen": " " + text(c), "rejected": " " + text(r)} for p, c, r in pairs] * args.steps
    dataset = Dataset.from_list(rows)
    dpo_args = DPOConfig(
        output_dir="/tmp/dpo_bench_trl",
        per_device_train_batch_size=args.pairs,
        gradient_accumulation_steps=1,
        max_steps=args.steps,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        max_length=args.prompt + args.answer + 1,
        dataloader_num_workers=0,
        optim="adamw_torch_fused" if cuda else "adamw_torch",
        seed=0,
        disable_tqdm=True,
        bf16=cuda,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        beta=0.1,
        loss_type=["sigmoid"],
        precompute_ref_log_probs=args.precompute_ref,
    )
    peft_config = LoraConfig(
        r=16, lora_alpha=16, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", target_modules=TARGETS
    )

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.losses, self.began = [], [], None

        def on_train_begin(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            self.began = time.perf_counter()

        def on_step_begin(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
            self.tic = time.perf_counter()

        def on_step_end(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.tic)

        def on_log(self, args_, state, control, logs=None, **k):
            if logs and "loss" in logs:
                self.losses.append(logs["loss"])

    timer = Timer()
    tic = time.perf_counter()
    trainer = DPOTrainer(
        model=model,
        args=dpo_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[timer],
    )
    first = trainer.train_dataset[0]
    lengths = (len(first["prompt_ids"]), len(first["chosen_ids"]), len(first["rejected_ids"]))
    assert lengths == (args.prompt, args.answer + 1, args.answer + 1), f"TRL tokenized the rows to {lengths}"
    trainer.train()
    setup_s = timer.began - tic  # dataset tokenization (and, with --precompute-ref, the reference pass)
    name = "trl_dpo_lora_bf16" + ("_precompute_ref" if args.precompute_ref else "")
    return finish(args, name, timer.times, timer.losses, {"ref_s": round(setup_s, 2), "trl_versions": _versions()})


def _versions() -> dict:
    import importlib.metadata as md

    return {p: md.version(p) for p in ("trl", "transformers", "peft", "datasets")}


def table(path: Path) -> str:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = ["| config | tokens/s | peak alloc / reserved GiB | ref_s |", "|---|---:|---|---:|"]
    for r in records:
        lines.append(
            f"| {r['config']} | {r['tokens_per_s']:,.0f} | {r['train_peak_alloc_gib']} / "
            f"{r['train_peak_reserved_gib']} | {r.get('ref_s')} |"
        )
    ours = [r for r in records if r["config"].startswith("tunelab_")]
    for o in ours:
        for t in (r for r in records if r["config"].startswith("trl_") and r["shape"] == o["shape"]):
            mem = (o["train_peak_reserved_gib"] or 0) / (t["train_peak_reserved_gib"] or float("nan"))
            lines.append(
                f"{o['config']} vs {t['config']}: tokens/s x{o['tokens_per_s'] / t['tokens_per_s']:.2f}, "
                f"peak reserved x{mem:.2f}"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impl", choices=["tunelab", "trl"], default="tunelab")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama2-7b")
    ap.add_argument("--pairs", type=int, default=4, help="preference pairs per step (2x rows)")
    ap.add_argument("--prompt", type=int, default=256, help="prompt tokens per row")
    ap.add_argument("--answer", type=int, default=767, help="answer tokens per row (EOS follows)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--precompute-ref", action="store_true", help="TRL: precompute_ref_log_probs=True")
    ap.add_argument("--out", type=Path, default=None, help="append the JSON record to this file")
    ap.add_argument("--table", action="store_true", help="print the table of --out and exit")
    args = ap.parse_args()
    if args.table:
        print(table(args.out))
        return
    (run_tunelab if args.impl == "tunelab" else run_trl)(args)


if __name__ == "__main__":
    main()
