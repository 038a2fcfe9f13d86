"""What the grpo tests share: a prompt file written, the options of a small run, the task built on a tiny model."""

import json

from tunelab.config import load_config
from tunelab.models.load import load_tokenizer, resolve_source
from tunelab.tasks import get_task
from tunelab.training.build import build_model


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def grpo_overrides(model_dir, tmp_path, data, module, **extra):
    return {
        "task": "grpo",
        "model.name": str(model_dir),
        "data.train": [data],
        "data.max_length": 64,
        "method.r": 4,
        "grpo.num_generations": 3,
        "grpo.prompts_per_step": 2,
        "grpo.max_new_tokens": 6,
        "grpo.rewards": [{"kind": "function", "function": f"{module}:letters"}, {"kind": "contains", "weight": 0.5}],
        "train.micro_batch": 4,
        "train.lr": 1e-2,
        "train.max_steps": 3,
        "output_dir": str(tmp_path / "run"),
    } | extra


def grpo_task(tiny_model_dir, tmp_path, data, module, **extra):
    cfg = load_config(None, grpo_overrides(tiny_model_dir, tmp_path, data, module, **extra)).config
    source = resolve_source(str(tiny_model_dir))
    tokenizer = load_tokenizer(source)
    task = get_task("grpo", cfg)
    data = task.build_data(cfg, tokenizer, 0)
    built = build_model(source, cfg.model, cfg.method)
    task.prepare(built, data, cfg)
    return task, data, built, tokenizer
