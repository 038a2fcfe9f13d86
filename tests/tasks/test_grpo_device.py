"""Task grpo through `tunelab train` (the CLI's main) on each device (CUDA when present): LoRA, QLoRA (CUDA) and full
fine-tuning on the fast path, on a tiny random Llama with a word-level tokenizer built here, so the GPU machine needs
nothing beyond the package. Sampling runs through models.decode (KV cache) and the loss through the fused log-prob op
(Triton on CUDA). The checks hold whatever the kernels: every step's loss and KL is finite, the metrics carry the
reward columns (total and per function), and the held-out greedy answers get an eval reward. The CPU cases repeat
what tests/tasks/test_grpo.py covers, so they are marked slow."""

import json
import math

import pytest
import torch

from tunelab.cli import main

from .word_llama import WORDS, save_word_llama

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_llama_config):
    # words only, no chat markers
    return save_word_llama(
        tmp_path_factory.mktemp("word-llama-grpo"),
        tiny_llama_config,
        "{% for m in messages %}{{ m['content'] }} {% endfor %}",
    )


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    rows = [{"prompt": f"the {WORDS[16 + i % 3]} was", "expected": WORDS[i % 5]} for i in range(24)]
    path = tmp_path_factory.mktemp("word-prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "device,method",
    [
        pytest.param("cpu", "lora", marks=pytest.mark.slow),
        pytest.param("cuda", "lora", marks=CUDA),
        pytest.param("cuda", "qlora", marks=CUDA),
        pytest.param("cuda", "full", marks=CUDA),
    ],
)
def test_grpo_trains_through_the_cli(device, method, model_dir, prompts, tmp_path):
    rewards = [
        {"kind": "regex", "name": "positive", "pattern": r"\b(good|great|fine|happy|nice)\b"},
        {"kind": "contains", "weight": 0.5},
        {"kind": "length", "max_tokens": 4, "weight": 0.25},
    ]
    args = ["train", "--task", "grpo", "--model.name", str(model_dir), "--model.device", device]
    args += ["--model.impl", "fast", "--data.train", str(prompts), "--data.eval_fraction", "0.25"]
    args += ["--method.name", "full" if method == "full" else "lora", "--method.r", "8"]
    args += ["--method.quantize_base", "nf4" if method == "qlora" else "none"]
    args += ["--grpo.rewards", json.dumps(rewards), "--grpo.num_generations", "4", "--grpo.prompts_per_step", "4"]
    args += ["--grpo.max_new_tokens", "8", "--grpo.beta", "0.04", "--train.micro_batch", "8", "--train.max_steps", "6"]
    args += ["--train.lr", "1e-3" if method == "full" else "5e-3", "--output_dir", str(tmp_path / "run")]
    assert main(args) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert len(steps) == 6 and all(math.isfinite(r["loss"]) and math.isfinite(r["kl"]) for r in steps), steps
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-3)  # step 1 samples from the base itself (bf16 rounding)
    assert {"reward", "reward_std", "reward_positive", "reward_contains", "reward_length", "zero_std_groups"} <= set(
        steps[0]
    )
    assert all(0 <= r["reward_positive"] <= 1 and r["answer_tokens"] <= 8 for r in steps)
    assert "eval_reward" in records[-1] and math.isfinite(records[-1]["eval_reward"])
