"""Every task trains a LoRA adapter in fp16 through the one step, with its loss scale: the run finishes, counts its
overflow steps in run.json, and saves finite weights; full fine-tuning in fp16 is refused naming model.dtype."""

import json

import pytest
import torch
from safetensors.torch import load_file

import tunelab.training.recipe as recipe
from tunelab.errors import ConfigError
from tunelab.rundir import read_info

REWARDS = "def letters(prompt, answer, row):\n    return float(sum(c.isalpha() for c in answer))\n"


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _task(task, tmp_path, monkeypatch):
    """The task's data and its own options."""
    if task == "classify":
        rows = [
            {"prompt": f"{('great', 'awful')[i % 2]} number {i}", "label": ("pos", "neg")[i % 2]} for i in range(16)
        ]
        return {"data.train": [_write(tmp_path / "labels.jsonl", rows)]}
    if task in ("reward", "dpo"):
        rows = [
            {"prompt": f"Code of box {i}?", "chosen": f"Box {i}: {1000 + i}.", "rejected": "No."} for i in range(16)
        ]
        return {"data.train": [_write(tmp_path / "pairs.jsonl", rows)]}
    (tmp_path / "fp16_rewards.py").write_text(REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    rows = [{"prompt": f"What is {i} plus {i + 1}?", "expected": str(2 * i + 1)} for i in range(8)]
    return {
        "data.train": [_write(tmp_path / "prompts.jsonl", rows)],
        "grpo.num_generations": 3,
        "grpo.prompts_per_step": 2,
        "grpo.max_new_tokens": 6,
        "grpo.rewards": [{"kind": "function", "function": "fp16_rewards:letters"}],
    }


@pytest.mark.parametrize("task", ["sft", "qlora", "classify", "reward", "dpo", "grpo"])
def test_every_task_trains_lora_in_fp16_with_its_loss_scale(task, tiny_overrides, tmp_path, monkeypatch):
    overrides = tiny_overrides | {"model.dtype": "fp16", "train.max_steps": 6, "train.grad_accum": 1}
    if task == "qlora":  # sft over an NF4 base quantized from fp16
        task, overrides = "sft", overrides | {"method.quantize_base": "nf4"}
    overrides["task"] = task
    if task != "sft":
        overrides = {k: v for k, v in overrides.items() if k != "data.system_prompt"}
        overrides |= _task(task, tmp_path, monkeypatch)
    result = recipe.train(None, overrides)
    info = read_info(result.run_dir)
    assert info.dtype == "float16" and result.skipped_steps == 0 and result.steps == 6
    # the scale starts high on purpose: a head's few rows overflow it for a step or two, then the updates apply
    assert info.extra["fp16_loss_scale"]["overflow_steps"] < 4
    weights = load_file(result.run_dir / "adapter_model.safetensors")
    assert all(bool(torch.isfinite(v).all()) for v in weights.values())


@pytest.mark.parametrize("method", ["full", "layers"])
def test_fp16_full_or_layers_is_refused_naming_model_dtype(method, tiny_overrides):
    with pytest.raises(ConfigError, match="'model.dtype' is fp16, which trains adapters only .* Use bf16 or fp32"):
        recipe.train(None, tiny_overrides | {"model.dtype": "fp16", "method.name": method, "method.top_layers": 1})
