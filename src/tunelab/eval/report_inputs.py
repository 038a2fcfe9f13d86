"""The files `tunelab report` reads from a run directory, each parsed, or the reason it is not there.

An input that is missing or unreadable is not an error: its section of the page says why (`Input.missing`).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import counted
from tunelab.eval.report_html import esc
from tunelab.run_info import RUN_FILE


@dataclass
class Input:
    """One input file of the report: its parsed content, or why there is none."""

    name: str
    data: object = None
    problem: str | None = None  # set when the file is missing or unreadable
    left_out: tuple[int, ...] = ()  # a .jsonl file's lines (1-based) left out of `data` (`_record`)

    def missing(self, what: str) -> str:
        return f'<p class="missing">No {esc(what)}: {esc(self.problem or "")}</p>'

    def left_out_note(self) -> str:
        """A line counting the lines left out of `data` and naming them, or nothing."""
        if not self.left_out:
            return ""
        shown = ", ".join(map(str, self.left_out[:10])) + (", ..." if len(self.left_out) > 10 else "")
        return (
            f'<p class="missing">{counted(len(self.left_out), "line")} of {esc(self.name)} left out, as they are not '
            f"JSON objects with a whole-number step (line{'s' if len(self.left_out) > 1 else ''} {shown}): torn by a "
            "crash, or edited.</p>"
        )


def eval_hint(run_dir: Path) -> str:
    """How to write the run's eval.json, for a page read from the command line and from Python alike: the run's own
    directory (absolute, since the page is opened from anywhere), and --overwrite where an unusable eval.json is in
    the way (tunelab eval refuses to replace one without it)."""
    return _command_hint(run_dir, "eval", "evaluate", "data", "eval.json")


def compare_hint(run_dir: Path) -> str:
    """How to write the run's compare.json, as `eval_hint` says how to write its eval.json."""
    return _command_hint(run_dir, "compare", "compare", "questions", "compare.json")


def _command_hint(run_dir: Path, command: str, function: str, option: str, writes: str) -> str:
    where = run_dir.resolve()
    flag, keyword = (" --overwrite", ", overwrite=True") if (run_dir / writes).exists() else ("", "")
    return (
        f"run 'tunelab {command} {shlex.quote(str(where))} --{option} FILE{flag}' (in Python: "
        f"tunelab.{function}({str(where)!r}, {option}=FILE{keyword}))"
    )


def load_input(run_dir: Path, name: str) -> Input:
    path = run_dir / name
    if not path.is_file():
        return Input(name, problem=f"{name} is not in the run directory")
    try:
        text = path.read_text(encoding="utf-8")
        if name.endswith(".jsonl"):  # a line torn by a crash is left out, as --resume leaves it out
            rows = {i: _json_line(line) for i, line in enumerate(text.split("\n"), 1) if line.strip()}
            data = [row for row in rows.values() if _record(row)]
            if not data:
                return Input(
                    name, problem=f"{name} could not be read (no line of it is a JSON object with a whole-number step)"
                )
            return Input(name, data, left_out=tuple(i for i, row in rows.items() if not _record(row)))
        elif name.endswith(".json"):
            data = json.loads(text)
            if not isinstance(data, dict):
                return Input(name, problem=f"{name} is damaged (not a JSON object)")
        else:
            data = text
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return Input(name, problem=f"{name} could not be read ({exc})")
    return Input(name, data)


def _record(row) -> bool:
    """A record the curves can use: a JSON object whose step, where it has one, is a whole number."""
    step = row.get("step", 0) if isinstance(row, dict) else None
    return isinstance(step, int) and not isinstance(step, bool) and step >= 0


def _json_line(line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


@dataclass
class Inputs:
    """Every input of the report, read at once."""

    run: Input  # run.json: what was trained
    metrics: Input  # metrics.jsonl: the training curves
    eval: Input  # eval.json: `tunelab eval` scores and answers
    compare: Input  # compare.json: `tunelab compare` scores and answers
    config: Input  # config.yaml: the resolved config
    data: Input  # data_report.json: counts, skipped rows, token lengths

    @property
    def task(self) -> str | None:
        """The run's task as run.json names it; None when run.json is unreadable."""
        return self.run.data.get("task") if isinstance(self.run.data, dict) else None

    @property
    def tasks(self) -> list[str | None]:
        """The task of each stage of a staged run (as its run.json's extra.stages names them), else the run's."""
        stages = ((self.run.data or {}).get("extra") or {}).get("stages") if isinstance(self.run.data, dict) else None
        named = [s.get("task") for s in stages if isinstance(s, dict)] if isinstance(stages, list) else []
        return named if named and all(named) else [self.task]


def read_inputs(run_dir: Path) -> Inputs:
    run, metrics, ev, cmp = (load_input(run_dir, n) for n in (RUN_FILE, "metrics.jsonl", "eval.json", "compare.json"))
    return Inputs(run, metrics, ev, cmp, load_input(run_dir, "config.yaml"), load_input(run_dir, "data_report.json"))
