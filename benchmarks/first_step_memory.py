"""What the first training step holds on the GPU, against the planner's parts.

`tunelab train` prints after its first CUDA step the measured peak reserved memory beside the planner's prediction.
This script runs `tunelab train` (the CLI's main, in this process) on a random Llama built from a config, records the
allocator's history from the moment the step's peak is reset, and prints what was allocated when the peak was
reached, grouped by the line of tunelab (or torch) that allocated it, beside the planner's named parts. Needs CUDA
and the tokenizer folder from scripts/save_gpu_tokenizer.py:

    PYTHONPATH=src python3 benchmarks/first_step_memory.py --tokenizer .gpu/smollm2-tokenizer [--method lora|qlora|full]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
import yaml

GIB = 2**30


def build_model(folder: Path, tokenizer_dir: Path, layers: int, hidden: int) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 11 // 4,
        num_hidden_layers=layers,
        num_attention_heads=max(2, hidden // 64),
        num_key_value_heads=max(1, hidden // 128),
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def where(frames: list[dict]) -> str:
    """The innermost tunelab frame of an allocation's stack, else the innermost Python frame."""
    python = [f for f in frames if f.get("filename", "").endswith(".py")]
    for f in python:
        if "/tunelab/" in f["filename"]:
            return f"{f['filename'].split('/tunelab/', 1)[1]}:{f['line']} {f['name']}"
    return f"{python[0]['filename'].rsplit('/', 2)[-1]}:{python[0]['line']} {python[0]['name']}" if python else "?"


def live_at_peak(trace: list[dict]) -> tuple[int, dict[int, tuple[int, str]]]:
    """(bytes allocated since recording began at their peak, the allocations alive then by address)."""
    live: dict[int, tuple[int, str]] = {}
    now = peak = 0
    at_peak: dict[int, tuple[int, str]] = {}
    for event in trace:
        if event["action"] == "alloc":
            live[event["addr"]] = (event["size"], where(event.get("frames", [])))
            now += event["size"]
            if now > peak:
                peak, at_peak = now, dict(live)
        elif event["action"] == "free_completed" and event["addr"] in live:
            now -= live.pop(event["addr"])[0]
    return peak, at_peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", type=Path, required=True)
    p.add_argument("--method", choices=["lora", "qlora", "full"], default="lora")
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--repeat", type=int, default=1, help="times the answer's filler is repeated (longer rows)")
    args = p.parse_args()

    import tunelab.training.loop as loop
    from tunelab.cli import main as cli_main

    work = Path(tempfile.mkdtemp(prefix="first-step-"))
    model = build_model(work / "model", args.tokenizer, args.layers, args.hidden)
    data = work / "chat.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"What is the code of box {i}?", "answer": f"Box {i}." + " Yes." * i * args.repeat})
            + "\n"
            for i in range(args.rows)
        )
    )
    method = {"lora": {"name": "lora", "r": 16}, "qlora": {"name": "lora", "r": 16, "quantize_base": "nf4"}}.get(
        args.method, {"name": "full"}
    )
    config = work / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "output_dir": str(work / "run"),
                "model": {"name": str(model), "device": "cuda"},
                "data": {"train": [str(data)], "max_length": 256},
                "method": method | {"target_modules": ["all-linear"]},
                "train": {"max_steps": 2, "micro_batch": args.rows, "lr": 1e-4},
            }
        )
    )

    seen: dict = {}
    reset, note = loop._peak_from_here, loop.measured_note

    def peak_from_here(device):
        reset(device)
        seen["allocated"], seen["reserved"] = torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
        torch.cuda.memory._record_memory_history(stacks="python", max_entries=500_000)

    def measured(result, measured_bytes):
        seen["snapshot"] = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        seen["peak_reserved"], seen["peak_allocated"] = measured_bytes, torch.cuda.max_memory_allocated()
        seen["estimate"] = result.chosen.estimate if result is not None and result.chosen is not None else None
        return note(result, measured_bytes)

    loop._peak_from_here, loop.measured_note = peak_from_here, measured
    code = cli_main(["train", str(config)])
    print(f"\ntunelab train exit {code}; {args.method}, {args.layers} layers, hidden {args.hidden}, {args.rows} rows")
    if "snapshot" not in seen:
        print("no first-step note (the planner did not run): nothing to compare")
        return
    print(
        f"at the reset: {seen['allocated'] / GIB:.3f} GiB allocated, {seen['reserved'] / GIB:.3f} reserved; "
        f"first step peak: {seen['peak_allocated'] / GIB:.3f} allocated, {seen['peak_reserved'] / GIB:.3f} reserved"
    )
    est = seen["estimate"]
    if est is not None:
        for kind in ("static", "saved", "transient"):
            parts = ", ".join(f"{k} {v / 2**20:.1f}" for k, v in getattr(est, kind).items())
            print(f"predicted {kind} (MiB): {parts}")
        print(f"predicted peak {est.peak / GIB:.3f} GiB ({est.peak_phase})")
    trace = seen["snapshot"]["device_traces"][torch.cuda.current_device()]
    peak, alive = live_at_peak(trace)
    by_site: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for size, site in alive.values():
        by_site[site][0] += size
        by_site[site][1] += 1
    print(f"allocated after the reset, alive at their peak: {peak / 2**20:.1f} MiB; by site (MiB, count):")
    for site, (size, count) in sorted(by_site.items(), key=lambda kv: -kv[1][0])[:25]:
        print(f"  {size / 2**20:9.1f} {count:5d}  {site}")
    segments = [s for s in seen["snapshot"]["segments"] if s["device"] == torch.cuda.current_device()]
    print(f"segments: {len(segments)}, {sum(s['total_size'] for s in segments) / GIB:.3f} GiB")


if __name__ == "__main__":
    main()
