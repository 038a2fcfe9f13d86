"""Training throughput and memory of tunelab's fast path, on the shapes of ../shared/bench's baselines.

Random-init weights of a real shape (speed and memory do not depend on weight values), every sequence SEQ tokens,
labels = input_ids, the same batch every step (so the loss must fall: a benchmark of a model that does not learn
proves nothing). Prints one JSON line per config and appends it to --out, next to the baselines' lines, then a
table with ratios against the baselines found in that file.

    python benchmarks/train_bench.py --shape llama2-7b --method lora --out $OUT/results.jsonl
    python benchmarks/train_bench.py --shape llama3-8b --method lora --no-checkpointing --out ...
    python benchmarks/train_bench.py --shape llama2-7b --method qlora --dora --out ...   # DoRA beside LoRA
    python benchmarks/train_bench.py --shape llama2-7b --method qlora --budget 24 --out ...   # the planner's choice
    python benchmarks/train_bench.py --shape llama2-7b --method qlora --offload --fp8 --out ...   # train.fp8
    python benchmarks/train_bench.py --table --out $OUT/results.jsonl

--budget GIB hands micro-batch, gradient accumulation (keeping --batch rows a step), checkpointed layers and offload
to the planner (`training.plan.plan`), as `tunelab train` with train.gpu_memory does, and prints its table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

SHAPES = {
    # Llama-2-7B as ../shared/bench builds it (rope_theta 10000)
    "llama2-7b": dict(
        model_type="llama",
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        intermediate_size=11008,
        vocab_size=32000,
        rms_norm_eps=1e-5,
        max_position_embeddings=4096,
        rope_theta=10000.0,
    ),
    "llama3-8b": dict(
        model_type="llama",
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        vocab_size=128256,
        rms_norm_eps=1e-5,
        max_position_embeddings=8192,
        rope_theta=500000.0,
    ),
    "llama3-70b": dict(
        model_type="llama",
        hidden_size=8192,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        intermediate_size=28672,
        vocab_size=128256,
        rms_norm_eps=1e-5,
        max_position_embeddings=8192,
        rope_theta=500000.0,
    ),
    "tiny": dict(
        model_type="llama",
        hidden_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=688,
        vocab_size=32000,
        rms_norm_eps=1e-5,
        max_position_embeddings=4096,
        rope_theta=10000.0,
    ),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GIB = 2**30


def flops_per_token(s: dict, seq: int, r: int) -> dict:
    """Matmul FLOPs per trained token, counted as ../shared/bench/README.md does (multiply-add = 2)."""
    d, L, ff, V = s["hidden_size"], s["num_hidden_layers"], s["intermediate_size"], s["vocab_size"]
    dkv = d * s["num_key_value_heads"] // s["num_attention_heads"]
    n_body = L * (2 * d * d + 2 * d * dkv + 3 * d * ff)
    n_head = V * d
    n_lora = L * r * ((d + d) * 2 + (d + dkv) * 2 + (d + ff) * 3)
    att = L * seq * d
    useful = 4 * (n_body + n_head) + 6 * n_lora + 6 * att
    return {"useful": useful, "with_recompute": useful + 2 * n_body + 2 * n_lora + 2 * att}


def matmul_ceiling() -> float:
    """bf16 matmul TFLOP/s on 8192^3, median of 20 after warm-up."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del a, b
    torch.cuda.empty_cache()
    return 2 * 8192**3 / statistics.median(times) / 1e12


def build(shape: str, method: str, r: int, checkpointing: bool, device: str, dora: bool = False, one_process=True):
    from tunelab.kernels import select
    from tunelab.kernels.lora import accumulate_into_grads
    from tunelab.models.llama import LlamaConfig, LlamaForCausalLM
    from tunelab.peft.lora import attach_lora
    from tunelab.quant.linear import materialize_quantized_

    config = LlamaConfig.from_hf(SHAPES[shape])
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build the weights in their final dtype: no fp32 copy of 7B parameters
    try:
        with torch.device("meta"):
            model = LlamaForCausalLM(config, select("auto"))
    finally:
        torch.set_default_dtype(default)
    torch.manual_seed(0)
    if method == "qlora":  # each linear is drawn in 16 bits on the device, quantized to NF4 and dropped: 70B fits
        materialize_quantized_(model, device, init_std=0.02)
    else:
        model = model.to_empty(device=device)
        model.init_weights(std=0.02)
    if method in ("lora", "qlora"):
        attach_lora(model, TARGETS, r=r, alpha=r, dora=dora)
        # as `tunelab train` in one process: the adapters' GEMMs add their gradients into .grad
        accumulate_into_grads([p for p in model.parameters() if p.requires_grad], one_process)
    model.gradient_checkpointing = checkpointing
    model.train()
    return model


def planned(args) -> tuple[int, int, int | None, bool | str, float | None]:
    """(micro_batch, grad_accum, checkpoint_layers, checkpointing, predicted peak GiB) for the run: the planner's
    choice and its peak under --budget, else what the flags say (no prediction)."""
    checkpointing = "offload" if args.offload else args.checkpointing
    if args.budget is None:
        return args.batch, 1, args.checkpoint_layers, checkpointing, None
    from tunelab.models.llama_config import LlamaConfig
    from tunelab.training.memory import GIB as PLAN_GIB
    from tunelab.training.memory_setup import Setup
    from tunelab.training.plan import plan

    setup = Setup(method="lora", quantized=args.method == "qlora", rank=args.r, optimizer=args.optimizer, seq=args.seq)
    setup = dataclasses.replace(setup, graphs=args.graphs, fp8=args.fp8)  # as train.fp8 plans: FP8's buffers, speeds
    result = plan(LlamaConfig.from_hf(SHAPES[args.shape]), setup, int(args.budget * PLAN_GIB), args.batch)
    print("\n".join([result.table(), *result.notes]), flush=True)
    c = result.chosen
    if c is None:
        raise SystemExit(result.reason)
    mode = ("offload" if c.candidate.offload else True) if c.candidate.checkpointed else False
    args.graphs = args.graphs and mode != "offload"  # offload waits on host copies: no graphs (training/graphs.py)
    return c.candidate.micro_batch, c.candidate.grad_accum, c.candidate.checkpointed, mode, c.peak / PLAN_GIB


def run(args) -> dict:
    from tunelab.peft.group import set_grouping

    # As `tunelab train` does: grow allocator segments instead of caching fixed blocks (less fragmentation).
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    ceiling = args.ceiling or (matmul_ceiling() if cuda else None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    micro_batch, grad_accum, checkpoint_layers, checkpointing, predicted = planned(args)
    model = build(args.shape, args.method, args.r, checkpointing, device, args.dora)
    model.model.checkpoint_layers = checkpoint_layers
    for layer in model.model.layers:
        layer.mlp_chunk_tokens = args.mlp_chunk or None
    set_grouping(model, False if args.no_group else None)
    if args.fp8:
        from tunelab.quant.linear import use_fp8_

        use_fp8_(model)  # as train.fp8: the NF4 base's products in FP8, the adapters one by one
    load_s = time.perf_counter() - t0
    alloc_after_load = torch.cuda.memory_allocated() / GIB if cuda else 0.0
    params = [p for p in model.parameters() if p.requires_grad]
    if args.optimizer == "adamw_8bit":
        from tunelab.training.adamw8bit import AdamW8bit

        optimizer = AdamW8bit(params, lr=args.lr)  # torch AdamW's defaults, moments in 8 bits
    else:
        optimizer = torch.optim.AdamW(params, lr=args.lr, fused=cuda or None)
    gen = torch.Generator().manual_seed(0)
    vocab = SHAPES[args.shape]["vocab_size"]
    ids = torch.randint(0, vocab, (args.batch, args.seq), generator=gen).to(device)

    captured = None
    if args.graphs:
        from tunelab.training.graphs import CapturedLoss

        captured = CapturedLoss(lambda m, b: m(b["ids"], labels=b["ids"]), params)
    scale = 1.0 / (micro_batch * (args.seq - 1) * grad_accum)  # every row's labels but its first token count

    step_times, losses, norms = [], [], []
    for _ in range(args.steps):
        if cuda:
            torch.cuda.synchronize()
        tic = time.perf_counter()
        total = 0.0
        for part in ids.split(micro_batch):  # grad_accum micro-batches, the loss divided once by all their tokens
            if captured is not None:
                loss_sum, _ = captured(model, {"ids": part}, scale)
            else:
                loss_sum, _ = model(part, labels=part)
                (loss_sum * scale).backward()
            total += loss_sum.detach() * scale
        loss = total
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if captured is not None:
            captured.zero_grads()
        else:
            optimizer.zero_grad(set_to_none=True)
        if cuda and args.release_cache:
            torch.cuda.empty_cache()  # as `tunelab train` does with train.release_memory
        if cuda:
            torch.cuda.synchronize()
        step_times.append(time.perf_counter() - tic)
        losses.append(loss.item())
        norms.append(norm.item())

    steady = step_times[4:] if len(step_times) > 5 else step_times
    median = statistics.median(steady)
    tokens_per_s = args.batch * args.seq / median
    flops = flops_per_token(SHAPES[args.shape], args.seq, args.r)
    name = f"tunelab_{args.method}_{'nf4' if args.method == 'qlora' else 'bf16'}" + (
        "_offload" if args.offload else "" if args.checkpointing else "_nogc"
    )
    name += "_dora" if args.dora else ""
    name += "_release" if args.release_cache else ""
    name += "_nogroup" if args.no_group else ""
    name += "_adamw8bit" if args.optimizer == "adamw_8bit" else ""
    name += "_graphs" if args.graphs else ""
    name += "_fp8" if args.fp8 else ""
    if args.budget is not None or checkpoint_layers is not None or micro_batch != args.batch:
        ckpt = "offload" if checkpointing == "offload" else "" if checkpointing else "none"
        name += f"_mb{micro_batch}x{grad_accum}_ckpt{checkpoint_layers if checkpointing else 0}{ckpt}"
        name += f"_plan{args.budget:g}" if args.budget is not None else ""
    record = {
        "config": name,
        "shape": args.shape,
        "seq": args.seq,
        "batch": args.batch,
        "checkpointing": checkpointing,
        "micro_batch": micro_batch,
        "grad_accum": grad_accum,
        "checkpoint_layers": checkpoint_layers,
        "budget_gib": args.budget,
        "planned_peak_gib": None if predicted is None else round(predicted, 2),  # the planner's, for the measured
        "steps": args.steps,
        "mlp_chunk_tokens": args.mlp_chunk,
        "optimizer": args.optimizer,
        "graphs": args.graphs,
        "fp8": args.fp8,
        "median_s": round(median, 4),
        "tokens_per_s": round(tokens_per_s, 1),
        "train_peak_alloc_gib": round(torch.cuda.max_memory_allocated() / GIB, 2) if cuda else None,
        "train_peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2) if cuda else None,
        "alloc_after_load_gib": round(alloc_after_load, 2),
        "load_s": round(load_s, 1),
        "ceiling_tflops": round(ceiling, 1) if ceiling else None,
        "mfu_useful": round(tokens_per_s * flops["useful"] / 1e12 / ceiling, 4) if ceiling else None,
        "hfu_recompute": round(tokens_per_s * flops["with_recompute"] / 1e12 / ceiling, 4)
        if ceiling and checkpointing and checkpoint_layers is None
        else None,
        "losses": [round(x, 4) for x in losses],
        "grad_norms": [round(x, 4) for x in norms],
        "versions": {"torch": torch.__version__, "gpu": torch.cuda.get_device_name() if cuda else "cpu"},
    }
    # A benchmark of a model that does not train proves nothing.
    assert all(map(lambda n: n == n and 0 < n < float("inf"), norms)), f"gradient norm not finite and positive: {norms}"
    assert statistics.mean(losses[-3:]) < statistics.mean(losses[:3]), (
        f"loss did not fall on a repeated batch: {losses}"
    )
    return record


def table(path: Path) -> str:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    ceiling = next((r for r in records if r.get("config") == "ceiling"), None)
    rows = [r for r in records if "tokens_per_s" in r]
    lines = ["| config | shape | tokens/s | peak alloc / reserved GiB | MFU (useful) |", "|---|---|---:|---|---:|"]
    for r in rows:
        mfu = f"{100 * r['mfu_useful']:.1f}%" if r.get("mfu_useful") else "-"
        lines.append(
            f"| {r['config']} | {r.get('shape', '')} | {r['tokens_per_s']:,.0f} | {r.get('train_peak_alloc_gib')} / {r.get('train_peak_reserved_gib')} | {mfu} |"
        )
    ours = [r for r in rows if r["config"].startswith("tunelab_")]
    theirs = [r for r in rows if not r["config"].startswith("tunelab_")]
    lines.append("")
    for o in ours:
        for t in theirs:
            if t.get("shape", "").split("-tiny")[0] != o["shape"]:
                continue
            speed = o["tokens_per_s"] / t["tokens_per_s"]
            mem = (
                (o["train_peak_reserved_gib"] / t["train_peak_reserved_gib"])
                if t.get("train_peak_reserved_gib")
                else float("nan")
            )
            lines.append(
                f"{o['config']} vs {t['config']} [{o['shape']}]: tokens/s x{speed:.2f}, peak reserved x{mem:.2f}"
            )
    if ceiling:
        lines.append(f"\nceiling (baseline script): bf16 matmul {ceiling['matmul_tflops']} TFLOP/s")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama2-7b")
    ap.add_argument("--method", choices=["lora", "qlora"], default="lora")
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--dora", action="store_true", help="DoRA adapters (peft/dora.py: they run one by one, no groups)")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    ap.add_argument("--offload", action="store_true", help="checkpointing with layer inputs in pinned host memory")
    ap.add_argument(
        "--checkpoint-layers", type=int, default=None, help="recompute only the lowest K layers (default: all)"
    )
    ap.add_argument(
        "--budget", type=float, default=None, help="GiB: let the planner choose micro-batch/checkpointing/offload"
    )
    ap.add_argument("--graphs", action="store_true", help="replay each micro-batch from a CUDA graph")
    ap.add_argument("--release-cache", action="store_true", help="return cached free GPU memory after every step")
    ap.add_argument(
        "--no-group", action="store_true", help="run q/k/v and gate/up adapters one by one (peft.group off)"
    )
    ap.add_argument(
        "--mlp-chunk", type=int, default=4096, help="tokens per MLP chunk in checkpointed backward (0: all)"
    )
    ap.add_argument(
        "--optimizer",
        choices=["adamw", "adamw_8bit"],
        default="adamw",
        help="torch's AdamW (fused on CUDA) or tunelab's AdamW8bit (both moments in 8 bits)",
    )
    ap.add_argument("--fp8", action="store_true", help="QLoRA: the NF4 base's products in FP8 (train.fp8)")
    ap.add_argument("--ceiling", type=float, default=None, help="bf16 matmul TFLOP/s (default: measured now)")
    ap.add_argument("--out", type=Path, default=None, help="append the JSON record to this file")
    ap.add_argument("--table", action="store_true", help="print the table of --out and exit")
    args = ap.parse_args()
    if args.table:
        print(table(args.out))
        return
    record = run(args)
    line = json.dumps(record)
    print(line, flush=True)
    print(
        f"SUMMARY {record['config']} [{args.shape}]: {record['tokens_per_s']:,.0f} tok/s, median {record['median_s'] * 1e3:.1f} ms, "
        f"peak alloc {record['train_peak_alloc_gib']} GiB reserved {record['train_peak_reserved_gib']} GiB"
        + (f" (planned {record['planned_peak_gib']} GiB)" if record["planned_peak_gib"] is not None else "")
        + f", MFU {record['mfu_useful']}, "
        f"loss {record['losses'][0]} -> {record['losses'][-1]}",
        flush=True,
    )
    if args.out:
        with args.out.open("a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
