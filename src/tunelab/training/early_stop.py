"""train.early_stopping_patience: stop the run once N evaluations in a row have brought no new best eval loss.

An evaluation is a new best when its eval loss is lower than the best before it by more than
train.early_stopping_min_delta; the best is that of the last evaluation that counted as one (so a loss that creeps
down by less than min_delta per evaluation still counts once it has come down by more than min_delta in all). The
evaluation of the untrained model (step 0, where the task has one) sets the first best and waits for nothing. Every
other evaluation of the loop, every train.eval_every steps, either is a new best (the count starts again) or adds its
step to the evaluations waited; at `patience` of them the run stops after that step and finishes as at its last step:
keep_best's weights are loaded (when on), the result saved, and run.json says it stopped early.

The state lives in the loop's position (`position["early_stop"]`), which every checkpoint saves, so a run resumed in
the middle of a patience window keeps its count and stops at the step an uninterrupted run stops at. A run resumed
from the checkpoint of the step it stopped at trains no further step: it only finishes. A run that trains with
patience 0 drops the count from its position, so its checkpoints hold none: the evaluations it makes are not counted,
and a count kept from before them would be stale. Resumed from such a checkpoint with patience, the run counts from
the resume and says so (`start_note`).
"""

from __future__ import annotations

from tunelab.errors import ConfigError
from tunelab.run_info import RunInfo

KEY = "early_stop"
REASON = "early_stopped"  # run.json's end.reason for a run that stopped early


class EarlyStop:
    """The patience count of a run, kept in its position (a checkpoint saves it)."""

    def __init__(self, patience: int, min_delta: float, position: dict):
        self.patience, self.min_delta = patience, min_delta
        self.state: dict = {}
        # A run resumed with patience from a checkpoint that holds no count (it trained with patience 0): the
        # evaluations before it were not counted, so counting starts at its step (0: not resumed, or counted).
        self.counted_from = 0
        if not patience:  # off: a count kept from earlier steps would be stale by the time patience is turned on
            position.pop(KEY, None)
            return
        kept = position.get(KEY)
        if not isinstance(kept, dict):
            kept = {"best_loss": None, "best_step": None, "waited": []}
            self.counted_from = position.get("step", 0)
        self.state = position[KEY] = kept

    def start_note(self) -> str:
        """The line that says where the count starts, for a run resumed with patience from a checkpoint without one."""
        if not self.counted_from:
            return ""
        return (
            f"early stopping: counting evaluations from step {self.counted_from}, where this run resumes: its "
            "checkpoint holds no count (it trained with train.early_stopping_patience 0), so the first evaluation "
            f"from here sets the best, and the run stops after {self.patience} in a row without a new one."
        )

    @property
    def done(self) -> bool:
        """Has the run waited `patience` evaluations without a new best?"""
        return bool(self.patience) and len(self.state["waited"]) >= self.patience

    def observe(self, step: int, eval_loss: float) -> None:
        """Count the evaluation of `step`: a new best starts the count again, any other adds to it."""
        if not self.patience:
            return
        best = self.state["best_loss"]
        if best is None or eval_loss < best - self.min_delta:
            self.state |= {"best_loss": eval_loss, "best_step": step, "waited": []}
        elif step not in self.state["waited"]:  # the end's evaluation of a step the loop evaluated is not a new one
            self.state["waited"].append(step)

    def record(self, step: int, planned: int) -> dict:
        """run.json's extra.early_stop of a run that stopped early at `step` of `planned` steps."""
        return {
            "step": step,
            "planned_steps": planned,
            "patience": self.patience,
            "min_delta": self.min_delta,
            "best_step": self.state["best_step"],
            "best_eval_loss": self.state["best_loss"],
            "waited": list(self.state["waited"]),  # the steps of the evaluations without a new best
        }

    def message(self, step: int, planned: int, reward: bool = False) -> str:
        """The end-of-run line of a run that stopped early."""
        waited = self.state["waited"]
        best = self.state["best_loss"]
        figure = f"held-out reward {-best:.4f}" if reward else f"eval loss {best:.4f}"
        better = f" by more than {self.min_delta:g}" if self.min_delta else ""
        what = "held-out reward" if reward else "eval loss"
        return (
            f"early stopping: stopped after step {step} of the {planned} planned: the {what} has not improved{better} "
            f"on step {self.state['best_step']}'s ({figure}) for {len(waited)} evaluations in a row (steps "
            f"{', '.join(map(str, waited))}; train.early_stopping_patience {self.patience})."
        )


def require_eval_split(patience: int, eval_rows: list) -> None:
    """ConfigError (exit 2) for early stopping without eval rows to evaluate: none were asked for, or every one held
    out was unusable."""
    if patience and not eval_rows:
        raise ConfigError(
            f"option 'train.early_stopping_patience' is {patience}, but the run has no eval split, so no evaluation "
            "could stop it. Give one with data.eval (a file of held-out examples) or data.eval_fraction (e.g. 0.1 of "
            "the training examples), or set train.early_stopping_patience to 0."
        )


def stopped_early(info: RunInfo) -> dict | None:
    """run.json's record of a run that stopped early (extra.early_stop), or None."""
    record = info.extra.get(KEY)
    return record if info.end.get("reason") == REASON and isinstance(record, dict) else None


def check_not_stopped_early(run_dir, info: RunInfo, patience: int, min_delta: float, resume: str) -> None:
    """ConfigError when --resume would continue a finished run that early stopping ended, with the same patience: it
    would train the steps after its stop that the run chose not to train. A new patience (or 0) trains on."""
    record = stopped_early(info) if info.finished else None
    if record is None or (record.get("patience"), record.get("min_delta")) != (patience, min_delta):
        return
    raise ConfigError(
        f"{run_dir}: the run is finished: early stopping ended it after step {record.get('step')} of the "
        f"{record.get('planned_steps')} planned (train.early_stopping_patience {patience}), so {resume} has nothing "
        "to continue. To train on from its last checkpoint, raise train.early_stopping_patience or set it to 0."
    )
