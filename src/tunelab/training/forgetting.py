"""The forgetting matrix of a staged run: each stage's result scored on every earlier stage's eval data (row k: stage
k's run.json, its `eval_loss/stage-j`), a grpo stage's column as its reward; run.json's record of each stage
(`stage_record`), and the matrix as the table train prints (`format_forgetting`).
"""

from __future__ import annotations

from pathlib import Path

from tunelab.config.load import STAGE_PREFIX
from tunelab.run_info import RunInfo
from tunelab.rundir import read_info
from tunelab.training.stage_resume import stage_dir

REWARD = "eval reward"  # a grpo stage's column: its eval_loss is -eval_reward (tasks/grpo.py), shown as the reward
LOSS = "eval loss"


def forgetting(run_dir: Path, count: int) -> tuple[list[list[float | None]], list[str]]:
    """matrix[k][j]: the eval loss of stage k+1's result on stage j+1's eval data (j <= k), from their run.json, and
    per column what it measures: LOSS, or REWARD for a grpo stage's eval prompts (the mean reward of greedy answers,
    which its eval_loss holds negated for keep_best). Only stages of one task fill a column, so each has one measure."""
    matrix, measures = [], []
    for k in range(1, count + 1):
        info = read_info(stage_dir(run_dir, k))
        losses = info.extra.get("eval_losses", {})
        row = [losses.get(f"eval_loss/{STAGE_PREFIX}{j}") for j in range(1, k)]
        matrix.append(row + [info.eval_loss])
        measures.append(REWARD if info.task == "grpo" else LOSS)
    matrix = [[-v if v is not None and measures[j] == REWARD else v for j, v in enumerate(row)] for row in matrix]
    return matrix, measures


def stage_record(info: RunInfo) -> dict:
    """What run.json's extra.stages[] says of a finished stage: its task, method, steps and base, and its eval figure
    under its name: `eval_reward` for a grpo stage (the mean reward of greedy answers, which its eval_loss holds
    negated for keep_best), else `eval_loss`. Runs written before 2026-12-05 hold a grpo stage's as `eval_loss`."""
    record = {key: getattr(info, key) for key in ("task", "method", "steps", "base_model")}
    if info.task == "grpo":
        record["eval_reward"] = -info.eval_loss if info.eval_loss is not None else None
    else:
        record["eval_loss"] = info.eval_loss
    return record


def unmeasured(names: list[str], matrix: list[list[float | None]], tasks: list[str] | None) -> list[str]:
    """The empty cells of the matrix whose row's stage is of another task than the column's (a stage scores only the
    eval data of its own task: a dpo model is not given an sft stage's eval loss), as `after X (task t) on Y (task u)`,
    for a column that has eval data."""
    if not tasks:
        return []
    have = [any(j < len(row) and row[j] is not None for row in matrix) for j in range(len(names))]
    return [
        f"after {names[k]} (task {tasks[k]}) on {names[j]} (task {tasks[j]})"
        for k, row in enumerate(matrix)
        for j, v in enumerate(row)
        if v is None and have[j] and k < len(tasks) and j < len(tasks) and tasks[k] != tasks[j]
    ]


def format_forgetting(
    names: list[str], matrix: list[list[float | None]], measures: list[str], tasks: list[str] | None = None
) -> str:
    """The matrix as a table: a row per stage's result, a column per stage's eval data (a reward column marked); a
    line saying why there is none when no stage had eval data (a table of dashes alone said nothing), and one naming
    the cells left empty because their two stages have different tasks."""
    if all(v is None for row in matrix for v in row):
        return (
            "no forgetting matrix: no stage has eval data (give a stage data.eval or data.eval_fraction to see what "
            "the later stages keep of it)"
        )
    heads = [f"on {n}" + (" (reward)" if m == REWARD else "") for n, m in zip(names, measures)]
    first = max(len(f"after {n}") for n in names) + 2
    width = max(10, *(len(h) + 2 for h in heads))
    head = " " * first + "".join(f"{h:>{width}}" for h in heads)
    rows = [
        f"{'after ' + names[k]:<{first}}"
        + "".join(f"{v:>{width}.4f}" if v is not None else f"{'-':>{width}}" for v in row)
        for k, row in enumerate(matrix)
    ]
    title = "eval loss after each stage (rows) on each stage's eval data (columns)"
    if REWARD in measures:  # higher is better there: forgetting is a reward that falls down the column
        title += "; a grpo stage's column (reward) holds the mean reward of greedy answers, higher is better"
    other = unmeasured(names, matrix, tasks)
    if other:
        rows.append("-: not measured: " + "; ".join(other) + ": a stage scores only the eval data of its own task")
    return "\n".join([title + ":", head, *rows])
