"""What run.json says of a run that has not finished: its steps, tokens, time and last logged loss, as of the
checkpoint --resume starts from, and once it stopped, why (`end_record`: Ctrl-C, the non-finite guard, an error). It is written when the run starts from a checkpoint, after every checkpoint, and when
the run stops; a process killed outright (SIGKILL, no handler runs) thus leaves run.json at its last checkpoint.

A staged run (training/stages.py) sums its stages' run.json into its own (`whole_run`): `record_stopped` writes it as
of the stages so far, after every checkpoint of a stage and after every stage, so that the run's run.json and the
stopped stage's agree with each other and with what --resume restarts from.
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

from tunelab.errors import Interrupted, Terminated, TrainingStopped, TunelabError
from tunelab.run_info import RunInfo
from tunelab.rundir import is_run_dir, read_info, write_info
from tunelab.training.metrics import logged_at, read_metrics
from tunelab.training.stage_resume import stage_dir


def record_progress(run_dir: Path, info: RunInfo, position: dict) -> None:
    """run.json of an unfinished run at `position`: its steps, tokens, time and last logged train loss (final_loss)."""
    info.steps, info.skipped_steps = position["step"], position["skipped_steps"]
    note_overflows(info, position)
    info.tokens, info.elapsed_s = position["tokens"], round(position["elapsed_s"], 1)
    with contextlib.suppress(TunelabError, OSError):
        info.final_loss = logged_at(read_metrics(run_dir), position["step"])[0]
    write_info(run_dir, info)


def end_record(step: int, error: BaseException | None = None) -> dict:
    """run.json's `end`: why training stopped after `step`. No error: every step was trained (`finished`). Ctrl-C or
    SIGTERM between steps, or a second one within a step: `interrupted`, with the signal. The non-finite guard (exit
    3): `non_finite`. Anything else: `error`, with the first line of its message."""
    if error is None:
        return {"reason": "finished", "step": step}
    if isinstance(error, Interrupted | KeyboardInterrupt):
        signum = error.exit_code - 128 if isinstance(error, Interrupted) else signal.SIGINT
        name = "SIGTERM" if isinstance(error, Terminated) or signum == signal.SIGTERM else "SIGINT"
        return {"reason": "interrupted", "step": step, "signal": name}
    if isinstance(error, TrainingStopped):
        return {"reason": "non_finite", "step": step}
    message = (str(error).strip().splitlines() or [""])[0][:300]
    return {
        "reason": "error",
        "step": step,
        "error": f"{type(error).__name__}: {message}" if message else type(error).__name__,
    }


def overflow_steps(info: RunInfo) -> int:
    """An fp16 run's overflow steps as its run.json records them (`note_overflows`); 0 for other runs."""
    scale = info.extra.get("fp16_loss_scale")
    return int(scale.get("overflow_steps", 0)) if isinstance(scale, dict) else 0


def note_overflows(info: RunInfo, position: dict) -> None:
    """run.json of an fp16 run: its overflow steps and the loss scale it ended at (extra.fp16_loss_scale)."""
    if "loss_scale" in position:
        info.extra["fp16_loss_scale"] = {
            "overflow_steps": position.get("overflow_steps", 0),  # optional in a checkpoint (verify_checkpoint)
            "final_scale": position["loss_scale"]["scale"],
        }


def whole_run(info: RunInfo, each: list[RunInfo]) -> None:
    """The last stage's run.json (`info`) made the whole run's: steps, tokens, time, skipped steps and fp16 overflow
    steps summed over the stages (the report showed the last stage's tokens and time beside the steps of all), and the
    step train.keep_best kept counted across the stages, as metrics.jsonl counts it."""
    info.steps, info.total_steps = sum(i.steps for i in each), sum(i.total_steps for i in each)
    info.tokens, info.skipped_steps = sum(i.tokens for i in each), sum(i.skipped_steps for i in each)
    info.elapsed_s = round(sum(i.elapsed_s for i in each), 1)
    scales = [i.extra["fp16_loss_scale"] for i in each if "fp16_loss_scale" in i.extra]
    if scales:  # fp16 stages: their overflow steps summed, the scale the last of them ended at
        overflows = sum(s["overflow_steps"] for s in scales)
        info.extra["fp16_loss_scale"] = {"overflow_steps": overflows, "final_scale": scales[-1]["final_scale"]}
    if info.end:  # the last stage's, at the run's step
        info.end = info.end | {"step": info.steps}
    best = info.extra.get("best")
    if isinstance(best, dict) and isinstance(best.get("step"), int):
        info.extra["best"] = best | {"step": best["step"] + sum(i.steps for i in each[:-1])}


def record_stopped(run_dir: Path, count: int | None = None, error: BaseException | None = None) -> None:
    """The run.json of a staged run not (yet) finished: the steps, tokens and time of the stages so far, and the
    stopped stage's final_loss (its last logged loss), as that stage's own run.json records them. `count`: the run's
    number of stages (by default, as its run.json names them). `error`: what stopped the run (its `end`); without
    one, the run goes on (or was killed outright) and has no `end`."""
    info = read_info(run_dir, require_finished=False)
    count = count if count is not None else len(info.extra.get("stages") or [])
    started = [stage_dir(run_dir, k) for k in range(1, count + 1) if is_run_dir(stage_dir(run_dir, k))]
    each = [read_info(here, require_finished=False) for here in started]
    if not each:
        return
    info.final_loss = each[-1].final_loss
    whole_run(info, each)  # its total_steps: of the stages started; a later stage's length is known once it starts
    info.end = end_record(info.steps, error) if error is not None else {}
    # where it stopped: inside stage k, or after stage k was saved (the report says which, and of how many stages)
    info.extra["stopped"] = {"stage": len(each), "stages": count, "stage_finished": each[-1].finished}
    write_info(run_dir, info)
