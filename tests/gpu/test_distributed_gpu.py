"""Several processes on CUDA (nccl), through `tunelab train CONFIG --nproc N` as users run it: one rank on one GPU
(the launcher's path with the single-process training), and, where the host has two GPUs, DDP (LoRA on the fast
path: fused kernels and grouped projections), FSDP2 (full fine-tuning) and FSDP2 over QLoRA (the NF4 base sharded)
against one process, then resume of the two-rank run on one GPU. On one GPU too: QLoRA under FSDP2 with a process
group of one rank, against the unsharded model (the Triton dequantization of FSDP2's gathered NF4 tensors).

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


def _config(tmp_path: Path, model_dir: Path, data: Path, case: str) -> Path:
    """case: lora (DDP), full (FSDP2) or qlora_fsdp2 (QLoRA under FSDP2, the NF4 base sharded)."""
    method = "full" if case == "full" else "lora"
    config = {
        "model": {"name": str(model_dir), "device": "cuda"},
        "data": {"train": [str(data)], "max_length": 256},
        "method": {
            "name": method,
            "r": 16,
            "dropout": 0.0,
            "target_modules": ["all-linear"],
            "quantize_base": "nf4" if case == "qlora_fsdp2" else "none",
        },
        "train": {
            "max_steps": STEPS,
            "micro_batch": 2,
            "grad_accum": 4,
            "lr": 2e-3 if method == "lora" else 3e-4,
            "save_every": 3,
            "keep_checkpoints_after_finish": True,
            "sharding": "fsdp2" if case == "qlora_fsdp2" else "auto",
        },
    }
    path = tmp_path / f"{case}.yaml"
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
@pytest.mark.parametrize("method", ["lora", "full", "qlora_fsdp2"])
def test_two_gpus_train_what_one_trains_and_resume_on_one(deep_llama_dir, chat_file, tmp_path, method, gpu_report):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    config = _config(tmp_path, deep_llama_dir, chat_file, method)
    one = recipe.train(config, {"output_dir": str(tmp_path / "one")}).run_dir
    done = _launch(config, tmp_path / "two", "--nproc", "2")
    assert f"ranks: 2 (nccl, {'ddp' if method == 'lora' else 'fsdp2'})" in done.stdout
    if method == "qlora_fsdp2":
        assert "NF4 base:" in done.stdout and (tmp_path / "two" / "adapter_model.safetensors").is_file()
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


@pytest.mark.gpu
def test_qlora_fsdp2_on_one_gpu_trains_what_the_unsharded_model_trains(deep_llama_dir, tmp_path):
    from tunelab.training.distributed import fsdp2_holds_integer_parameters

    if not fsdp2_holds_integer_parameters():
        pytest.skip(f"torch {torch.__version__}'s FSDP2 cannot hold integer parameters (QLoRA under fsdp2 is refused)")
    """QLoRA under FSDP2 on one GPU (a process group of one rank): each layer's NF4 codes and absmaxes are gathered
    by FSDP2 into fresh tensors before its forward and backward, freed after, and dequantized there by the Triton
    kernel (one node per projection, and straight into the grouped projections' stacked matrix). The gathered
    tensors dequantize bit for bit as the unsharded layer's, and 4 steps give the unsharded model's losses and
    gradient norms: the same kernels on the same bytes, so within cuBLAS's run-to-run spread (relative 1e-3)."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from tunelab.config import load_config
    from tunelab.models.load import resolve_source
    from tunelab.quant.linear import NF4Linear
    from tunelab.quant.nf4_ops import dequantize
    from tunelab.training.build import build_model, decoder_layers
    from tunelab.training.distributed import Ranks, nf4_bytes_held, shard
    from tunelab.training.optim import build_optimizer
    from tunelab.training.step import train_step

    overrides = {
        "model.name": str(deep_llama_dir),
        "model.device": "cuda",
        "method.quantize_base": "nf4",
        "method.target_modules": ["all-linear"],
        "method.r": 16,
        "method.dropout": 0.0,
    }
    cfg = load_config(None, overrides).config
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        models = []
        for _ in range(2):
            torch.manual_seed(0)  # the same LoRA A in both
            models.append(build_model(resolve_source(cfg.model.name), cfg.model, cfg.method).model)
        whole, sharded = models
        shard(sharded)
        layer = decoder_layers(sharded)[3]
        nf4 = [m for m in layer.modules() if isinstance(m, NF4Linear)]
        assert nf4 and all(isinstance(m.weight_packed, DTensor) for m in nf4)
        assert nf4_bytes_held(sharded)[0] == nf4_bytes_held(whole)[0]  # one rank holds it all
        reference = [m for m in decoder_layers(whole)[3].modules() if isinstance(m, NF4Linear)]
        layer.unshard()  # what FSDP2 does before the layer's forward
        for mine, theirs in zip(nf4, reference, strict=True):
            assert not isinstance(mine.weight_packed, DTensor) and mine.weight_packed.is_cuda
            assert torch.equal(dequantize(mine.nf4(), torch.bfloat16), dequantize(theirs.nf4(), torch.bfloat16))
        layer.reshard()

        gen = torch.Generator().manual_seed(0)
        batches = []
        for _ in range(2):
            ids = torch.randint(0, whole.config.vocab_size, (2, 128), generator=gen).cuda()
            mask, positions = torch.ones_like(ids), torch.arange(128, device="cuda").expand(2, -1)
            batches.append({"input_ids": ids, "labels": ids, "attention_mask": mask, "position_ids": positions})
        curves = []
        for model in (whole, sharded):
            optimizer = build_optimizer(model, 2e-3, 0.0)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
            ranks = Ranks(0, 1, 0)
            steps = [train_step(model, batches, optimizer, scheduler, 1.0, ranks=ranks) for _ in range(4)]
            curves.append([(s["loss"], s["grad_norm"]) for s in steps])
        for (loss_a, norm_a), (loss_b, norm_b) in zip(*curves, strict=True):
            assert loss_b == pytest.approx(loss_a, rel=1e-3)
            assert norm_b == pytest.approx(norm_a, rel=1e-3)
        assert curves[0][-1][0] < curves[0][0][0]  # it trained
    finally:
        dist.destroy_process_group()
