"""The loop: one `train_step` per optimizer step, until the run's last step, over a `Run` that the recipe
(training/recipe.py) has set up.

Each step takes the next `grad_accum` micro-batches of the epoch (for grpo, what `rollout` samples from them),
trains on this rank's share of them, then advances `Run.position` (step, epoch, batch in the epoch, tokens, time,
skipped steps, and in fp16 the loss scale and its overflow steps: what a checkpoint saves and a resumed run starts
from, so it takes the same steps as an uninterrupted one). Around the step, one line each: the non-finite guard's count (training/guard.py), the metrics record, eval
every N steps (and keep_best's check, and early stopping's count: the loop ends after the evaluation that exhausts
train.early_stopping_patience, training/early_stop.py), a checkpoint every N steps, and Ctrl-C, which stops after the
step with a checkpoint of it.
"""

from __future__ import annotations

import dataclasses
import gc
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from tunelab.config import RunConfig
from tunelab.config.flags import CLI, Spelling
from tunelab.data.loader import Datasets, epoch_rows
from tunelab.errors import Interrupted, TrainingStopped
from tunelab.tasks.task import Task
from tunelab.training.best import BestWeights
from tunelab.training.build import BuiltModel
from tunelab.training.checkpoint import intact_checkpoint, latest_checkpoint
from tunelab.training.distributed import Ranks, unwrap
from tunelab.training.early_stop import EarlyStop
from tunelab.training.evals import EvalSets, eval_record
from tunelab.training.graphs import CapturedLoss, pad_to
from tunelab.training.guard import BadSteps, stop_message
from tunelab.training.interrupt import graceful_interrupt
from tunelab.training.loss_scale import LossScale
from tunelab.training.metrics import MetricsLog
from tunelab.training.plan import MemoryPlan, measured_note
from tunelab.training.sharded_checkpoint import save as save_checkpoint
from tunelab.training.step import train_step


@dataclass
class Run:
    """What the loop works on."""

    cfg: RunConfig
    task: Task
    run_dir: Path
    built: BuiltModel
    data: Datasets
    pad_id: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    evals: EvalSets
    log: MetricsLog
    total_steps: int
    position: dict  # step, epoch, batch_in_epoch, tokens, elapsed_s, skipped_steps, bad_streak: what a checkpoint saves
    best: BestWeights
    train_model: nn.Module  # the model as the ranks train it (DDP, FSDP2): on one rank, the model itself
    ranks: Ranks
    eval_metrics: dict = dataclasses.field(default_factory=dict)  # the last eval_record
    memory: MemoryPlan | None = None  # the planner's prediction, checked against the first step's peak (CUDA)
    captured: CapturedLoss | None = None  # micro-batches replayed from CUDA graphs (training/graphs.py)
    graph_width: int = 64  # with graphs: batches are padded to a multiple of this many tokens
    interrupted: bool = False  # Ctrl-C came during the last step: the run finishes (evaluation, save), then stops
    stop_signal: int = signal.SIGINT  # the signal that stopped it (SIGTERM exits 143, not 130)
    loss_scale: LossScale | None = None  # fp16: the dynamic loss scale (training/loss_scale.py)
    # rank 0, after each checkpoint: run.json records its position (training/progress.py), so that a process killed
    # outright leaves run.json at the step --resume starts from
    progress: Callable[[dict], None] | None = None
    early: EarlyStop | None = None  # train.early_stopping_patience's count (training/early_stop.py)
    spelling: Spelling = CLI  # how the messages of a stop name --resume: as a flag, or as train's argument
    # the rates logged beside lr: {lr_B (LoRA+'s B matrices), lr_head (a head's own rate): optimizer group index}
    # (training/optim.py rate_groups)
    rate_groups: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def stopped_early(self) -> bool:
        return self.early is not None and self.early.done


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _on_device(run: Run, batch: dict) -> dict:
    """The batch on the model's device; with CUDA graphs, padded to the run's width buckets (one graph per width)."""
    batch = _to_device(batch, run.built.device)
    return pad_to(batch, run.graph_width, run.pad_id) if run.captured is not None else batch


def _peak_from_here(device: torch.device) -> None:
    """Count the CUDA peak from the first step on: loading, the checks and what the allocator cached before (a
    process that trains twice) are not the step's, and would make the plan's calibration read them as activations.
    Unreachable objects of earlier work (a notebook's last run) still hold their tensors until collected."""
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)


def loop(run: Run) -> float | None:
    """Optimizer steps until total_steps, updating run.position (and run.eval_metrics at each eval); returns the
    last finite loss."""
    t, model, position, task = run.cfg.train, unwrap(run.train_model), run.position, run.task
    bad = BadSteps.resumed(t.max_bad_steps, position)
    last_loss = None
    bar = tqdm(
        total=run.total_steps,
        initial=position["step"],
        desc="train",
        unit="step",
        dynamic_ncols=True,
        disable=not run.ranks.main,
    )
    started = time.perf_counter() - position["elapsed_s"]
    watched: dict[str, str] = {}  # the last evaluation's figure and early stopping's count, kept on the bar
    stop_early = run.stopped_early  # resumed from the checkpoint of the step it stopped at: no more steps
    with graceful_interrupt() as stop:
        while position["step"] < run.total_steps and not stop_early:
            batches = task.make_batches(
                epoch_rows(run.data, t.seed, position["epoch"]),
                t.micro_batch,
                run.pad_id,
                shuffle=run.cfg.data.shuffle,
                seed=t.seed,
                epoch=position["epoch"],
                **({"group_by_length": True} if t.group_by_length else {}),  # sft only (heads refuse the option)
            )
            while position["batch_in_epoch"] < len(batches) and position["step"] < run.total_steps:
                group = batches[position["batch_in_epoch"] : position["batch_in_epoch"] + t.grad_accum]
                if run.memory is not None and run.built.device.type == "cuda":
                    _peak_from_here(run.built.device)
                step_batches = rollout(task, model, group, position["step"], t.micro_batch, run.ranks)  # grpo
                rates = run.scheduler.get_last_lr()  # the rates this step runs at (the step moves the schedule on)
                tic = time.perf_counter()
                stats = train_step(
                    run.train_model,
                    [_on_device(run, b) for b in run.ranks.shard(step_batches)],  # this rank's part
                    run.optimizer,
                    run.scheduler,
                    t.max_grad_norm,
                    task,
                    run.ranks,
                    run.captured,
                    run.loss_scale,
                )
                tokens = sum(int(b["attention_mask"].sum()) for b in step_batches)  # all ranks': tokens/s is global
                if run.memory is not None and run.built.device.type == "cuda":
                    tqdm.write(measured_note(run.memory, torch.cuda.max_memory_reserved(run.built.device)) or "")
                    run.memory = None  # one measured step says it
                position["step"] += 1
                position["batch_in_epoch"] += len(group)
                position["tokens"] += tokens
                position["elapsed_s"] = time.perf_counter() - started
                stopping = bad.record(
                    position["step"], stats, [s for b in step_batches for row in b["sources"] for s in row]
                )
                position["skipped_steps"], position["bad_streak"] = bad.skipped, bad.saved()
                if run.loss_scale is not None:
                    position["overflow_steps"] = position.get("overflow_steps", 0) + stats["overflow"]
                    position["loss_scale"] = run.loss_scale.saved()
                record = _record(position, len(batches), stats, rates[0], tokens / (time.perf_counter() - tic))
                record |= {key: rates[index] for key, index in run.rate_groups.items()}  # lr_B, lr_head
                last_loss = last_loss if stats["skipped"] else stats["loss"]
                if (
                    position["step"] % t.log_every == 0
                    or position["step"] == run.total_steps
                    or stats["skipped"]
                    or stats["overflow"]
                ):
                    run.log.write(record)
                bar.set_postfix(_postfix(record, bad.skipped, position.get("overflow_steps", 0)) | watched)
                bar.update(1)
                if stopping:
                    bar.close()
                    raise _stopped(run, bad)
                if run.evals and t.eval_every and position["step"] % t.eval_every == 0:
                    evaluate_at(run, position["step"])
                    stop_early = run.early is not None and run.ranks.any(run.stopped_early)  # every rank together
                    watched = _eval_postfix(run)
                    bar.set_postfix(_postfix(record, bad.skipped, position.get("overflow_steps", 0)) | watched)
                saved = bool(t.save_every) and position["step"] % t.save_every == 0
                if saved:
                    _checkpoint(run)
                if run.ranks.any(stop.requested):  # all ranks stop after the same step
                    if position["step"] == run.total_steps or stop_early:  # done: finish as after a later Ctrl-C
                        run.interrupted, run.stop_signal = True, stop.signum
                        break
                    bar.close()
                    raise _interrupted(run, saved, stop.signum)
                if stop_early:
                    break
            if stop_early:
                break
            if position["batch_in_epoch"] >= len(batches):
                position["epoch"] += 1
                position["batch_in_epoch"] = 0
    bar.close()
    return last_loss


def evaluate_at(run: Run, step: int) -> None:
    """Evaluate on the eval sets, log the figures as `step`'s and let keep_best see them. Every rank: FSDP2 gathers
    the weights together."""
    model = unwrap(run.train_model)
    run.eval_metrics = eval_record(run.task, model, run.evals)
    run.log.write({"step": step, **run.eval_metrics})
    if "eval_loss" in run.eval_metrics:
        run.best.observe(step, run.eval_metrics["eval_loss"], model)
        if run.early is not None:
            run.early.observe(step, run.eval_metrics["eval_loss"])


def rollout(task: Task, model: nn.Module, group: list[dict], step: int, micro_batch: int, ranks: Ranks) -> list[dict]:
    """The micro-batches a step trains on: the group itself, or what an online task (grpo) makes of its prompts by
    sampling and scoring answers with the model as it is before the step (the ranks share the sampling)."""
    return task.rollout(model, group, step, micro_batch, ranks) if task.rollout else group


def _record(position: dict, batches: int, stats: dict, lr: float, tokens_per_s: float) -> dict:
    """One line of metrics.jsonl. A skipped step has no loss (null) and says so; NaN is not JSON. An fp16 overflow
    step has its loss but no gradient norm (inf), and says so."""
    finite = not stats["skipped"]
    record = {
        "step": position["step"],
        "epoch": position["epoch"] + position["batch_in_epoch"] / batches,
        "loss": stats["loss"] if finite else None,
        "lr": lr,
        "grad_norm": stats["grad_norm"] if finite and not stats.get("overflow") else None,
        "tokens_per_s": tokens_per_s,
        "elapsed_s": position["elapsed_s"],
        **(stats["metrics"] if finite else {}),
    }
    if not finite:
        record |= {"skipped": True, "bad_loss": repr(stats["loss"]), "bad_grad_norm": repr(stats["grad_norm"])}
    if stats.get("overflow"):
        record["overflow"] = True
    if position["skipped_steps"]:
        record["skipped_steps"] = position["skipped_steps"]
    if "loss_scale" in position:  # fp16: the scale the next step runs at, and the overflow steps so far
        record |= {"loss_scale": position["loss_scale"]["scale"], "overflow_steps": position["overflow_steps"]}
    return record


def _postfix(record: dict, skipped: int, overflows: int) -> dict[str, str]:
    loss = record["loss"]
    postfix = {"loss": f"{loss:.4f}" if loss is not None else record.get("bad_loss", "?")}
    postfix["lr"] = f"{record['lr']:.2e}"
    for key in ("lr_B", "lr_head"):  # LoRA+'s B matrices' rate, a head's own
        if key in record:
            postfix[key] = f"{record[key]:.2e}"
    postfix["tok_s"] = f"{record['tokens_per_s']:.0f}"
    if "reward" in record:  # grpo: the mean reward of the step's sampled answers
        postfix["reward"] = f"{record['reward']:.3f}"
    if skipped:
        postfix["skipped"] = str(skipped)
    if overflows:
        postfix["fp16_overflows"] = str(overflows)
    return postfix


def _eval_postfix(run: Run) -> dict[str, str]:
    """The progress bar's part after an evaluation: its eval loss (grpo: held-out reward) and, with early stopping,
    the evaluations without a new best so far out of the patience."""
    loss = run.eval_metrics.get("eval_loss")
    if not isinstance(loss, int | float):
        return {}
    postfix = {"eval_reward": f"{-loss:.3f}"} if run.task.name == "grpo" else {"eval_loss": f"{loss:.4f}"}
    if run.early is not None:
        postfix["no_best"] = f"{len(run.early.state['waited'])}/{run.early.patience}"
    return postfix


def _stopped(run: Run, bad: BadSteps) -> TrainingStopped:
    checkpoint = intact_checkpoint(run.run_dir)[0]
    return TrainingStopped(
        stop_message(bad.streak, run.total_steps, run.cfg.train.lr, str(checkpoint) if checkpoint else None)
    )


def _checkpoint(run: Run) -> None:
    """A checkpoint of the step in run.position, with a copy of keep_best's best so far."""
    folder = save_checkpoint(
        run.run_dir,
        run.train_model,
        run.optimizer,
        run.position,
        run.cfg.train.keep_checkpoints,
        run.ranks,
        spelling=run.spelling,
    )
    run.best.keep_with(folder)
    if run.progress is not None and run.ranks.main:
        run.progress(run.position)


def _interrupted(run: Run, saved: bool, signum: int) -> Interrupted:
    """Ctrl-C between steps: write a checkpoint of the step just completed (unless one was), say how to resume."""
    position = run.position
    if not saved:
        _checkpoint(run)
    checkpoint = latest_checkpoint(run.run_dir)
    return Interrupted(
        f"interrupted after step {position['step']} of {run.total_steps}; checkpoint {checkpoint}. Continue with "
        f"{run.spelling.rerun}.",
        step=position["step"],
        checkpoint=str(checkpoint),
        signum=signum,
    )
