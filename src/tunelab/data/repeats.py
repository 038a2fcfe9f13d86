"""The notes of examples that repeat or contradict others, which training would pass over without a word: copies
of a training example (each trains again), eval examples that are training ones (their loss measures recall), an
eval file that is a training file, a prompt or text answered or labelled two ways (and a kto completion labelled both
ways), and a mixture source drawn so often that the model learns it by heart. The tasks with other items than
`Example`s (classify's labelled rows, preference pairs, kto's feedback) pass their own `key` or `asked`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.data.formats import Example
from tunelab.data.report import DataReport, Made, SourceStats, location
from tunelab.data.sources import Record
from tunelab.errors import counted


def note_trained_eval(held: list[Record], trained: set[str], report: DataReport) -> None:
    """A note in `report` for each eval file that is also trained on: its eval loss measures how well the model
    recalls rows it saw, so it shows no overfitting, and keep_best and the verdict read it."""
    trained_files = {Path(path).resolve() for path in trained}
    for path in dict.fromkeys(r.path for r in held):
        if Path(path).resolve() in trained_files:
            report.notes.append(
                f"the eval file {path} is also a training file: its eval loss measures recall of rows the model "
                "trained on, not how it does on new ones (train.keep_best and the verdict read it); hold out other "
                "rows, or set data.eval_fraction instead"
            )


def example_key(ex: Example) -> str:
    """What two word for word equal examples share (their place aside)."""
    return json.dumps(ex.messages, sort_keys=True) if ex.messages is not None else f"text:{ex.text}"


REPEATS_NOTED = 4  # a source whose rows each epoch draws more often than this on average gets a note


def note_repeated_source(name: str, stats: SourceStats, mix_by: str, report: DataReport) -> None:
    """A note in `report` when a mixture's weights draw each row of a small source more than REPEATS_NOTED times an
    epoch (a few text blocks weighed like a file of thousands of examples): the model learns those rows by heart."""
    if stats.repeats <= REPEATS_NOTED:
        return
    counted = "rows (text blocks count one each)" if mix_by == "examples" else "tokens"
    report.notes.append(
        f"mixture source '{name}' is repeated {stats.repeats:.1f} times an epoch: its share of "
        f"{100 * stats.share:.1f}% of the epoch's {counted} draws {stats.drawn_rows} rows from its {stats.rows}, "
        "which the model will learn by heart; lower its weight, give it more data"
        + (", or weigh by tokens (data.mix_by: tokens)" if mix_by == "examples" else "")
    )


def note_repeated_train(examples: list, report: DataReport, key: Callable[[Any], str] = example_key) -> None:
    """A note in `report` when training examples repeat another word for word (a row copied within a file or into
    another): each copy is trained on again, so it weighs more than the others without a word. Rows that several
    mixture sources read from one file (one record) are not copies: the sources' weights say how often."""
    first: dict[str, Any] = {}
    copies = []
    for ex in examples:
        twin = first.setdefault(key(ex), ex)
        if twin is not ex and (twin.path, twin.line) != (ex.path, ex.line):
            copies.append((ex, twin))
    if copies:
        report.notes.append(
            f"{len(copies)} of the {len(examples)} training examples repeat another word for word ({_for_example(copies)}"
            "): each copy is trained on again, weighing that example more than the others; remove the copies, or weigh "
            "sources in a mixture"
        )


def _for_example(pairs: list) -> str:
    """'e.g. a.jsonl:4 repeats b.jsonl:2, ...': the first of the (repeat, original) pairs a note counts."""
    (ex, twin), more = pairs[0], ", ..." if len(pairs) > 1 else ""
    return f"e.g. {location(ex.path, ex.line)} repeats {location(twin.path, twin.line)}{more}"


def note_repeated_eval(trained: list, held: list, report: DataReport, key: Callable[[Any], str] = example_key) -> None:
    """A note in `report` when eval examples are word for word training examples found elsewhere (a row repeated in a
    file that data.eval_fraction split, or copied into the eval file): their eval loss measures recall, not how the
    model does on new rows. An eval file that is itself a training file has its own note (`note_trained_eval`). The
    items are Examples, or another task's items (with `path` and `line`) and the `key` that says what they hold."""
    files: dict[str, Path] = {}

    def place(ex) -> tuple[Path, int]:
        return files.setdefault(ex.path, Path(ex.path).resolve()), ex.line

    seen: dict[str, list[Example]] = {}
    for ex in trained:
        seen.setdefault(key(ex), []).append(ex)
    repeated = []
    for ex in held:
        twin = next((t for t in seen.get(key(ex), []) if place(t) != place(ex)), None)
        if twin is not None:
            repeated.append((ex, twin))
    if repeated:
        report.notes.append(
            f"{len(repeated)} of the {len(held)} eval examples are also training examples, word for word "
            f"({_for_example(repeated)}): their eval loss measures recall of rows the model trained on "
            "(train.keep_best and the verdict read it); remove the repeated rows"
        )


def asked_and_answered(ex: Example) -> tuple[str, str] | None:
    """(what a chat asks: every turn before its last, its answer: that last assistant turn), or None for a text or a
    chat that does not end with an answer."""
    if ex.messages is None or not ex.messages or ex.messages[-1].get("role") != "assistant":
        return None
    return json.dumps(ex.messages[:-1], sort_keys=True), str(ex.messages[-1].get("content"))


def note_conflicting(
    items: list,
    report: DataReport,
    asked: Callable[[Any], tuple[str, str] | None] = asked_and_answered,
    kind: str = "answer",
) -> None:
    """A note in `report` when items ask the same thing word for word but are answered otherwise: a chat's prompt with
    two answers, a text with two labels (`kind`: label; the items have a `label`), a prompt and completion of kto's
    feedback labelled desirable and undesirable (`kind`: feedback; the answer is the label's word). `asked(item)` gives
    (what it asks, its answer), or None where it asks nothing to compare. Items of one record (two mixture sources of
    one file) are one row, not a conflict. The items are Examples, or another task's items (with `path` and `line`)."""
    groups: dict[str, list[tuple[str, Any]]] = {}  # what is asked -> (answer, item), one item a row of a record
    places = {_row_place(item) for item in items}
    seen: set[tuple[str, int, int]] = set()
    for item in items:
        pair = asked(item)
        if pair is not None and _row_place(item) not in seen:
            seen.add(_row_place(item))
            groups.setdefault(pair[0], []).append((pair[1], item))
    conflicts = [group for group in groups.values() if len({answer for answer, _ in group}) > 1]
    if not conflicts:
        return
    first, second = conflicts[0][0][1], next(item for answer, item in conflicts[0] if answer != conflicts[0][0][0])
    one, other, more = location(first.path, first.line), location(second.path, second.line), len(conflicts) > 1
    rows = sum(len(group) for group in conflicts)
    asked = {"label": "text", "feedback": "completion"}.get(kind, "prompt")
    shown = f"{counted(len(conflicts), asked)}; e.g. {one}"
    if kind == "feedback":
        said = conflicts[0][0][0], next(answer for answer, item in conflicts[0] if item is second)
        report.notes.append(
            f"{rows} of the {len(places)} feedback rows give a prompt and completion that another row labels the "
            f"other way, word for word ({shown} labels it {said[0]}, {other} {said[1]}{', ...' if more else ''}): "
            "loss kto raises and lowers the same completion, so their updates cancel; correct the wrong label or "
            "remove a row (raters who disagree may leave such rows, and training goes on)"
        )
    elif kind == "label":
        report.notes.append(
            f"{rows} of the {len(places)} rows give a text that another row labels otherwise, word for word "
            f"({shown} labels it {first.label!r}, {other} {second.label!r}{', ...' if more else ''}): no head can "
            "predict both; correct the wrong label or remove the row"
        )
    else:
        report.notes.append(
            f"{rows} of the {len(places)} examples ask what another asks, word for word, with another answer "
            f"({shown} and {other}{', ...' if more else ''}): the model learns a blend of the answers; correct or "
            "remove a wrong one (alternatives meant as such, as the branches of a conversation tree, can stay)"
        )


def _row_place(item) -> tuple[str, int, int]:
    """An item's record and which of the rows data.transform made of it (`Made`; 1 for a record of one row): the rows
    of one record are compared with each other and with the others, a record read by two sources is one."""
    return item.path, int(item.line), item.line.row if isinstance(item.line, Made) else 1
