"""The columns of a file that its sft format leaves unread, gathered row by row and said in the data report's notes:
nothing a row holds is left out of its example without a word. Alpaca's own fields (input, history) beside another
format's, text in columns no field reads, lists and objects in columns no field reads (a text inside one reaches no
example), and a preference pair (chosen, rejected) that sft trains on neither side of. The readers of classify,
reward and dpo note the columns of text, lists and objects that they leave unread alike (`UnreadColumns.task_notes`);
grpo's does not, since its reward functions may read any column of the row."""

from __future__ import annotations

import math

from tunelab.data.report import location
from tunelab.data.sources import Record
from tunelab.errors import counted

ALPACA_ONLY = ("input", "history")  # alpaca's fields that no other format reads


def filled(value) -> bool:
    """A value with something in it: not null, NaN, blank text or an empty list."""
    if isinstance(value, str):
        return bool(value.strip())
    return value is not None and value != [] and not (isinstance(value, float) and math.isnan(value))


def _read(names: tuple[tuple[str, ...], tuple[str, ...]], fields: dict[str, str]) -> set[str]:
    """The columns a format of (required, optional) field `names` reads, data.fields applied."""
    required, optional = names
    return {fields.get(name, name) for name in (*required, *optional)} | set(fields.values())


def unread_columns(record: Record, fmt: str, fields: dict[str, str]) -> list[str]:
    """The columns named after alpaca's own fields (input, history) that hold something, are not mapped to another
    field, and that format `fmt` does not read: a prompt_completion row's `input` would be left out of its example."""
    if fmt == "alpaca":
        return []
    claimed = set(fields.values())
    return [name for name in ALPACA_ONLY if name not in fields and name not in claimed and filled(record.row.get(name))]


def other_columns(record: Record, names, fields: dict[str, str]) -> list[str]:
    """The columns holding text that a format of field `names` (required, optional) reads as none of its fields and
    that no mapping claims (dolly's `context` beside instruction and response): left out of the example. Text
    without a letter (an id, a number or a date, as a .csv file gives them; pandas' unnamed index column) is no such
    loss. Alpaca's own fields are `unread_columns`."""
    read = _read(names, fields)
    return [
        name
        for name, value in record.row.items()
        if name not in read and name not in ALPACA_ONLY and isinstance(value, str) and any(map(str.isalpha, value))
    ]


def object_columns(record: Record, names, fields: dict[str, str]) -> list[str]:
    """The columns holding a list or an object with something in it that a format of field `names` reads as none of
    its fields and that no mapping claims (self-instruct's `instances`, a `tools` list beside messages, metadata):
    left out of the example, whatever text is inside. Alpaca's own fields are `unread_columns`."""
    read = _read(names, fields)
    return [
        name
        for name, value in record.row.items()
        if name not in read and name not in ALPACA_ONLY and isinstance(value, (list, dict)) and value
    ]


def pair_unread(record: Record, names, fields: dict[str, str]) -> bool:
    """Whether the row holds a preference pair (columns chosen and rejected, as dpo and reward read them, a
    LLaMA-Factory or UltraFeedback file) that a format of field `names` and the mapping leave unread: sft trains on
    neither."""
    read = _read(names, fields)
    return all(key not in read and filled(record.row.get(key)) for key in ("chosen", "rejected"))


class UnreadColumns:
    """Per file, the rows whose columns its format leaves unread (`see` each record), and the notes saying so."""

    def __init__(self) -> None:
        self.lost: dict[tuple[str, str], list] = {}  # (file, column) -> [rows, first record] of alpaca's fields
        self.other: dict[str, dict[str, list]] = {}  # file -> column -> [rows, first record] of other text
        self.pairs: dict[str, list] = {}  # file -> [rows, first record] of preference pairs
        self.objects: dict[str, dict[str, list]] = {}  # file -> column -> [rows, first record] of lists and objects
        self.input_taken: set[str] = set()  # files whose rows give alpaca's input a column of their own

    def see(self, record: Record, fmt: str, names, fields: dict[str, str], questions: bool) -> None:
        """`names`: the (required, optional) fields of format `fmt`; `questions`: a question row, whose expected
        answer and kind eval reads."""
        for name in unread_columns(record, fmt, fields):
            self.lost.setdefault((record.path, name), [0, record])[0] += 1
        if not questions:
            self.see_others(record, names, fields, pairs=True)

    def see_others(self, record: Record, names, fields: dict[str, str], pairs: bool = False) -> None:
        """The columns of text, lists and objects that no field of `names` (required, optional) reads; `pairs`: a
        preference pair is noted as one (sft reads neither side), not as two columns of text."""
        pair = pairs and pair_unread(record, names, fields)
        for name in other_columns(record, names, fields):
            if not (pair and name in ("chosen", "rejected")):
                self.other.setdefault(record.path, {}).setdefault(name, [0, record])[0] += 1
        for name in object_columns(record, names, fields):
            if not (pair and name in ("chosen", "rejected")):
                self.objects.setdefault(record.path, {}).setdefault(name, [0, record])[0] += 1
        if pair:
            self.pairs.setdefault(record.path, [0, record])[0] += 1
        if fields.get("input", "input") in record.row:
            self.input_taken.add(record.path)

    def notes(self, file_format: dict[str, str], mapping: str, with_input: set[str]) -> list[str]:
        """The notes, each file's named with its format (`file_format`); `mapping`: how advice names data.fields;
        `with_input`: the formats with a free input field a column can be mapped to (alpaca)."""
        out = []
        for (path, name), (rows, first) in self.lost.items():
            out.append(
                f"{path}: {counted(rows, 'row')} {'has' if rows == 1 else 'have'} a column '{name}' that the {file_format[path]} format does not read (e.g. "
                f"{location(first.path, first.line)}): it is left out of their examples; to use it, read the rows as "
                "alpaca (instruction, output, input, history: data.fields maps your columns to them)"
            )
        for path, (rows, first) in self.pairs.items():
            out.append(
                f"{path}: {counted(rows, 'row')} {'holds' if rows == 1 else 'hold'} a preference pair (columns 'chosen' "
                f"and 'rejected', e.g. {location(first.path, first.line)}) that the {file_format[path]} format does not "
                "read: task sft trains on neither answer; to train on the pairs, set task: dpo (or reward)"
            )
        for path, columns in self.other.items():
            fmt = file_format[path]
            if fmt in with_input and path not in self.input_taken:  # alpaca rows without an input: it is free
                use = (
                    f"map it to a field with {mapping} (e.g. {{input: {next(iter(columns))}}}: alpaca's input, "
                    "joined to the instruction)"
                )
            else:  # no field is free: alpaca's input is read already, and another format's mapping to it is refused
                use = f"write it into a field of the {fmt} format's rows with data.transform"
            out.append(
                f"{path}: text in columns that the {fmt} format does not read is left out of the examples: "
                f"{_said(columns)}; to train on one, {use}, or let data.transform drop the column to silence this note"
            )
        for path, columns in self.objects.items():
            out.append(
                f"{path}: lists and objects in columns that the {file_format[path]} format does not read are left out "
                f"of the examples, with any text inside them: {_said(columns)}; to train on a text inside one, let "
                f"data.transform put it in a field of the row (e.g. row['input'] = {_inside(columns)}), or "
                "drop the column there to silence this note"
            )
        return out

    def task_notes(self, task: str, reads: str, field: str) -> list[str]:
        """The notes of the columns of text, lists and objects that task `task` (classify, reward, dpo: their
        readers take no data.transform, so the advice is to map or edit the file) does not read: `reads` says what
        it reads, `field` the field of the advice's data.fields mapping (text, prompt)."""
        out = []
        for path, columns in self.other.items():
            out.append(
                f"{path}: text in columns that task {task} does not read is left out of its rows: {_said(columns)}; "
                f"{reads}. To read one as the row's {field}, map {field} to it with data.fields (e.g. {{{field}: {next(iter(columns))}}}), "
                "or remove the column from the file to silence this note"
            )
        for path, columns in self.objects.items():
            out.append(
                f"{path}: lists and objects in columns that task {task} does not read are left out of its rows, with "
                f"any text inside them: {_said(columns)}; {reads}. To read a text inside one, write it into a column "
                f"of its own (e.g. the text at {_inside(columns)}) and map {field} to it with data.fields, or remove "
                "the column from the file to silence this note"
            )
        return out


def _inside(columns: dict[str, list]) -> str:
    """How a transform reads the first text inside the first column of a note, as the note's first row holds it:
    `row['tags'][0]`, `row['instances'][0]['output']`."""
    name, (_, first) = next(iter(columns.items()))
    path, value = f"row[{name!r}]", first.row[name]
    while isinstance(value, (list, dict)) and value:
        key = next((k for k, v in (value.items() if isinstance(value, dict) else enumerate(value)) if filled(v)), None)
        if key is None:
            break
        path, value = f"{path}[{key!r}]", value[key]
    return path


def _said(columns: dict[str, list]) -> str:
    """ "'tags' (3 rows, e.g. a.jsonl:1), ...": the first five columns of a note, each with its rows and first place."""
    said = ", ".join(
        f"'{name}' ({counted(rows, 'row')}, e.g. {location(first.path, first.line)})"
        for name, (rows, first) in list(columns.items())[:5]
    )
    return said + (f" and {len(columns) - 5} more" if len(columns) > 5 else "")
