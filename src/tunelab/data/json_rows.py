"""The rows of JSON data files: .jsonl (one object a line, read a line at a time) and .json (an array of objects,
read an item at a time by `json.JSONDecoder.raw_decode` over pieces of the file, so a large array is never held
whole; a .json file holding JSON lines is read as .jsonl, as the datasets library reads it). Each reader yields (line, row):
the 1-based line of a .jsonl file (a `report.Line` for a .json file of JSON lines), the 0-based index of an
array's item. A key given twice in an object is refused rather than kept last, as json would keep it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from tunelab.data.decode import read_text, text_pieces
from tunelab.data.report import Line, location
from tunelab.errors import DataError, article, counted


def _object(path: str, line: int, value, hint: str) -> dict:
    if not isinstance(value, dict):
        raise DataError(
            f'{location(path, line)}: expected a JSON object like {{"prompt": ..., "completion": ...}}, '
            f"got {article(type(value).__name__)} ({json.dumps(value)[:60]}). {hint}"
        )
    return value


def _json_problem(exc: json.JSONDecodeError) -> str:
    """json's message without its position, then the column: 'Unterminated string starting at column 14'."""
    joiner = " " if exc.msg.endswith(" at") else " at "
    return f"{exc.msg}{joiner}column {exc.colno}"


# A .json file that holds more than one JSON value is read as JSON lines, as the datasets library reads any .json
# file that is not an array; its lines are then named `file:line` (report.Line), and its errors say why.
AS_JSON_LINES = "The file holds more than one JSON value, so it is read as JSON lines:"


def jsonl_rows(path: Path, lines: Iterable[str], named_json: bool = False) -> Iterator[tuple[int, dict]]:
    """The (line, row) of each object of the file's `lines`, as they are read. `named_json`: the file is a .json file that holds JSON
    lines."""
    rule = f"{AS_JSON_LINES} each line" if named_json else "Each line of a .jsonl file"
    # Lines end at \n (and \r\n) only: str.splitlines also breaks at U+2028, U+2029 and U+0085, which JSON strings
    # may hold unescaped (json.dumps(..., ensure_ascii=False) writes them so).
    first = True
    for n, line in enumerate(lines, start=1):
        # a byte order mark opening a line: files joined (cat a.jsonl b.jsonl), one of them saved with one
        line = line.removeprefix("\ufeff")
        if not line.strip():
            continue
        # a .jsonl file whose first line opens an array, or an object written over several lines: a .json file
        opens = first and not named_json and (line.strip()[:1] == "[" or line.strip() == "{")
        first = False
        try:
            value = json.loads(line, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            fix = "fix that line (an object must be on one line, or all of them in one array [...])"
            fix = fix if named_json else "fix or remove that line"
            many = (
                " The file looks like one JSON value written over several lines (an array [...], or indented "
                "objects), which a .jsonl file is not: name an array of objects .json, or write one object a line."
            )
            raise DataError(
                f"{path}:{n}: not valid JSON ({_json_problem(exc)}). {rule} must be one complete JSON object; "
                f"{fix}.{many if opens else ''}"
            ) from None
        except DuplicateKey as exc:
            raise DataError(f"{path}:{n}: {exc}") from None
        where = Line(n) if named_json else n
        array = opens and isinstance(value, list) and value and all(isinstance(v, dict) for v in value)
        hint = " The line is an array of objects, which a .json file holds: name the file .json." if array else ""
        yield where, _object(str(path), where, value, f"{rule} must be one object.{hint}")


class DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object's pairs as a dict; DuplicateKey for a key given twice (json keeps the last one, silently)."""
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise DuplicateKey(
                f"the object gives the field '{key}' twice, so it is unclear which value to use; remove one."
            )
        seen[key] = value
    return seen


def json_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    """The (index, row) of each object of a .json file's array; the (line, row) of each line of one that holds JSON
    lines."""
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys)
    except DuplicateKey as exc:
        if text.lstrip().startswith("{"):  # JSON lines named .json: jsonl_rows names the line
            return list(jsonl_rows(path, text.split("\n"), named_json=True))
        raise DataError(f"{path}: an object of the array: {exc}") from None
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):  # several objects: JSON lines named .json
            return list(jsonl_rows(path, text.split("\n"), named_json=True))
        if exc.msg == "Extra data":
            raise DataError(
                f"{path}:{exc.lineno}: text after the end of the JSON array ({_json_problem(exc)}); remove it."
            ) from None
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({_json_problem(exc)}); fix the file.") from None
    if not isinstance(value, list):
        raise DataError(
            f"{path}: a .json data file must hold an array of objects [{{...}}, {{...}}], {_not_array(path, value)}"
        )
    hint = "A .json data file must be an array of objects."
    return [(i, _object(str(path), i, item, hint)) for i, item in enumerate(value)]


def _not_array(path: Path, value) -> str:
    """What a .json file holds instead of an array of rows, and what to do: an object whose keys hold the arrays (a
    file of several splits, as CLINC150's data_full.json; rows under one key, as SQuAD's `data`), one row alone, or
    another value."""
    if not isinstance(value, dict):
        return f"got {article(type(value).__name__)}. Write the rows as an array, or one object a line as .jsonl."
    arrays = {key: v for key, v in value.items() if isinstance(v, list)}
    if not arrays:
        return (
            f"got one object (keys {', '.join(map(str, value))[:80]}): a file of one row holds it in an array, [{{...}}], "
            "or write it as a line of a .jsonl file."
        )
    key = "train" if "train" in arrays else next(iter(arrays))
    listed = ", ".join(f"'{k}' ({counted(len(v), 'item')})" for k, v in list(arrays.items())[:6])
    more = f" and {len(arrays) - 6} more" if len(arrays) > 6 else ""
    item = arrays[key][0] if arrays[key] else {}
    shown = json.dumps(item, ensure_ascii=False)
    kind = "lists" if isinstance(item, list) else "texts" if isinstance(item, str) else "values, not objects,"
    items = (
        ""
        if isinstance(item, dict)
        else f" Its items are {kind} ({shown if len(shown) <= 80 else shown[:77] + '...'}), not objects naming their "
        'fields: write each row as one (e.g. {"text": ..., "label": ...}).'
    )
    return (
        f"got an object whose keys hold the arrays: {listed}{more} (a file of several splits, or rows under one key). "
        f"Write the array of one key to a file of its own (e.g. python -c \"import json; json.dump(json.load(open('"
        f"{path}'))['{key}'], open('{key}.json', 'w'))\").{items}"
    )


PIECE = 1 << 20  # characters of a .json file read at a time; an item longer than that is read on (doubling)
WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace
CUT = 12  # a parse error this close to the end of what is read may be an item cut there ("Infinity", "\\uXXXX")


def json_file_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """The (index, row) of each object of a .json file's array, each as soon as it is read (`_Array`); a file that
    holds no array (JSON lines, one object) is read whole by `json_rows`, which says what it holds."""
    pieces = text_pieces(path, PIECE)
    text = ""
    for piece in pieces:
        text += piece
        if text.strip():
            break
    if not text.lstrip().startswith("["):
        pieces.close()
        yield from json_rows(path, read_text(path))
        return
    yield from _Array(path, pieces, text).rows()


class _Array:
    """A .json file's array read an item at a time: `text` holds what is read and not yet consumed, which starts at
    the file's line `line`, after `column` characters of that line."""

    def __init__(self, path: Path, pieces: Iterator[str], text: str) -> None:
        self.path, self.pieces, self.text = path, pieces, text
        self.line, self.column, self.ended = 1, 0, False
        self.decoder = json.JSONDecoder(object_pairs_hook=_unique_keys)

    def more(self) -> bool:
        """Read on, at least as much as is held (an item longer than a piece is parsed again a few times, not once
        a piece); False at the end of the file."""
        added = 0
        for piece in self.pieces:
            self.text += piece
            added += len(piece)
            if added >= max(PIECE, len(self.text) - added):
                return True
        self.ended = True
        return added > 0

    def drop(self, upto: int) -> None:
        """Forget the text before `upto`, keeping count of its lines."""
        consumed = self.text[:upto]
        if (lines := consumed.count("\n")) > 0:
            self.line, self.column = self.line + lines, upto - consumed.rfind("\n") - 1
        else:
            self.column += upto
        self.text = self.text[upto:]

    def place(self, at: int) -> tuple[int, int]:
        """The file's (line, column from 1) of `text[at]`."""
        lines = self.text.count("\n", 0, at)
        if lines:
            return self.line + lines, at - self.text.rfind("\n", 0, at)
        return self.line, self.column + at + 1

    def skip(self, at: int) -> int:
        """The position of the next character that is not whitespace (len(text) at the end of the file)."""
        while True:
            at = WHITESPACE.match(self.text, at).end()
            if at < len(self.text) or not self.more():
                return at

    def invalid(self, msg: str, at: int) -> DataError:
        line, column = self.place(at)
        joiner = " " if msg.endswith(" at") else " at "
        return DataError(f"{self.path}:{line}: not valid JSON ({msg}{joiner}column {column}); fix the file.")

    def rows(self) -> Iterator[tuple[int, dict]]:
        at, index = self.text.index("[") + 1, 0
        hint = "A .json data file must be an array of objects."
        while True:
            at = self.skip(at)
            if at == len(self.text):
                raise self.invalid("Expecting value", at)
            if index == 0 and self.text[at] == "]":
                break
            value, at = self.item(at, index)
            yield index, _object(str(self.path), index, value, hint)
            index += 1
            at = self.skip(at)
            if at < len(self.text) and self.text[at] == "]":
                break
            if at == len(self.text) or self.text[at] != ",":
                raise self.invalid("Expecting ',' delimiter", at)
            at += 1
            if at > PIECE:  # what is consumed is forgotten a piece at a time
                self.drop(at)
                at = 0
        at = self.skip(at + 1)
        if at < len(self.text):
            line, column = self.place(at)
            raise DataError(
                f"{self.path}:{line}: text after the end of the JSON array (Extra data at column {column}); remove it."
            )

    def item(self, at: int, index: int):
        """The value that starts at `at` (the array's item `index`) and the position after it."""
        while True:
            try:
                value, end = self.decoder.raw_decode(self.text, at)
            except DuplicateKey as exc:
                raise DataError(f"{location(str(self.path), index)}: {exc}") from None
            except json.JSONDecodeError as exc:
                cut = exc.msg.startswith("Unterminated string") or exc.pos >= len(self.text) - CUT
                if cut and not self.ended and self.more():
                    continue
                raise self.invalid(exc.msg, exc.pos) from None
            if end == len(self.text) and not self.ended and self.more():
                continue  # a number may go on in the next piece
            return value, end
