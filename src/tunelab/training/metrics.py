"""Metrics of a run: one JSON object per line in metrics.jsonl, and the loss curves drawn to loss.png.

Every record written also goes to the log's sinks, the experiment trackers of `train.report_to`
(training/tracking.py), so the loop logs once and knows nothing of trackers.

A line that does not parse (the last one torn by a crash mid-write) is skipped by readers and dropped on resume. A
record whose "step" is not a whole number >= 0 (the file edited) is a RunDirError naming the file and line: resume
keeps or drops each record by its step, and the readers place it by it.
A step the non-finite guard skipped has "loss": null and "skipped": true. In fp16 every record has "loss_scale" and
"overflow_steps", and a step skipped for overflow "overflow": true, its loss, and "grad_norm": null.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from tunelab.atomic import write_bytes, write_text, writing
from tunelab.errors import RunDirError
from tunelab.training.verdict import LOSS_UNITS

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


class MetricsLog:
    """Appends records to metrics.jsonl and hands them to its sinks (objects with log(record) and close()); on
    resume, records after the checkpoint's step are dropped first.

    The steps a stopped run logged after its last checkpoint are trained again on resume, with the same records (resume
    is exact). A sink whose run still holds them (`keeps_logged_steps`: an MLflow, W&B or Trackio run reopened, which
    keep every point they were given) is not given them again, so that no step is in its run twice; TensorBoard,
    which drops the events after the checkpoint, and a tracker run started anew are."""

    def __init__(self, run_dir: Path, resume_step: int | None = None, sinks: list | None = None):
        self.path = Path(run_dir) / METRICS_FILE
        self.sinks = list(sinks or [])
        self.logged_through = 0  # the last step the sinks were given before this run was resumed
        if resume_step is not None and self.path.exists():
            records = _parse(self.path.read_text().splitlines(), self.path)
            self.logged_through = max((int(r.get("step", 0)) for r in records), default=0)
            kept = [json.dumps(r) for r in records if r.get("step", 0) <= resume_step]
            write_text(self.path, "".join(line + "\n" for line in kept))
            kept_by = [
                getattr(s, "name", type(s).__name__) for s in self.sinks if getattr(s, "keeps_logged_steps", False)
            ]
            if kept_by and self.logged_through > resume_step:
                print(
                    f"{', '.join(kept_by)}: steps {resume_step + 1}-{self.logged_through} were logged before the run "
                    "stopped; trained again now, they are not logged a second time",
                    flush=True,
                )
        elif resume_step is None:
            write_text(self.path, "")

    def write(self, record: dict) -> None:
        with writing(self.path), self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        again = record.get("step", 0) <= self.logged_through
        for sink in self.sinks:
            if not again or not getattr(sink, "keeps_logged_steps", False):
                sink.log(record)

    def close(self, error: BaseException | None = None) -> None:
        """End every tracker's run (flush TensorBoard, end the MLflow and W&B runs), as finished, or (`error`: the
        exception that stopped the run) as failed or killed. A second close does nothing."""
        for sink in self.sinks:
            sink.close(error)
        self.sinks = []

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        """Leaving a `with log:` block ends the trackers' runs as it ended: finished, or on the error raised."""
        self.close(error)


def _parse(lines: list[str], path: Path) -> list[dict]:
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        step = record.get("step", 0)
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise RunDirError(
                f"{path}, line {number}: field 'step' is {json.dumps(step)[:40]}, but must be a whole number >= 0 "
                "(the file was edited or damaged); put back the value tunelab wrote, or delete that line."
            )
        records.append(record)
    return records


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return _parse(path.read_text().splitlines(), path)


def logged_at(records: list[dict], step: int) -> tuple[float | None, dict]:
    """The last train loss logged up to `step`, and the evaluation logged at `step` (its figures, without the step):
    what a run resumed at its last step reports, which ran neither there."""
    losses = [r["loss"] for r in records if r.get("step", 0) <= step and isinstance(r.get("loss"), int | float)]
    evals = [r for r in records if r.get("step") == step and "eval_loss" in r]
    figures = {k: v for k, v in evals[-1].items() if k != "step"} if evals else {}
    return (losses[-1] if losses else None), figures


def plot_text(text: str) -> str:
    """User text (a reward's or a client's name) as matplotlib draws it as written: a `$` pair would start mathtext,
    drawing 'cost $x$' in italics and ending the figure in a ValueError for '$\\frac$'."""
    return text.replace("$", r"\$")


def loss_curves(records: list[dict]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, train loss) and (step, eval loss) of metrics.jsonl's records, as loss.png and the report draw them. A
    grpo run's eval loss is its held-out reward negated (for keep_best), not a loss: it is left to its reward plots."""
    train = [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), int | float) and "step" in r]
    evals = [
        (r["step"], r["eval_loss"])
        for r in records
        if isinstance(r.get("eval_loss"), int | float) and "step" in r and "eval_reward" not in r
    ]
    return train, evals


# The learning rates metrics.jsonl records beside lr, each lr's times a constant: (legend label, line style).
_OTHER_RATES = {
    "lr_B": ("B matrices (LoRA+)", "--"),  # lr x train.loraplus_lr_ratio
    "lr_head": ("head", ":"),  # classify, reward: the head's own rate, classify.head_lr
}


def rate_curves(records: list[dict]) -> tuple[dict[str, tuple[str, list[tuple[int, float]], str]], bool]:
    """The learning-rate curves of metrics.jsonl's records by key (lr, then lr_B and lr_head where recorded), each
    as (legend label, (step, rate) points, line style), and whether to draw them on a log axis: beside lr each curve
    is lr's times a constant, the same shape, which a linear axis flattens to the lowest. Empty without lr. A point
    several records repeat (a federation's clients, one record each, at the rate of their round) is drawn once."""

    def points(key: str) -> list[tuple[int, float]]:
        found = [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float) and "step" in r]
        return list(dict.fromkeys(found))

    lr = points("lr")
    if not lr:
        return {}, False
    others = {key: (label, found, style) for key, (label, style) in _OTHER_RATES.items() if (found := points(key))}
    if not others:
        return {"lr": ("learning rate", lr, "-")}, False
    first = "A and the rest (train.lr)" if "lr_B" in others else "train.lr"
    curves = {"lr": (first, lr, "-")} | others
    return curves, all(y > 0 for _, found, _ in curves.values() for _, y in found)


def loss_axis(tasks: list[str | None]) -> str:
    """The loss axis's label for runs of `tasks` (a staged run's stages may differ): what the loss is averaged over,
    as the verdict says it (sft and grpo: a token, classify: an example, dpo and reward: a pair)."""
    units = dict.fromkeys(LOSS_UNITS.get(task or "sft", "a token").split()[-1] for task in tasks or [None])
    return f"loss (nats / {' or '.join(units)})"


def plot_losses(run_dir: Path, tasks: list[str | None] | None = None) -> Path | None:
    """Train and eval loss against the optimizer step; None when there is nothing to draw. tasks: the run's task
    (a staged run's: each stage's), for the loss axis's unit."""
    records = read_metrics(run_dir)
    train, evals = loss_curves(records)
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", linewidth=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(loss_axis(tasks or []))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    return write_bytes(Path(run_dir) / PLOT_FILE, png.getvalue())
