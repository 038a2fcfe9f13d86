"""`tunelab train` with train.cuda_graphs on and off on the GPU: graphs are captured and used, the run trains, and
its losses follow the eager run's (the batches are padded to width buckets under graphs, so equal to rounding)."""

import json

import pytest
import torch

from tunelab.cli import main

from .test_train_gpu import write_config

CASES = {
    "lora": {"method": {"name": "lora", "r": 16}, "train": {"lr": 2e-3}},
    "qlora-recompute": {
        "method": {"name": "lora", "r": 16, "quantize_base": "nf4"},
        "train": {"lr": 2e-3, "checkpointing": True, "offload_activations": False},
    },
    "qlora-fp16": {
        "model": {"dtype": "fp16"},
        "method": {"name": "lora", "r": 16, "quantize_base": "nf4"},
        "train": {"lr": 2e-3},
    },
}


def _losses(config, out, graphs: str, capsys) -> tuple[list[float], str]:
    assert main(["train", str(config), "--output_dir", str(out), "--train.cuda_graphs", graphs]) == 0
    printed = capsys.readouterr().out
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r], printed


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(CASES))
def test_graphs_follow_eager_through_the_cli(name, deep_llama_dir, chat_file, tmp_path, gpu_report, capsys):
    case = CASES[name] | {"train": CASES[name]["train"] | {"micro_batch": 1, "grad_accum": 4}}
    config = write_config(tmp_path / "config.yaml", deep_llama_dir, chat_file, tmp_path / "unused", case)
    eager, printed_eager = _losses(config, tmp_path / "eager", "false", capsys)
    graphed, printed = _losses(config, tmp_path / "graphs", "true", capsys)
    assert "cuda graphs: off (train.cuda_graphs: false)" in printed_eager
    assert "cuda graphs: on" in printed
    assert all(x == x and abs(x) != float("inf") for x in graphed)
    worst = max(abs(a - b) for a, b in zip(eager, graphed))
    gpu_report({"case": f"graphs-{name}", "first_loss": graphed[0], "last_loss": graphed[-1], "max_diff": worst})
    assert len(graphed) == len(eager)
    assert worst < 0.05 * max(1.0, abs(eager[0])), (eager, graphed)
    assert graphed[-1] < graphed[0] - 1.0
    torch.cuda.empty_cache()
