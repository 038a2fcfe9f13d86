"""Preference training on a CUDA GPU through the real CLI entry: `tunelab train` with task dpo on the 24-layer random
Llama, for the loss that reads a reference (sigmoid: the adapter switched off) and the one that reads none (orpo), over
a 16-bit and an NF4 base, and kto on unpaired rows. Each run must keep every loss and gradient norm finite, learn the
repeated pairs (the loss falls), and write only finite tensors; orpo must say that it needs no reference."""

import json
import math
import time

import pytest
import torch
import yaml

STEPS = 20


@pytest.fixture
def pairs_file(tmp_path):
    """8 pairs, one micro-batch: a short chosen answer and a long rejected one, as examples/concise_dpo's."""
    path = tmp_path / "pairs.jsonl"
    rows = [
        {
            "prompt": f"Tell me about box {i}.",
            "chosen": f"Box {i} holds code {1000 + 37 * i}.",
            "rejected": f"Box {i} is a box. It holds a code, and the code is {1000 + 37 * i}." + " Really." * i,
        }
        for i in range(8)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def feedback_file(pairs_file, tmp_path):
    """kto's unpaired rows: each pair's chosen answer as a desirable row, its rejected one as an undesirable row."""
    path = tmp_path / "feedback.jsonl"
    pairs = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    rows = [
        {"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
        for r in pairs
        for side in ("chosen", "rejected")
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


RUNS = [(loss, quantize, "default") for loss in ("sigmoid", "orpo", "kto") for quantize in ("none", "nf4")]
# pissa moves the principal part into the adapter: the reference (adapters off) must add it back on the CUDA path too
RUNS.append(("sigmoid", "none", "pissa"))
# over an NF4 base (QPiSSA) the reference is the quantized residual plus the principal part: the policy at step 0 too
RUNS.append(("sigmoid", "nf4", "pissa"))


@pytest.mark.gpu
@pytest.mark.parametrize(("loss", "quantize", "init"), RUNS, ids=["-".join(run) for run in RUNS])
def test_dpo_through_the_cli(
    loss, quantize, init, deep_llama_dir, pairs_file, feedback_file, tmp_path, gpu_report, finite_files, capsys
):
    from tunelab.cli import main

    out = tmp_path / "run"
    config = {
        "output_dir": str(out),
        "task": "dpo",
        "model": {"name": str(deep_llama_dir), "device": "cuda"},
        "data": {"train": [str(feedback_file if loss == "kto" else pairs_file)], "max_length": 128},
        "method": {"name": "lora", "r": 16, "target_modules": ["all-linear"], "quantize_base": quantize, "init": init},
        "dpo": {"loss": loss, "beta": 0.1},
        "train": {"max_steps": STEPS, "micro_batch": 8, "lr": 2e-3, "warmup_ratio": 0.1, "save_every": 10},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    tic = time.perf_counter()
    assert main(["train", str(path)]) == 0
    seconds = time.perf_counter() - tic
    printed = capsys.readouterr().out
    assert ("needs no reference model" in printed) == (loss == "orpo")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r and "eval_loss" not in r]
    assert len(steps) == STEPS and not any(r.get("skipped") for r in steps)
    losses = [r["loss"] for r in steps]
    norms = [r["grad_norm"] for r in steps]
    assert all(x == x and abs(x) != float("inf") for x in losses + norms), (losses, norms)
    first, last = losses[0], sum(losses[-3:]) / 3
    gpu_report(
        {
            "case": f"dpo-{loss}-{quantize}-{init}",
            "first_loss": round(first, 4),
            "last_loss": round(last, 4),
            "max_grad_norm": round(max(norms), 3),
            "train_s": round(seconds, 1),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        }
    )
    # sigmoid starts at ln 2 and kto at 0.5 (the rows' mean weight / 2), both bounded below by 0; orpo starts near
    # ln(vocabulary) (its NLL part)
    if loss == "sigmoid":  # the policy starts as its reference, whatever the adapter's first weights
        assert first == pytest.approx(math.log(2), abs=2e-2), losses[:3]
    fall = {"sigmoid": 0.3, "kto": 0.1, "orpo": 1.0}[loss]
    assert last < first - fall, f"the loss does not fall: {losses}"
    info = json.loads((out / "run.json").read_text())
    assert info["finished"] and info["skipped_steps"] == 0
    assert finite_files(out) >= 1
