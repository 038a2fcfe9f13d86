"""`tunelab report`: one self-contained HTML page about a run, readable offline and mailable as a single file.

Everything is inline: the CSS, and the plots as SVG drawn by matplotlib (text drawn as paths, so no fonts are
needed). No script and no network access. Inputs, all read from the run directory and all optional:

    run.json          what was trained (header)            metrics.jsonl   loss, eval loss, lr, tokens/s curves
    eval.json         `tunelab eval` scores and answers    compare.json    `tunelab compare` scores and answers
    config.yaml       the resolved config                  data_report.json  counts, skipped rows, token lengths

A section whose input is missing, unreadable or of shapes tunelab does not write says so (`_drawn`). Every piece of
user text (questions, answers, paths, config values) passes through html.escape; matplotlib escapes what it writes
into the SVG itself.

This module reads the inputs, picks the sections the run's task calls for, and writes the page. The sections are
drawn by their own modules:

    report_inputs   the files read, each parsed or the reason it is not there
    report_html     the page around the sections, CSS, escaping, number formats, shared tables
    report_plots    the inline SVG figures
    report_run      run summary, stages (forgetting), data
    report_scores   evaluation, base vs tuned (eval.json, compare.json)
    report_answers  answers side by side, word differences marked
    heads           evaluation of a head run (classify, reward)
    reward_curves   rewards of a grpo run
    federated/history  the rounds of a federation
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from tunelab.atomic import write_text
from tunelab.config.flags import PYTHON, Spelling
from tunelab.eval.heads import head_eval_html
from tunelab.eval.report_answers import answer_rows, word_diff
from tunelab.eval.report_html import document, esc, report_mark
from tunelab.eval.report_inputs import read_inputs
from tunelab.eval.report_plots import curve_plot, preference_plots, training_plots
from tunelab.eval.report_run import data_section, run_summary, stages_section
from tunelab.eval.report_scores import eval_section
from tunelab.eval.reward_curves import reward_section
from tunelab.federated.history import STATE_FILE, DamagedState, clients_data_section, federated_section
from tunelab.places import check_output_file
from tunelab.rundir import HEAD_TASKS, is_run_dir, read_info

__all__ = ["REPORT_FILE", "build_report", "render_report", "word_diff"]

REPORT_FILE = "report.html"


# What drawing a section raises when its file parses as JSON but holds other shapes than tunelab writes (edited by
# hand, cut short, written by another version): {"rows": [1]}, a loss that is a string.
_UNREADABLE = (AttributeError, KeyError, IndexError, TypeError, ValueError)


def _drawn(draw: Callable[[], str | None], *files: str) -> str | None:
    """The section `draw()` returns, or a line saying which of its `files` holds what this version cannot draw: one
    edited file must cost its section, not the report (it ended in a traceback)."""
    try:
        return draw()
    except DamagedState as exc:  # federated.json, read whole and checked: its message names its line and field
        return f'<p class="missing">Not shown: {esc(exc)}</p>'
    except _UNREADABLE as exc:
        why = f"{type(exc).__name__}: {exc}"
        return (
            f'<p class="missing">Not shown: {esc(" or ".join(files))} holds what tunelab does not write there ({esc(why)}). '
            "Write it again with the tunelab command that wrote it, or remove it.</p>"
        )


def _stages_hint(run_dir: Path, info) -> str:
    """Where a staged run that has not finished keeps its curves: its run.json names the stages (extra.stages, names
    alone until the end), and metrics.jsonl is gathered from the stage folders only when the last stage ends."""
    stages = ((info or {}).get("extra") or {}).get("stages") if isinstance(info, dict) else None
    if not isinstance(stages, list) or not all(isinstance(s, str) for s in stages):
        return ""
    done = sorted(f.name for f in run_dir.glob("stage-*") if is_run_dir(f))
    where = f" ({', '.join(done)} here)" if done else " (none has started)"
    return (
        f"<p class=\"sub\">A staged run gathers its stages' curves here when its last stage ends; each stage's folder "
        f"holds its own{esc(where)}: tunelab report {esc(run_dir)}/stage-K.</p>"
    )


def render_report(run_dir: str | Path) -> str:
    """The report of `run_dir` as one HTML string."""
    run_dir = Path(run_dir)
    inputs = read_inputs(run_dir)
    run, metrics, ev, cmp, config = inputs.run, inputs.metrics, inputs.eval, inputs.compare, inputs.config
    if inputs.task in HEAD_TASKS:  # a classifier or reward model
        evaluation = [
            ("evaluation", "Evaluation", _drawn(lambda: head_eval_html(ev.data, ev.problem, run_dir), ev.name))
        ]
    else:
        evaluation = [
            (
                "evaluation",
                "Evaluation: base vs tuned",
                _drawn(lambda: eval_section(ev, cmp, run_dir), ev.name, cmp.name),
            ),
            ("answers", "Answers side by side", _drawn(lambda: answer_rows(ev, cmp, run_dir), ev.name, cmp.name)),
        ]
    clients = _drawn(lambda: clients_data_section(run_dir), STATE_FILE)
    sections = [
        ("run", "Run", _drawn(lambda: run_summary(run, metrics.data), run.name)),
        (
            "training",
            "Training curves",
            (_drawn(lambda: training_plots(metrics.data, inputs.tasks, run.data), metrics.name) or "")
            + metrics.left_out_note()
            if metrics.data is not None
            else metrics.missing("training metrics") + _stages_hint(run_dir, run.data),
        ),
        *(
            [("preference", "Preference training", _drawn(lambda: preference_plots(metrics.data), metrics.name))]
            if inputs.task == "dpo" and metrics.data is not None
            else []
        ),
        *(
            [("rewards", "Rewards (grpo)", _drawn(lambda: reward_section(metrics.data, curve_plot), metrics.name))]
            if inputs.task == "grpo" and metrics.data is not None
            else []
        ),
        *evaluation,
        # a federation's server reads only its eval set: what the clients trained on is in federated.json, whose
        # damage is said of that file, not of data_report.json
        ("data", "Data", _drawn(lambda: data_section(inputs.data, clients), inputs.data.name)),
        (
            "config",
            "Resolved config",
            f"<pre>{esc(config.data)}</pre>" if config.data is not None else config.missing("config"),
        ),
    ]
    stages = _drawn(lambda: stages_section(run), run.name)
    if stages is not None:
        sections.insert(1, ("stages", "Stages", stages))
    federation = _drawn(lambda: federated_section(run_dir), STATE_FILE, metrics.name)
    if federation is not None:
        sections.insert(2, ("federated", "Federated rounds", federation))
    title = f"tunelab report — {run_dir.resolve().name}"
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return document(title, run_dir.resolve(), when, sections)


def build_report(
    run_dir: str | Path, out: str | Path | None = None, overwrite: bool = False, spelling: Spelling = PYTHON
) -> Path:
    """Write the report of `run_dir` to `out` (default RUN_DIR/report.html) and return its path. A report page of
    this same run there is replaced without `overwrite`: it is this command's output, made again from the run's
    files; any other file (another run's report, a page of the user's) needs it."""
    run_dir = Path(run_dir)
    read_info(run_dir, require_finished=False)  # a run directory, even an unfinished one: its curves are worth seeing
    path = Path(out) if out is not None else run_dir / REPORT_FILE
    overwrite = overwrite or _report_of(path, run_dir)
    check_output_file(path, overwrite, run_dir, REPORT_FILE, mkdir=True, suffix=(".html", ".htm"), spelling=spelling)
    page = render_report(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, page)


def _report_of(path: Path, run_dir: Path) -> bool:
    """Is `path` a report page `tunelab report` wrote of `run_dir` (its mark in the page's head)?"""
    if not path.is_file():  # missing, a folder, a pipe (never read): check_output_file says what is wrong
        return False
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            return report_mark(run_dir.resolve()) in f.read(4000)
    except OSError:  # unreadable: check_output_file says what is wrong
        return False
