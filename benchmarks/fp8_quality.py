"""Does train.fp8 cost quality on a pretrained model and real data? Two QLoRA runs, FP8 products or not, on the CPU.

Fine-tunes a model (default: the embedded SmolLM2-135M-Instruct) with QLoRA on examples/company_faq through
`tunelab.train`, twice with the example's config and the same seed: the NF4 base's products in the model's dtype
(fp32 on the CPU), then in FP8 (train.fp8). It prints both train-loss curves step by step, the largest relative gap
between them, each run's last eval loss and, where the config names eval.questions, the held-out fact and refusal
scores of the example's scorer (`tunelab compare`'s, which answers with the saved adapter as any run's is loaded).

What runs on the CPU. `tunelab train` refuses train.fp8 off a GPU with FP8 tensor cores (`quant.fp8.
unsupported_reason`); this script lifts that one check for its own runs, so the FP8 run takes `quant.fp8`'s plain
torch reference: the weight rounded to e4m3 with one scale for the matrix, activations and output gradients with
one scale per row, values and scales bit-identical to the GPU's kernels; their product is computed in fp32 and
rounded to the model's dtype (the GPU: `torch._scaled_mm`, fp32 accumulation, rounded to bf16). So it measures the
e4m3 rounding of the operands, not the GPU's kernel or its bf16 outputs.

On the CPU every product dequantizes its NF4 weight again (as QLoRA does on a GPU, by a kernel there), which costs far
more than the product: `--max-steps` and `--micro-batch` make a short run affordable (fewer, wider micro-batches;
with --max-steps the eval runs once, at the end), and `--no-questions` skips the held-out answers (65 questions
generated token by token with the base and each tuned model).

    python benchmarks/fp8_quality.py [--config examples/company_faq/config.yaml] [--max-steps 5 --micro-batch 16]
        [--no-questions] [--out results.jsonl]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

VARIANTS = {"fp32": False, "fp8": True}  # the CPU's products in fp32 (the model's dtype there), or in FP8


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_once(config: Path, overrides: dict, fp8: bool, output_dir: Path) -> dict:
    """One run through `tunelab.train`; with fp8, its products in FP8 by `quant.fp8`'s CPU reference."""
    import tunelab
    from tunelab.training import build

    settings = overrides | {"method.quantize_base": "nf4", "train.fp8": fp8, "output_dir": str(output_dir)}
    start = time.perf_counter()
    if fp8:  # the reference arithmetic wherever the tensors are: build_model's device check alone is lifted
        with mock.patch.object(build, "fp8_unsupported", lambda device: None):
            result = tunelab.train(config, settings)
    else:
        result = tunelab.train(config, settings)
    seconds = time.perf_counter() - start
    rows = records(result.run_dir)
    evals = [r for r in rows if "eval_loss" in r]
    outcome = {
        "loss": [r["loss"] for r in rows if "loss" in r],
        "eval_loss": evals[-1]["eval_loss"] if evals else None,
        "eval_step": evals[-1]["step"] if evals else None,
        "wall_s": round(seconds, 1),
    }
    compared = result.run_dir / "compare.json"
    if compared.exists():
        outcome["scores"] = json.loads(compared.read_text())["scores"]
    return outcome


def largest_gap(base: list[float], other: list[float]) -> tuple[float, int]:
    """max over steps of |other - base| / base, and its step (1-based)."""
    gaps = [abs(b - a) / abs(a) for a, b in zip(base, other, strict=True)]
    worst = max(range(len(gaps)), key=gaps.__getitem__)
    return gaps[worst], worst + 1


def held_out(scores: dict) -> str:
    fact, off = scores.get("fact", {}), scores.get("off_topic", {})
    return f"facts {fact.get('tuned', 0):.1%} of {fact.get('n', 0)}, refusals {off.get('tuned_refused', 0):.1%} of {off.get('n', 0)}"


def compare_runs(config: Path, overrides: dict, work: Path) -> dict:
    """Both runs, then their comparison: {"runs": {variant: outcome}, "gap": .., "gap_step": ..}."""
    runs = {name: train_once(config, overrides, fp8, work / name) for name, fp8 in VARIANTS.items()}
    gap, step = largest_gap(runs["fp32"]["loss"], runs["fp8"]["loss"])
    return {"runs": runs, "gap": gap, "gap_step": step}


def report(result: dict) -> None:
    base, fp8 = result["runs"]["fp32"], result["runs"]["fp8"]
    print("step  fp32      fp8       rel.gap")
    for i, (a, b) in enumerate(zip(base["loss"], fp8["loss"]), 1):
        print(f"{i:4d}  {a:.5f}  {b:.5f}  {abs(b - a) / abs(a):.2e}")
    print(f"largest relative gap of the train-loss curves: {result['gap']:.2%} at step {result['gap_step']}")
    for name, run in result["runs"].items():
        line = f"{name}: loss {run['loss'][0]:.4f} -> {run['loss'][-1]:.4f} over {len(run['loss'])} steps"
        if run["eval_loss"] is not None:
            line += f", eval loss {run['eval_loss']:.4f} at step {run['eval_step']}"
        if "scores" in run:
            line += f", held-out {held_out(run['scores'])}"
        print(line + f", {run['wall_s']:.0f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "examples" / "company_faq" / "config.yaml")
    ap.add_argument("--model", help="model.name instead of the config's")
    ap.add_argument(
        "--max-steps", type=int, help="train.max_steps instead of the config's epochs (one eval, at the end)"
    )
    ap.add_argument("--micro-batch", type=int, help="train.micro_batch (and the eval's) instead of the config's")
    ap.add_argument("--no-questions", action="store_true", help="skip the held-out questions (eval.questions)")
    ap.add_argument("--out", type=Path, help="append one JSON record per run and one for the comparison")
    args = ap.parse_args()

    import torch

    overrides: dict = {"model.device": "cpu"}
    if args.model:
        overrides["model.name"] = args.model
    if args.max_steps:
        overrides |= {"train.max_steps": args.max_steps, "train.eval_every": args.max_steps}
    if args.micro_batch:
        overrides["train.micro_batch"] = args.micro_batch
    if args.no_questions:
        overrides["eval.questions"] = None
    result = compare_runs(args.config, overrides, Path(tempfile.mkdtemp(prefix="fp8-quality-")))
    report(result)
    if args.out:
        common = {"config": str(args.config), "overrides": overrides, "torch": torch.__version__}
        common["threads"] = torch.get_num_threads()
        lines = [common | {"variant": name} | run for name, run in result["runs"].items()]
        lines.append(common | {"variant": "fp8 vs fp32", "gap": result["gap"], "gap_step": result["gap_step"]})
        with args.out.open("a") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
