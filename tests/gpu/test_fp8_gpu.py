"""train.fp8 through `tunelab train` on a GPU with FP8 tensor cores: the same QLoRA run (24-layer random Llama, chat
data, padded, 30 steps of one repeated batch) with the NF4 base's products in FP8 and in bf16 follows the same loss
curve. The tolerance is the evidence the option's description gives: FP8 changes each product by a few percent,
which must not change what the run learns."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from tunelab.cli import main

STEPS = 30
needs_fp8 = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9), reason="needs FP8 tensor cores"
)


def train(folder: Path, model: Path, data: Path, fp8: bool) -> list[float]:
    config = {
        "output_dir": str(folder / "run"),
        "model": {"name": str(model), "device": "cuda"},
        "data": {"train": [str(data)], "max_length": 256},
        "method": {"name": "lora", "r": 16, "quantize_base": "nf4", "target_modules": ["all-linear"]},
        "train": {"max_steps": STEPS, "micro_batch": 8, "warmup_ratio": 0.1, "lr": 2e-3, "fp8": fp8},
    }
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(folder / "config.yaml")]) == 0
    records = [json.loads(line) for line in (folder / "run" / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


@pytest.mark.gpu
@needs_fp8
def test_fp8_products_follow_the_bf16_loss_curve(deep_llama_dir, chat_file, tmp_path, gpu_report, capsys):
    bf16 = train(tmp_path / "bf16", deep_llama_dir, chat_file, fp8=False)
    fp8 = train(tmp_path / "fp8", deep_llama_dir, chat_file, fp8=True)
    out = capsys.readouterr().out
    assert "multiplied in FP8 (train.fp8)" in out
    assert len(bf16) == len(fp8) == STEPS
    gaps = [abs(a - b) / abs(b) for a, b in zip(fp8, bf16)]
    gpu_report(
        {
            "case": "fp8-vs-bf16",
            "bf16": [round(x, 4) for x in bf16[::5] + bf16[-1:]],
            "fp8": [round(x, 4) for x in fp8[::5] + fp8[-1:]],
            "max_rel_gap": round(max(gaps), 4),
        }
    )
    assert fp8[0] == pytest.approx(bf16[0], rel=0.02)  # the first loss: only the products' rounding differs
    assert fp8[0] != bf16[0]  # ... and it does differ: the FP8 products ran
    assert sum(fp8[-3:]) / 3 == pytest.approx(sum(bf16[-3:]) / 3, rel=0.15, abs=0.05)
    assert max(gaps[:10]) < 0.05
