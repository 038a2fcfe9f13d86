"""Task dpo through `tunelab train` on each device (CUDA when present): LoRA and full fine-tuning on the fast path
(on CUDA: the Triton log-prob op in bf16, its frozen-head and its trained-head backward), on a tiny model and a
word-level tokenizer built here, so the GPU machine needs nothing beyond the package. The checks hold whatever the
kernels: the first step's loss is log 2 (policy = reference), losses stay finite and fall, and the eval reward
accuracy ends above chance. The CPU cases repeat what tests/tasks/test_dpo.py covers, so they are marked slow."""

import json
import math

import pytest
import torch

from tunelab.training.recipe import train

from .word_llama import WORDS, save_word_llama

DEVICES = [
    pytest.param("cpu", marks=pytest.mark.slow),
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_llama_config):
    return save_word_llama(tmp_path_factory.mktemp("word-llama-dpo"), tiny_llama_config)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    positive, negative = WORDS[:5], WORDS[5:10]
    rows = [
        {
            "chosen": f"the {WORDS[16 + i % 3]} was {positive[i % 5]}",
            "rejected": f"the {WORDS[16 + i % 3]} was {negative[(i * 3) % 5]}",
        }
        for i in range(48)
    ]
    path = tmp_path_factory.mktemp("word-pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("device", DEVICES)
def test_dpo_trains_on_the_fast_path(device, method, model_dir, pairs, tmp_path):
    over = {
        "task": "dpo",
        "model.name": str(model_dir),
        "model.device": device,
        "model.impl": "fast",
        "data.train": [str(pairs)],
        "data.eval_fraction": 0.25,
        "method.name": method,
        "method.r": 8,
        "train.micro_batch": 6,
        "train.max_steps": 12,
        "train.lr": 3e-3 if method == "lora" else 1e-3,
        "train.warmup_ratio": 0.0,
        "output_dir": str(tmp_path / "run"),
    }
    result = train(None, over)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert all(math.isfinite(x) for x in losses)
    assert losses[0] == pytest.approx(math.log(2), abs=2e-3)  # bf16 on CUDA: the policy equals the reference
    assert sum(losses[-3:]) / 3 < losses[0] - 0.05, losses
    assert records[-1]["eval_accuracy"] > 0.5 and records[-1]["eval_margin"] > 0
