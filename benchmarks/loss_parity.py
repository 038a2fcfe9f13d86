"""Loss-curve parity of the fast path (our model + fused kernels) against the generic transformers path.

Builds a mini random Llama with a given tokenizer, trains it N steps on a real data file through `tunelab.train`
twice (model.impl fast, then generic) with identical settings, and prints both curves and the largest relative
difference. Exits 1 when it is over the tolerance. On a GPU the fast path runs the Triton kernels.

    python benchmarks/loss_parity.py --tokenizer DIR --data alpaca_en_demo.json --steps 50 --dtype fp32
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def mini_model(tokenizer_dir: str, folder: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--method", default="lora", choices=["lora", "full"])
    ap.add_argument("--tolerance", type=float, default=1e-2)
    args = ap.parse_args()

    import tunelab

    work = Path(tempfile.mkdtemp(prefix="parity-"))
    model = mini_model(args.tokenizer, work / "mini")
    common = {
        "model.name": str(model),
        "model.dtype": args.dtype,
        "data.train": [args.data],
        "data.max_length": 256,
        "method.name": args.method,
        "method.r": 16,
        "method.alpha": 32,
        "train.max_steps": args.steps,
        "train.micro_batch": 8,
        "train.lr": 1e-3 if args.method == "full" else 3e-3,
        "train.seed": 0,
    }
    curves = {}
    for impl in ("fast", "generic"):
        result = tunelab.train(None, common | {"model.impl": impl, "output_dir": str(work / impl)})
        lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
        curves[impl] = [json.loads(line)["loss"] for line in lines if '"loss"' in line]
    fast, generic = curves["fast"], curves["generic"]
    worst = max(abs(a - b) / abs(b) for a, b in zip(fast, generic))
    print("step  fast      generic   rel.diff")
    for i, (a, b) in enumerate(zip(fast, generic), 1):
        if i <= 5 or i % 10 == 0:
            print(f"{i:4d}  {a:.5f}  {b:.5f}  {abs(a - b) / abs(b):.2e}")
    verdict = "PASS" if worst <= args.tolerance and len(fast) == len(generic) == args.steps else "FAIL"
    print(
        f"PARITY {verdict}: {args.method} {args.dtype}, {args.steps} steps, loss {fast[0]:.4f} -> {fast[-1]:.4f}, "
        f"largest relative difference {worst:.2e} (tolerance {args.tolerance})"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
