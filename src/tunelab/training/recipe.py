"""The training recipe: config -> model, data, optimizer -> the loop -> a run directory.

The loop is plain: one `train_step` per optimizer step; eval, checkpoint and logging are one-line calls every N
steps. Resuming restores weights, optimizer, RNG and the position inside the epoch, so a resumed run takes the
same steps as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from tunelab.atomic import write_json, write_text
from tunelab.config import ResolvedConfig, RunConfig, describe, dump_yaml, load_config
from tunelab.errors import ConfigError, RunDirError
from tunelab.models.build import build_model
from tunelab.models.load import load_tokenizer, resolve_source
from tunelab.rundir import CONFIG_FILE, RunInfo, write_info
from tunelab.tasks import get_task
from tunelab.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from tunelab.training.metrics import MetricsLog, plot_losses
from tunelab.training.optim import build_optimizer
from tunelab.training.schedule import lr_factor
from tunelab.training.step import train_step


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_loss: float | None
    eval_loss: float | None


def resolve(
    config: str | Path | RunConfig | ResolvedConfig | None, overrides: dict[str, Any] | None = None
) -> ResolvedConfig:
    """Accept a YAML path, a RunConfig, or an already resolved config, and apply overrides."""
    if isinstance(config, ResolvedConfig):
        if overrides:
            raise ValueError("apply overrides when loading the config")
        return config
    if isinstance(config, RunConfig):
        import dataclasses

        flat = {}
        for section, value in dataclasses.asdict(config).items():
            if (
                isinstance(value, dict)
                and hasattr(config, section)
                and dataclasses.is_dataclass(getattr(config, section))
            ):
                flat.update({f"{section}.{k}": v for k, v in value.items()})
            else:
                flat[section] = value
        resolved = load_config(None, flat | (overrides or {}))
        resolved.origins = {k: ("python" if v != "default" else v) for k, v in resolved.origins.items()}
        return resolved
    return load_config(config, overrides)


def prepare_run_dir(run_dir: Path, overwrite: bool, resume: bool) -> None:
    if resume:
        if latest_checkpoint(run_dir) is None:
            raise RunDirError(
                f"{run_dir}: nothing to resume from (no checkpoints/ with a completed checkpoint). Set train.save_every to write them."
            )
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise RunDirError(
                f"{run_dir}: the run directory exists and is not empty. Pass --overwrite to replace it, --resume to continue it, or choose another output_dir."
            )
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def train(
    config: str | Path | RunConfig | ResolvedConfig | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    resume: bool = False,
) -> TrainResult:
    """Fine-tune as the config says and write the run directory. `overrides` are {'train.lr': 1e-4, ...}."""
    resolved = resolve(config, overrides)
    cfg = resolved.config
    # Grow CUDA allocator segments instead of caching fixed-size blocks: less fragmentation, lower peak reserved.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    run_dir = Path(cfg.output_dir)
    prepare_run_dir(run_dir, cfg.overwrite, resume)
    print("tunelab train — resolved config (value, then where it came from):")
    print(describe(resolved), flush=True)
    torch.manual_seed(cfg.train.seed)

    task = get_task(cfg.task, cfg)
    source = resolve_source(cfg.model.name)
    tokenizer = load_tokenizer(source, cfg.model.trust_remote_code)
    data = task.build_data(cfg, tokenizer, cfg.train.seed)
    print(data.report.summary(), flush=True)
    checkpointing = "offload" if cfg.train.offload_activations else cfg.train.checkpointing
    built = build_model(source, cfg.model, cfg.method, checkpointing)
    if cfg.data.packing and built.impl != "fast":
        raise ConfigError(
            "option 'data.packing' needs the fast path (a Llama-family model with model.impl auto or fast); "
            f"{cfg.model.name} runs on the generic path. Set data.packing to false."
        )
    task.prepare(built, data, cfg)
    model = built.model
    print(
        f"model: {cfg.model.name} ({built.impl} path, {built.dtype}, {built.device}); trainable parameters "
        f"{built.trainable:,} of {built.total:,} ({100 * built.trainable / built.total:.2f}%)",
        flush=True,
    )

    t = cfg.train
    pad_id = tokenizer.pad_token_id
    batches_per_epoch = len(task.make_batches(data.train, t.micro_batch, pad_id, shuffle=False, seed=t.seed, epoch=0))
    steps_per_epoch = math.ceil(batches_per_epoch / t.grad_accum)
    total_steps = t.max_steps or max(1, math.ceil(t.epochs * steps_per_epoch))
    warmup = int(t.warmup_ratio * total_steps)
    optimizer = build_optimizer(model, t.lr, t.weight_decay, t.optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup, t.scheduler))
    eval_batches = [
        _to_device(b, built.device)
        for b in task.make_batches(data.eval, t.micro_batch, pad_id, shuffle=False, seed=t.seed, epoch=0)
    ]

    position = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "tokens": 0, "elapsed_s": 0.0}
    if resume:
        checkpoint = latest_checkpoint(run_dir)
        position = load_checkpoint(checkpoint, model, optimizer)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, total_steps, warmup, t.scheduler), last_epoch=position["step"] - 1
        )
        print(f"resuming from {checkpoint} (step {position['step']} of {total_steps})", flush=True)
    else:
        write_text(run_dir / CONFIG_FILE, dump_yaml(cfg))
        write_json(run_dir / "data_report.json", data.report.to_dict())
    log = MetricsLog(run_dir, resume_step=position["step"] if resume else None)
    info = RunInfo(
        base_model=cfg.model.name,
        method=cfg.method.name,
        task=task.name,
        template=data.template.name,
        system_prompt=cfg.data.system_prompt,
        refusal=cfg.eval.refusal,
        impl=built.impl,
        quantize_base=cfg.method.quantize_base,
        trust_remote_code=cfg.model.trust_remote_code,
        total_steps=total_steps,
        extra=dict(data.facts),
    )
    write_info(run_dir, info)

    last_loss = eval_loss = None
    eval_metrics: dict[str, float] = {}
    bar = tqdm(total=total_steps, initial=position["step"], desc="train", unit="step", dynamic_ncols=True)
    started = time.perf_counter() - position["elapsed_s"]
    while position["step"] < total_steps:
        batches = task.make_batches(
            data.train, t.micro_batch, pad_id, shuffle=cfg.data.shuffle, seed=t.seed, epoch=position["epoch"]
        )
        while position["batch_in_epoch"] < len(batches) and position["step"] < total_steps:
            group = batches[position["batch_in_epoch"] : position["batch_in_epoch"] + t.grad_accum]
            tic = time.perf_counter()
            stats = train_step(
                model, [_to_device(b, built.device) for b in group], optimizer, scheduler, t.max_grad_norm, task
            )
            tokens = sum(int(b["attention_mask"].sum()) for b in group)
            position["step"] += 1
            position["batch_in_epoch"] += len(group)
            position["tokens"] += tokens
            position["elapsed_s"] = time.perf_counter() - started
            last_loss = stats["loss"]
            record = {
                "step": position["step"],
                "epoch": position["epoch"] + position["batch_in_epoch"] / len(batches),
                "loss": stats["loss"],
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": stats["grad_norm"],
                "tokens_per_s": tokens / (time.perf_counter() - tic),
                "elapsed_s": position["elapsed_s"],
                **stats["metrics"],
            }
            if position["step"] % t.log_every == 0 or position["step"] == total_steps:
                log.write(record)
            bar.set_postfix(
                loss=f"{stats['loss']:.4f}", lr=f"{record['lr']:.2e}", tok_s=f"{record['tokens_per_s']:.0f}"
            )
            bar.update(1)
            if eval_batches and t.eval_every and position["step"] % t.eval_every == 0:
                eval_metrics = task.evaluate(model, eval_batches)
                log.write({"step": position["step"], **eval_metrics})
            if t.save_every and position["step"] % t.save_every == 0:
                save_checkpoint(run_dir, model, optimizer, position, t.keep_checkpoints)
        if position["batch_in_epoch"] >= len(batches):
            position["epoch"] += 1
            position["batch_in_epoch"] = 0
    bar.close()

    if eval_batches and not (t.eval_every and total_steps % t.eval_every == 0):
        eval_metrics = task.evaluate(model, eval_batches)
        log.write({"step": total_steps, **eval_metrics})
    if eval_metrics:
        eval_loss = eval_metrics["eval_loss"]
        print("eval: " + ", ".join(f"{name.removeprefix('eval_')} {value:.4f}" for name, value in eval_metrics.items()))
    model.eval()
    task.save(run_dir, built, tokenizer, cfg, data)
    plot_losses(run_dir)
    info.finished, info.steps, info.tokens = True, position["step"], position["tokens"]
    info.final_loss, info.eval_loss, info.elapsed_s = last_loss, eval_loss, round(position["elapsed_s"], 1)
    write_info(run_dir, info)
    print(
        f"saved to {run_dir} ({position['step']} steps, {position['tokens']:,} tokens, {position['elapsed_s']:.0f} s)",
        flush=True,
    )
    if cfg.eval.questions:
        _compare_after_training(run_dir, cfg)
    return TrainResult(run_dir, position["step"], last_loss, eval_loss)


def _compare_after_training(run_dir: Path, cfg: RunConfig) -> None:
    """Answer eval.questions with the base and the saved tuned model and print the scores."""
    from tunelab.infer.compare import compare, format_comparison, read_questions, save_comparison
    from tunelab.infer.generate import GenerationSettings
    from tunelab.infer.run import open_run

    run = open_run(run_dir, device=cfg.model.device)
    result = compare(
        run,
        read_questions(cfg.eval.questions),
        GenerationSettings(max_new_tokens=cfg.eval.max_new_tokens),
        cfg.eval.refusal,
    )
    save_comparison(result, run_dir)
    print(format_comparison(result), flush=True)
