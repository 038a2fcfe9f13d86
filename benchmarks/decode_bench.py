"""Generation throughput of `models.decode.sample` on a 7B-shaped random Llama, as GRPO uses it (a LoRA adapter on).

Random-init weights of a real shape (speed and memory do not depend on their values), BATCH random prompts of PROMPT
tokens, NEW tokens drawn per row at temperature 1 with no stop id, so every row runs to the end. The time is one
`sample` call, prefill included, median of --repeats after a warm-up (Triton compiles on the first). Prints one JSON
line per config (and appends it to --out), then a SUMMARY line.

    python benchmarks/decode_bench.py --impl tunelab --method lora --out $OUT/decode.jsonl    # bf16 base + LoRA
    python benchmarks/decode_bench.py --impl tunelab --method qlora --out ...                 # NF4 base + LoRA
    python benchmarks/decode_bench.py --impl tunelab --method qlora --dynamic --out ...       # the same, no graph
    python benchmarks/decode_bench.py --impl tunelab --method full --out ...                  # bf16, no adapter
    python benchmarks/decode_bench.py --impl hf --out ...           # a transformers model, our sampler's generic path
    python benchmarks/decode_bench.py --impl hf_generate --out ...  # the same model through transformers' generate
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from train_bench import SHAPES, build  # noqa: E402

from tunelab.models.decode import SampleSettings, sample  # noqa: E402

GIB = 2**30


def build_hf(shape: str, device: str) -> torch.nn.Module:
    """A transformers LlamaForCausalLM of the shape, random N(0, 0.02), in bf16 on the device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(SHAPES[shape])
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = None  # no stop: every row runs NEW tokens
    model.generation_config.pad_token_id = 0
    return model.eval()


def timed(fn, device: str) -> tuple[float, object]:
    """(seconds, result) of fn(), the device's queue drained before and after."""
    if device == "cuda":
        torch.cuda.synchronize()
    tic = time.perf_counter()
    result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - tic, result


def run(args) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.impl == "tunelab":
        model = build(args.shape, args.method, args.r, False, device)
        name = f"tunelab_{args.method}" + ("" if args.dynamic else "_static")
    else:
        model = build_hf(args.shape, device)
        name = args.impl
    vocab = SHAPES[args.shape]["vocab_size"]
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, vocab, (args.prompt,), generator=gen).tolist() for _ in range(args.batch)]
    draws = torch.Generator(device=device).manual_seed(0)

    def go(new: int) -> list[list[int]]:
        if args.impl == "hf_generate":
            ids = torch.tensor(prompts, device=device)
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=1.0,
                top_p=args.top_p,
                top_k=0,  # off (the generation config's default is 50): the same distribution as ours
                max_new_tokens=new,
                min_new_tokens=new,
            )
            return out[:, args.prompt :].tolist()
        static = False if args.dynamic else None  # None: fixed shapes, replayed from a CUDA graph on CUDA
        settings = SampleSettings(new, 1.0, args.top_p)
        return sample(model, prompts, settings, pad_id=0, generator=draws, static=static)

    go(4)  # warm-up: kernels compiled, workspaces grown
    prefill_s = statistics.median(timed(lambda: go(1), device)[0] for _ in range(3))
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, lengths = [], []
    for _ in range(args.repeats):
        seconds, answers = timed(lambda: go(args.new), device)
        times.append(seconds)
        lengths.append(sum(map(len, answers)))
    assert all(n == args.batch * args.new for n in lengths), f"rows stopped early: {lengths}"
    median = statistics.median(times)
    cuda = device == "cuda"
    return {
        "config": name,
        "shape": args.shape,
        "batch": args.batch,
        "prompt": args.prompt,
        "new": args.new,
        "top_p": args.top_p,
        "median_s": round(median, 3),
        "new_tokens_per_s": round(args.batch * args.new / median, 1),
        "prefill_s": round(prefill_s, 4),
        "decode_tokens_per_s": round(args.batch * (args.new - 1) / max(median - prefill_s, 1e-9), 1),
        "peak_alloc_gib": round(torch.cuda.max_memory_allocated() / GIB, 2) if cuda else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2) if cuda else None,
        "versions": {"torch": torch.__version__, "gpu": torch.cuda.get_device_name() if cuda else "cpu"},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama2-7b")
    ap.add_argument("--impl", choices=["tunelab", "hf", "hf_generate"], default="tunelab")
    ap.add_argument("--method", choices=["full", "lora", "qlora"], default="lora", help="tunelab: base and adapter")
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--dynamic",
        action="store_true",
        help="tunelab: ended rows leave the batch, no CUDA graph (sample static=False)",
    )
    ap.add_argument("--out", type=Path, default=None, help="append the JSON record to this file")
    args = ap.parse_args()
    record = run(args)
    print(json.dumps(record), flush=True)
    print(
        f"SUMMARY {record['config']} [{args.shape}] batch {args.batch} x {args.new} new: "
        f"{record['new_tokens_per_s']:,.0f} new tok/s (decode {record['decode_tokens_per_s']:,.0f}), "
        f"prefill {record['prefill_s'] * 1e3:.0f} ms, peak alloc {record['peak_alloc_gib']} GiB",
        flush=True,
    )
    if args.out:
        with args.out.open("a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
