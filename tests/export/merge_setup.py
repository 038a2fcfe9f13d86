"""What the merge tests share: token ids of SmolLM2's vocabulary to probe logits with, and a finished run written as
training writes it (a LoRA adapter or full weights, the tokenizer and run.json)."""

import json

import torch

from tunelab.peft.save import save_adapter

IDS = torch.tensor([[1, 504, 3458, 314, 4760, 260, 1104, 2], [17, 29, 3000, 40000, 12, 9, 8, 7]])


def write_run(run_dir, model, tokenizer, base, method, template="auto", system_prompt=None):
    """A finished run of `method` (lora: the model's adapter; full: all its weights) in run_dir, as training
    writes it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if method == "lora":
        save_adapter(model, run_dir, base_model=str(base))
    else:
        model.save_pretrained(run_dir, safe_serialization=True)
    tokenizer.save_pretrained(run_dir)
    info = {
        "base_model": str(base),
        "method": method,
        "template": template,
        "system_prompt": system_prompt,
        "quantize_base": "none",  # as training records it: without it (or config.yaml) the base is not known
        "finished": True,
    }
    (run_dir / "run.json").write_text(json.dumps(info))
    return run_dir
