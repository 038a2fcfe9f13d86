"""Several processes on CUDA (nccl), through `tunelab train CONFIG --nproc N` as users run it: one rank on one GPU
(the launcher's path with the single-process training), and, where the host has two GPUs, DDP (LoRA on the fast
path: fused kernels and grouped projections) and FSDP2 (full fine-tuning) against one process, then resume of the
two-rank run on one GPU.

Tolerances: one rank through the launcher runs the same kernels on the same data as the plain run: relative 1e-3
(cuBLAS may pick another algorithm in another process). Two ranks against one in bf16: relative 2e-2 on the loss
and 5e-2 on the gradient norm: bf16 keeps 8 bits of mantissa (eps 7.8e-3), and the ranks' partial sums round in
another order; a normalisation error (mean instead of sum, one rank's tokens) moves the gradient norm by a factor
near 2 and the loss well beyond 2e-2 after a few steps at this learning rate.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import tunelab
from tunelab.training import recipe

STEPS = 6


def _config(tmp_path: Path, model_dir: Path, data: Path, method: str) -> Path:
    config = {
        "model": {"name": str(model_dir), "device": "cuda"},
        "data": {"train": [str(data)], "max_length": 256},
        "method": {"name": method, "r": 16, "dropout": 0.0, "target_modules": ["all-linear"]},
        "train": {
            "max_steps": STEPS,
            "micro_batch": 2,
            "grad_accum": 4,
            "lr": 2e-3 if method == "lora" else 3e-4,
            "save_every": 3,
            "keep_checkpoints_after_finish": True,
        },
    }
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _launch(config: Path, run_dir: Path, *flags: str) -> subprocess.CompletedProcess:
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(Path(tunelab.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    }
    command = [sys.executable, "-m", "tunelab.cli", "train", str(config), "--output_dir", str(run_dir), *flags]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _curve(run_dir: Path) -> list[tuple[float, float]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["loss"], r["grad_norm"]) for r in records if "loss" in r]


def _close(a, b, loss_rtol: float, norm_rtol: float) -> None:
    assert len(a) == len(b) == STEPS
    for (loss_a, norm_a), (loss_b, norm_b) in zip(a, b):
        assert loss_b == pytest.approx(loss_a, rel=loss_rtol)
        assert norm_b == pytest.approx(norm_a, rel=norm_rtol)


@pytest.mark.gpu
def test_one_rank_through_the_launcher(deep_llama_dir, chat_file, tmp_path):
    config = _config(tmp_path, deep_llama_dir, chat_file, "lora")
    plain = recipe.train(config, {"output_dir": str(tmp_path / "plain")}).run_dir
    done = _launch(config, tmp_path / "launched", "--nproc", "1")
    assert "resolved config" in done.stdout and "ranks:" not in done.stdout  # one rank: the one-process path
    assert json.loads((tmp_path / "launched" / "run.json").read_text())["finished"]
    _close(_curve(plain), _curve(tmp_path / "launched"), 1e-3, 1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["lora", "full"])
def test_two_gpus_train_what_one_trains_and_resume_on_one(deep_llama_dir, chat_file, tmp_path, method, gpu_report):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    config = _config(tmp_path, deep_llama_dir, chat_file, method)
    one = recipe.train(config, {"output_dir": str(tmp_path / "one")}).run_dir
    done = _launch(config, tmp_path / "two", "--nproc", "2")
    assert f"ranks: 2 (nccl, {'ddp' if method == 'lora' else 'fsdp2'})" in done.stdout
    _close(_curve(one), _curve(tmp_path / "two"), 2e-2, 5e-2)
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "two", resumed)
    shutil.rmtree(resumed / "checkpoints" / f"step-{STEPS:07d}")
    recipe.train(config, {"output_dir": str(resumed)}, resume=True)
    _close(_curve(tmp_path / "two"), _curve(resumed), 2e-2, 5e-2)
    gpu_report({"test": f"distributed-{method}", "one": _curve(one), "two": _curve(tmp_path / "two")})


@pytest.mark.gpu
def test_more_ranks_than_gpus_is_refused(deep_llama_dir, chat_file, tmp_path):
    config = _config(tmp_path, deep_llama_dir, chat_file, "lora")
    nproc = str(torch.cuda.device_count() + 1)
    command = [sys.executable, "-m", "tunelab.cli", "train", str(config), "--output_dir", str(tmp_path / "r")]
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(Path(tunelab.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    }
    done = subprocess.run([*command, "--nproc", nproc], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "CUDA device" in done.stderr and "Traceback" not in done.stderr
