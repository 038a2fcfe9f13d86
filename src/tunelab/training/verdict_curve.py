"""What every verdict reads a logged curve by, a loss's or a reward's (`training.verdict`): the Verdict it gives, a
curve's landmarks (means over a tenth of the steps at its start, at three quarters and at its end), the verdict of a
run too short to judge, and what a run that early stopping ended is told.

A curve of fewer than MIN_JUDGED values is too short: its start and end windows of WINDOW steps would share steps,
and between single steps the change is mostly the noise of their micro-batches.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

MIN_EVALS = 3
WINDOW = 3  # the fewest steps a landmark averages
MIN_JUDGED = 2 * WINDOW  # the fewest logged steps whose start and end windows do not share steps


@dataclass
class Verdict:
    kind: str  # diverged | underfit | overfit | fine | too_short
    text: str
    numbers: dict[str, float | int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def pass_share(epochs: float) -> str:
    """The share of one pass a run made: 0.30, or 0.004 for 2 of 449 steps (not 0.00)."""
    return f"{epochs:.2f}" if epochs >= 0.01 else f"{epochs:.1g}"


def unseen_percent(epochs: float) -> str:
    """The percentage of rows never trained on: 70, or 99.6 where whole numbers would say 100 of a run that trained."""
    unseen = 100 * (1 - epochs)
    return f"{unseen:.0f}" if round(unseen) < 100 else f"{unseen:.1f}"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def landmarks(values: list[float]) -> tuple[float, float, float]:
    """Means over a tenth of the steps (at least 3, at most half of them, so that the start and the end of a short run
    do not share steps): at the start, ending at three quarters of the run, at the end."""
    window = max(1, min(max(WINDOW, len(values) // 10), len(values) // 2))
    three_quarters = max(window, (3 * len(values)) // 4)
    return _mean(values[:window]), _mean(values[three_quarters - window : three_quarters]), _mean(values[-window:])


def too_short(
    series: list[tuple[int, float]],
    what: str,
    *,
    steps_per_epoch: int,
    epochs: float,
    max_steps: int | None,
    numbers: dict,
    early: dict | None = None,
) -> Verdict:
    """The verdict of a run that logged fewer than MIN_JUDGED values of `what` (train loss, reward): the count, why
    it is not enough, and the length that would be (for a run that early stopping ended, what lets it run longer)."""
    count = len(series)
    (first_step, first), (last_step, last) = series[0], series[-1]
    said = f"{count} {what} value{'' if count == 1 else 's'} logged" + (
        f" (step {first_step}: {first:.3f})"
        if count == 1
        else f" ({first:.3f} at step {first_step}, {last:.3f} at step {last_step})"
    )
    unseen = ""
    if max_steps and epochs < 1 and steps_per_epoch:
        unseen = (
            f" train.max_steps ({max_steps}) stopped it after {pass_share(epochs)} of one pass over the training rows "
            f"({steps_per_epoch} steps a pass), so about {unseen_percent(epochs)}% of them were never trained on."
        )
    if last_step >= MIN_JUDGED:  # the steps were there, the log skipped most of them
        enough = f"The run made {last_step} steps: set train.log_every: 1 to log each of them."
    elif early:  # a longer planned length would not have trained longer
        unseen = ""
        enough = (
            f"Early stopping ended it after step {early['step']} of the {early['planned_steps']} planned: a larger "
            f"train.early_stopping_patience (it was {early['patience']}) lets it run long enough for a verdict."
        )
    elif max_steps:
        enough = (
            f"Set train.max_steps: {steps_per_epoch} for one full pass"
            + ("." if steps_per_epoch >= MIN_JUDGED else f", {MIN_JUDGED} or more for a verdict.")
            if unseen
            else f"Set train.max_steps: {MIN_JUDGED} or more for a verdict."
        )
    else:
        enough = (
            f"A run of {MIN_JUDGED} steps or more gets one (more rows, more train.epochs, or fewer rows a step: "
            "train.micro_batch x train.grad_accum)."
        )
    return Verdict(
        "too_short",
        f"too short to judge: {said}. The verdict compares the mean of the first {WINDOW} logged steps with the mean "
        f"of the last {WINDOW}, so it needs {MIN_JUDGED} or more; between single steps the change is mostly the "
        f"noise of their micro-batches, not a trend.{unseen} {enough}",
        numbers,
    )


def stopped_early_note(verdict: Verdict, early: dict | None) -> Verdict:
    """The verdict of a run that early stopping ended says so, where its own advice did not."""
    if early and "train.early_stopping_patience" not in verdict.text:
        verdict.text += (
            f" The run stopped early after step {early['step']} of the {early['planned_steps']} planned: "
            f"{len(early['waited'])} evaluations in a row without a new best "
            f"(train.early_stopping_patience {early['patience']})."
        )
    return verdict


def no_longer(early: dict, what: str = "eval loss") -> str:
    """Why more steps would not help a run that early stopping ended, with its numbers."""
    best = early["best_eval_loss"]
    figure = -best if what == "held-out reward" else best
    return (
        f"early stopping ended the run after step {early['step']} of the {early['planned_steps']} planned, because "
        f"the {what} had not improved on step {early['best_step']}'s ({figure:.3f}) for {len(early['waited'])} "
        f"evaluations in a row (train.early_stopping_patience {early['patience']}), so more steps would not "
        f"{'raise' if what == 'held-out reward' else 'lower'} it"
    )
