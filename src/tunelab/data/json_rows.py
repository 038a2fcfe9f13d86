"""The rows of JSON data files: .jsonl (one object a line, read a line at a time) and .json (an array of objects; a
.json file holding JSON lines is read as .jsonl, as the datasets library reads it). Each reader yields (line, row):
the 1-based line of a .jsonl file (a `report.Line` for a .json file of JSON lines), the 0-based index of an
array's item. A key given twice in an object is refused rather than kept last, as json would keep it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from tunelab.data.report import Line, location
from tunelab.errors import DataError, article


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
        keys = f" with keys {', '.join(map(str, value))[:80]}" if isinstance(value, dict) else ""
        raise DataError(
            f"{path}: a .json data file must hold an array of objects [{{...}}, {{...}}], got {article(type(value).__name__)}{keys}. "
            "Extract the array of examples into its own file, or write one object a line as .jsonl."
        )
    hint = "A .json data file must be an array of objects."
    return [(i, _object(str(path), i, item, hint)) for i, item in enumerate(value)]
