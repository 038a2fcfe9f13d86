"""Head runs through `tunelab train` on each device (CUDA when present): classify with QLoRA on the fast path and a
reward model with full fine-tuning on the generic path, then predict and eval on the same device. The model and its
word-level tokenizer are built here, so nothing is needed beyond the package (the GPU machine has no embedded model).

On CUDA the fast path runs the Triton kernels in bf16; the checks are what must hold whatever the kernels: finite
losses that fall on a learnable task, the fast body agreeing with the transformers body within bf16 error, and
predictions that read the saved run back."""

import json

import pytest
import torch

from tunelab.api import predict
from tunelab.eval.heads import evaluate_head_run
from tunelab.training.recipe import train

from .word_llama import WORDS, save_word_llama

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_llama_config):
    return save_word_llama(tmp_path_factory.mktemp("word-llama"), tiny_llama_config)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("word-data")
    positive, negative = WORDS[:5], WORDS[5:10]
    rows, pairs = [], []
    for i in range(48):
        pos, neg, filler = positive[i % 5], negative[(i * 3) % 5], WORDS[10 + i % 9]
        rows.append({"text": f"{filler} {pos} {filler}", "label": "pos"})
        rows.append({"text": f"{filler} {neg} {filler}", "label": "neg"})
        pairs.append({"chosen": f"the day was {pos}", "rejected": f"the day was {neg}"})
    (folder / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    return folder


@pytest.mark.parametrize("device", DEVICES)
def test_qlora_classifier_on_the_fast_path(device, model_dir, files, tmp_path, logged_losses):
    over = {
        "task": "classify",
        "model.name": str(model_dir),
        "model.device": device,
        "model.impl": "fast",
        "data.train": [str(files / "labels.jsonl")],
        "method.quantize_base": "nf4",
        "method.r": 8,
        "train.micro_batch": 8,
        "train.lr": 5e-3,
        "train.max_steps": 24,
        "train.warmup_ratio": 0.0,
        "output_dir": str(tmp_path / "cls"),
    }
    result = train(None, over)
    losses = logged_losses(result.run_dir)
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-6:]) / 6 < sum(losses[:6]) / 6  # it learns
    good, bad = predict(result.run_dir, texts=["it great it", "it awful it"], device=device)
    assert sum(good.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    scores = evaluate_head_run(result.run_dir, files / "labels.jsonl", device, save=False)
    assert scores.tuned["n"] == 96 and scores.tuned["accuracy"] > 0.5


@pytest.mark.parametrize("device", DEVICES)
def test_full_reward_model_on_the_generic_path(device, model_dir, files, tmp_path, logged_losses):
    over = {
        "task": "reward",
        "model.name": str(model_dir),
        "model.device": device,
        "model.impl": "generic",
        "data.train": [str(files / "pairs.jsonl")],
        "method.name": "full",
        "train.micro_batch": 8,
        "train.lr": 1e-3,
        "train.max_steps": 12,
        "train.warmup_ratio": 0.0,
        "output_dir": str(tmp_path / "rw"),
    }
    result = train(None, over)
    assert all(map(torch.isfinite, torch.tensor(logged_losses(result.run_dir))))
    scores = evaluate_head_run(result.run_dir, files / "pairs.jsonl", device, save=False)
    assert scores.tuned["n"] == 48 and scores.tuned["accuracy"] > scores.baseline["accuracy"]


@pytest.mark.parametrize("device", DEVICES)
def test_fast_and_generic_heads_agree_on_the_device(device, model_dir):
    from transformers import LlamaForCausalLM

    from tunelab.kernels import select as select_ops
    from tunelab.models.hf_adapter import from_hf_model
    from tunelab.tasks.head import attach_head
    from tunelab.training.build import BuiltModel

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    hf = LlamaForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    built = [
        BuiltModel(m, impl, hf.config, torch.device(device), dtype, 0, 0)
        for impl, m in (("generic", hf), ("fast", from_hf_model(hf, select_ops("auto")).to(device)))
    ]
    for b in built:
        attach_head(b, 3, seed=0)
    ids = torch.randint(3, 22, (4, 17), device=device)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    with torch.no_grad():
        generic, fast = (b.model.eval()(ids, mask) for b in built)
    # bf16 activations: the two bodies round differently; the head's logits are O(0.1)
    tol = 3e-2 if device == "cuda" else 1e-4
    torch.testing.assert_close(generic, fast, rtol=tol, atol=tol)
