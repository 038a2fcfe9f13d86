"""The end of a run: after its last step, the final evaluation, keep_best's weights put back (training/best.py), the
result saved and the step checkpoints removed (training/result.py), the verdict on the loss curves
(training/verdict.py), and run.json made the finished run's. Ctrl-C during it lets the evaluation and the save
finish: the steps are done, and a checkpoint of the last one may not exist.
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.config import RunConfig
from tunelab.config.flags import CLI, Spelling
from tunelab.errors import Interrupted, Terminated
from tunelab.run_info import RunInfo, hub_revision
from tunelab.rundir import write_info
from tunelab.training.auto import AutoPlan
from tunelab.training.best import FSDP2_ADVICE
from tunelab.training.checkpoint import latest_checkpoint
from tunelab.training.early_stop import KEY as EARLY_STOP
from tunelab.training.early_stop import REASON as STOPPED_EARLY
from tunelab.training.evals import eval_line
from tunelab.training.interrupt import graceful_interrupt
from tunelab.training.loop import Run, evaluate_at
from tunelab.training.metrics import logged_at, plot_losses, read_metrics
from tunelab.training.outdir import OutputPlan
from tunelab.training.progress import end_record, note_overflows
from tunelab.training.result import save_final, tidy_up
from tunelab.training.sharded_checkpoint import full_weights
from tunelab.training.verdict import judge_metrics
from tunelab.training.verdict_curve import Verdict


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_loss: float | None
    eval_loss: float | None
    skipped_steps: int = 0
    auto: dict[str, dict] = field(default_factory=dict)  # option -> {value, reason}, for the options that were auto
    verdict: Verdict | None = None
    interrupted: bool = False  # Ctrl-C came after the steps: the result is saved, what follows training is skipped
    stop_signal: int = signal.SIGINT  # the signal that interrupted it (SIGTERM: a staged run exits 143)
    overflow_steps: int = 0  # fp16: steps skipped for an overflow of the loss scale (not counted in skipped_steps)
    # train.early_stopping_patience stopped it before its planned steps: run.json's extra.early_stop (step,
    # planned_steps, patience, min_delta, best_step, best_eval_loss, waited); None when it ran every step
    early_stop: dict | None = None
    pushed: str | None = None  # train.push_to: the URL of the commit that pushed the result to the hub


def finish(
    run: Run,
    cfg: RunConfig,
    plan: OutputPlan,
    info: RunInfo,
    tokenizer,
    last_loss: float | None,
    resume_step: int | None,
    best_off: str,
    steps_per_epoch: int,
    auto: AutoPlan,
) -> TrainResult:
    """Evaluate, keep the best, save, judge and record the run whose steps `run` has trained (cfg: its config as
    written, `auto` unresolved; run.cfg: the values it trained with)."""
    t, model, run_dir, position, best, ranks = (
        run.cfg.train,
        run.built.model,
        run.run_dir,
        run.position,
        run.best,
        run.ranks,
    )
    task, data, evals, log, total_steps, built = run.task, run.data, run.evals, run.log, run.total_steps, run.built
    train_model = run.train_model
    end = position["step"]  # total_steps, or the step early stopping stopped at (an evaluated one)
    final_eval = not (t.eval_every and end % t.eval_every == 0)  # the loop's last evaluation was not the end's
    if resume_step == end:  # resumed at the last step (or its early stop): this process ran no step and no evaluation
        last_loss, run.eval_metrics = logged_at(read_metrics(run_dir), end)
        final_eval = not run.eval_metrics  # the run before evaluated its last step (and logged it) or did not
        if "eval_loss" in run.eval_metrics:  # keep_best saw that evaluation, after the checkpoint's copy of the best
            best.observe(end, run.eval_metrics["eval_loss"], model)
    # Ctrl-C from here on lets the evaluation and the save finish: the steps are done, and a checkpoint of the last
    # one may not exist (train.save_every), so stopping now would lose the run. The trackers' runs end with the block:
    # finished once the result is saved, failed if the evaluation or the save raises.
    with graceful_interrupt("the training is done: finishing the evaluation and saving the result first") as stop, log:
        if evals and final_eval:
            evaluate_at(run, end)
        # patience used up by the last planned step's evaluation is no early stop: the run trained every step
        early_stop = run.early.record(end, total_steps) if run.stopped_early and end < total_steps else None
        if early_stop is not None:
            print(run.early.message(end, total_steps, reward=cfg.task == "grpo"), flush=True)
            info.extra[EARLY_STOP] = early_stop
        eval_metrics = run.eval_metrics
        eval_loss = eval_metrics.get("eval_loss")
        for name, value in eval_metrics.items():
            if name.startswith("eval_loss/"):
                print(f"{name} {value:.4f}")
        if eval_loss is not None:
            print(eval_line(task, eval_metrics, "class_weights" in data.facts))
        kept_best = best.restore(
            model, position["step"], eval_loss, keep_file=t.keep_checkpoints_after_finish, reward=cfg.task == "grpo"
        )
        if best_off:
            print(best_off, flush=True)  # said again where keep_best says which step is the result
        if kept_best:
            print(kept_best, flush=True)
            info.extra["best"] = {"step": best.step, "eval_loss": best.loss}
            eval_loss = best.loss
            if best.step != position["step"] and ranks.main:  # every eval set's loss of the weights kept, not the last
                eval_metrics = logged_at(read_metrics(run_dir), best.step)[1] or {"eval_loss": best.loss}
        model.eval()
        # FSDP2: every rank sends its shards to rank 0
        weights = full_weights(train_model, ranks, cfg.method.is_adapter)
        if ranks.main:
            try:
                saved = (run_dir, built, tokenizer, cfg, task, data, weights, hub_revision(info), run.spelling)
                info.result_files = save_final(*saved, owned=info.result_files)  # as saved, for a later --resume
            except KeyboardInterrupt as exc:  # a second Ctrl-C or SIGTERM while saving: nothing of the result is kept
                raise save_cut_short(run_dir, position["step"], total_steps, exc, run.spelling) from None
            plot_losses(run_dir, [cfg.task])
        # the passes the run made: max_steps, not epochs, set the length, or early stopping ended it before either
        passes = end / steps_per_epoch if t.max_steps or early_stop else t.epochs
        verdict = judge_metrics(
            read_metrics(run_dir),
            steps_per_epoch,
            passes,
            t.lr,
            t.max_steps,
            best.step,
            task=cfg.task,
            labels=len(data.facts.get("labels") or []) or None,  # a classify run's labels
            orpo_lambda=cfg.dpo.beta if cfg.task == "dpo" and cfg.dpo.loss == "orpo" else None,
            kto_weight=data.facts.get("kto_weight") if cfg.task == "dpo" and cfg.dpo.loss == "kto" else None,
            keep_best_off=FSDP2_ADVICE if best_off else "",
            early=early_stop,  # the verdict saved in run.json says it too, and advises no longer run
        )
        print(verdict.text, flush=True)
        info.extra["verdict"] = verdict.to_dict()
        info.finished, info.steps, info.tokens = True, position["step"], position["tokens"]
        info.final_loss, info.eval_loss, info.elapsed_s = last_loss, eval_loss, round(position["elapsed_s"], 1)
        info.skipped_steps, info.end = position["skipped_steps"], end_record(position["step"])
        if early_stop is not None:
            info.end["reason"] = STOPPED_EARLY
        note_overflows(info, position)
        losses = {k: v for k, v in eval_metrics.items() if k.split("/")[0] == "eval_loss"}
        if any(name != "eval_loss" for name in losses):  # a mixture's sources, a staged run's earlier stages
            info.extra["eval_losses"] = losses
        if ranks.main:
            write_info(run_dir, info)
        skipped = f" of the {total_steps} planned, stopped early" if early_stop is not None else ""
        skipped += f", {info.skipped_steps} skipped as non-finite" if info.skipped_steps else ""
        if position.get("overflow_steps"):
            skipped += f", {position['overflow_steps']} skipped as fp16 overflow"
        print(
            f"saved to {run_dir} ({position['step']} step{'' if position['step'] == 1 else 's'}{skipped}, "
            f"{position['tokens']:,} tokens, "
            f"{position['elapsed_s']:.0f} s)",
            flush=True,
        )
        if ranks.main:
            tidy_up(run_dir, plan, t.keep_checkpoints_after_finish, run.spelling)
    ranks.barrier()  # no rank returns before the result is saved
    interrupted = stop.requested or run.interrupted
    stop_signal = stop.signum if stop.requested else run.stop_signal
    if interrupted:
        print(f"interrupt: the result is saved in {run_dir}; nothing after training runs.", file=sys.stderr, flush=True)
    return TrainResult(
        run_dir,
        position["step"],
        last_loss,
        eval_loss,
        info.skipped_steps,
        auto.to_dict(),
        verdict,
        interrupted,
        stop_signal,
        position.get("overflow_steps", 0),
        early_stop,
    )


def save_cut_short(
    run_dir: Path, step: int, total: int, exc: KeyboardInterrupt, spelling: Spelling = CLI
) -> Interrupted:
    """Training finished, but a second signal stopped the save of its result: said as such (exit 130, or 143 after
    SIGTERM), with the checkpoint to resume from (--resume named as `spelling` names it); run.json still says the run
    did not finish."""
    signum = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
    checkpoint = latest_checkpoint(run_dir)
    how = (
        f"continue with {spelling.rerun}"
        if checkpoint is not None
        else "no checkpoint was written (train.save_every): train it again"
    )
    return Interrupted(
        f"{run_dir}: the save of the result was cut short after step {step} of {total}: nothing of it was kept, and "
        f"run.json says the run did not finish; {how}.",
        step=step,
        checkpoint=str(checkpoint) if checkpoint is not None else None,
        signum=signum,
        at=f"step {step} of {total}, while saving the result, which was cut short (nothing of it was kept)",
        resumable=checkpoint is not None,
    )
