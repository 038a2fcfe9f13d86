"""Column names matched whatever their case: a spreadsheet's `Question`, `Text` or `LABEL` is read as the field it names.

Every reader of rows asks this before it looks a column up by name (sft's formats after data.transform, the readers
of the other tasks, question files): a column whose name is one the reader reads (`names`: a format's fields, the
columns data.fields names, a task's label or a reward's expected answer) but for its case is renamed to it, and each
file's renamings are said once (`notes`). A column that is one of the names exactly is left as it is; one whose name
matches two of the names but for case (`QUESTION` where data.fields names `Question` and the field is `question`)
is left as it is too, since which one it means cannot be told. A row with two columns that differ only by case, of a
name the reader reads (`question` and `Question`), is a DataError naming both: which one holds the field cannot be
told either, unless data.fields names one of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from tunelab.data.report import location
from tunelab.data.sources import Record
from tunelab.errors import DataError


class CaseMatch:
    """The renamings of one reader (`names`: what it reads), per file, for its notes."""

    def __init__(self, names: Iterable[str], mapped: Iterable[str] = ()) -> None:
        """`mapped`: the columns data.fields names, read as they are written; `names`: the others read."""
        self.mapped = {column for column in mapped if isinstance(column, str)}
        self.names = {str(n) for n in names} | self.mapped
        self.lower: dict[str, set[str]] = {}
        for name in self.names:
            self.lower.setdefault(name.lower(), set()).add(name)
        self.renamed: dict[str, dict[str, str]] = {}  # file -> {column as written: name read}
        self._moves: dict[tuple, dict[str, str]] = {}  # a row's column names -> its renamings (rows share them)

    def match(self, record: Record) -> Record:
        """`record` with its columns in other case renamed (`moves`, kept as its `renamed`, so that what hands the
        row to a user's code can give the columns back under their own names); the record itself when there are
        none."""
        keys = tuple(record.row)
        moves = self._moves.get(keys)
        if moves is None:
            moves = self._moves[keys] = self.moves(keys, location(record.path, record.line))
        if not moves:
            return record
        self.renamed.setdefault(record.path, {}).update(moves)
        row = {moves.get(k, k): v for k, v in record.row.items()}
        return dataclasses.replace(record, row=row, renamed=moves)

    def moves(self, keys: tuple, where: str) -> dict[str, str]:
        """{column: name} of the columns `keys` to rename; DataError (at `where`) for two columns that differ only by
        case, of a name read."""
        by_lower: dict[str, list[str]] = {}
        for key in keys:
            if isinstance(key, str):
                by_lower.setdefault(key.lower(), []).append(key)
        moves = {}
        for low, same in by_lower.items():
            meant = self.lower.get(low)
            if not meant:
                continue
            if any(key in self.mapped for key in same):  # data.fields names one of them: that one is meant
                continue
            if len(same) > 1:
                shown = " and ".join(f"'{k}'" for k in same)
                raise DataError(
                    f"{where}: the columns {shown} differ only by case, and column names are read whatever their case "
                    f"(the field '{sorted(meant)[0]}'): which one holds it cannot be told. Rename or remove one of "
                    "them."
                )
            (key,) = same
            if key not in self.names and len(meant) == 1:
                moves[key] = next(iter(meant))
        return moves

    def notes(self) -> list[str]:
        """One line a file: the columns read under another case ("a.csv: columns read whatever their case: 'Question'
        as 'question'")."""
        return [
            f"{path}: columns read whatever their case: {', '.join(f'{old!r} as {new!r}' for old, new in moves.items())}"
            for path, moves in self.renamed.items()
        ]
