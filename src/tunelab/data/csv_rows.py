"""The rows of .csv and .tsv files, a line at a time: a header row (its names read without the spaces around them,
a name given twice refused), a .csv file's separator detected from its header line among , ; tab | unless
data.delimiter names it, its quotes read strictly; a .tsv file has no quoting, as IANA's
text/tab-separated-values has none (a value there holds no tab or line break). Each reader yields (line, row), the
line being the file line where the row starts."""

from __future__ import annotations

import csv
import itertools
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from tunelab.data.decode import NotText, text_lines
from tunelab.errors import DataError, counted

# The csv module refuses a value longer than 131,072 characters by default; a document in a cell may be longer.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
DELIMITERS = {",": ",", ";": ";", "tab": "\t", "|": "|"}  # data.delimiter -> the character
_QUOTES_DOUBLED = re.compile(r'(?:[^"]|"")*', re.DOTALL)  # every quote doubled: one pass, no backtracking
TSV_QUOTING = (
    "rename the file .csv to read its quotes (its tab separator is detected), or write it without quoting (a .tsv "
    "value holds no tab or line break)."
)


def detect_delimiter(text: str) -> str:
    """The separator that splits the header line into the most columns (a comma when none splits it). The header
    ends at \n, \r\n or a lone \r (old Mac files), as the csv module's rows do."""
    first = re.split(r"\r\n?|\n", text, maxsplit=1)[0]
    counts = {d: len(next(csv.reader([first], delimiter=d), [])) for d in DELIMITERS.values()}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > 1 else ","


def csv_rows(path: Path, lines: Iterable[str], delimiter: str, quoting: bool = True) -> Iterator[tuple[int, dict]]:
    """The (line, row) of each row of the file's `lines` (`decode.text_lines`), as they are read. `quoting`: CSV's quotes, read strictly (an
    unclosed quote, or text after a closing one, is an error naming the line where its value starts: read
    leniently, an unclosed quote took every later row into one value); False for .tsv, where a quote is an ordinary
    character."""
    rule = {"strict": True} if quoting else {"quoting": csv.QUOTE_NONE}
    reader = csv.reader(lines, delimiter=delimiter, **rule)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise _quoting_error(path, 1, exc) from None
    header = [name.strip() for name in header]  # "prompt, completion": the spaces after a comma are no name's
    if twice := named_twice(header):
        raise DataError(f"{path}:1: the header {twice}")
    start = reader.line_num + 1
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise _quoting_error(path, start, exc) from None
        line, start = start, reader.line_num + 1
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            fix = (
                f"Quote values that contain {delimiter!r} or line breaks, or set data.delimiter if the file uses "
                "another separator."
                if quoting
                else f"A .tsv file's quotes are plain characters; if it was written with CSV quoting, {TSV_QUOTING}"
            )
            raise DataError(
                f"{path}:{line}: the row has {counted(len(values), 'value')} but the header has "
                f"{counted(len(header), 'column')} "
                f"({', '.join(header)}, separated by {delimiter!r}). {fix}"
            )
        if not quoting and (quoted := next((h for h, v in zip(header, values) if _csv_quoted(v)), None)):
            raise DataError(
                f"{path}:{line}: the value of column '{quoted}' is in quotes with the quotes inside it doubled, as CSV "
                "quoting writes it (pandas' to_csv(sep='\\t') does so), but a .tsv file's quotes are plain "
                f"characters, so they would be trained on; {TSV_QUOTING}"
            )
        values = [v.replace("\r\n", "\n") for v in values]  # a Windows file's line breaks inside a quoted value
        yield line, dict(zip(header, values))


def _csv_quoted(value: str) -> bool:
    """A whole value in quotes with the quotes inside it doubled: CSV's quoting, which pandas' to_csv(sep="\t")
    writes into a .tsv file for a value holding a quote."""
    inner = value[1:-1]
    return len(value) > 3 and value[0] == value[-1] == '"' and '""' in inner and bool(_QUOTES_DOUBLED.fullmatch(inner))


def named_twice(names: list[str]) -> str | None:
    """'names the column X more than once (columns i, j), ...' for the first name given twice, else None."""
    for name in dict.fromkeys(names):
        columns = [i + 1 for i, n in enumerate(names) if n == name]
        if len(columns) > 1 and not name:  # a spreadsheet's empty columns after the last one, saved as CSV
            return (
                f"leaves columns {', '.join(map(str, columns))} unnamed (empty names, as a spreadsheet writes for "
                "empty columns beside the data), so their values have no field; name them, or delete those columns."
            )
        if len(columns) > 1:
            return (
                f"names the column '{name}' more than once (columns {', '.join(map(str, columns))}), so it is unclear "
                "which to use; rename or remove the duplicates."
            )
    return None


def file_rows(
    path: Path, tsv: bool, delimiter: str = "auto", option: str = "data.delimiter"
) -> Iterator[tuple[int, dict]]:
    """The (line, row) of each row of a .csv file (`tsv`: a .tsv file), read a line at a time. `delimiter`: "auto"
    (detected from the header line) or a key of DELIMITERS; `option`: the option that set it, in messages."""
    lines = text_lines(path)
    first = next(lines, "")
    lines = itertools.chain([first], lines)
    if tsv:
        yield from csv_rows(path, lines, "\t", quoting=False)
    elif delimiter == "auto":
        yield from csv_rows(path, lines, detect_delimiter(first))
    else:
        yield from _named_delimiter(path, lines, detect_delimiter(first), delimiter, option)


def _quoting_error(path: Path, line: int, exc: csv.Error) -> DataError:
    if "unexpected end of data" in str(exc):
        what = "a quoted value starts in this row and is never closed (the file ends inside it)"
    else:
        what = f"a quoted value is followed by more text before the separator ({exc})"
    return DataError(
        f'{path}:{line}: {what}. Close the quote, or double a quote that belongs to the text (""); in a .tsv file '
        "quotes are plain characters."
    )


def _named_delimiter(
    path: Path, lines: Iterable[str], detected: str, delimiter: str, option: str
) -> Iterator[tuple[int, dict]]:
    """The rows of a .csv file split by the separator `delimiter` names; an error of the rows' shape that the
    separator `detected` in its header line would explain says so."""
    chosen = DELIMITERS[delimiter]
    rows = csv_rows(path, lines, chosen)
    for k in itertools.count():
        try:
            line, row = next(rows)
        except StopIteration:
            return
        except NotText:
            raise
        except DataError as exc:
            if detected == chosen:
                raise
            raise _other_delimiter(f"{exc}", detected, delimiter, option) from None
        header, value = next(iter(row.items())) if k == 0 and len(row) == 1 else ("", None)
        if detected != chosen and detected in header and _splits_alike(header, value, detected):
            # one column named 'question,answer' over rows 'q,a': every row one value, refused later as a format it
            # is not. A column whose name holds the separator over rows that it splits otherwise is read as named.
            raise _other_delimiter(f"{path}:1: the header is one column, {header!r}.", detected, delimiter, option)
        yield line, row


def _splits_alike(header: str, value, separator: str) -> bool:
    """Whether the first row splits at `separator` into as many values as the header does into names."""
    return isinstance(value, str) and value.count(separator) == header.count(separator)


def _other_delimiter(problem: str, detected: str, delimiter: str, option: str) -> DataError:
    name = next(k for k, v in DELIMITERS.items() if v == detected)
    return DataError(
        f"{problem} The file's header line is split by {name!r}, not by {option} {delimiter!r}, which every file "
        "read with it is split by: give the files one separator, set data.delimiter: auto (each file's is detected "
        "from its header), or give a data.train source its own delimiter (README: Mixtures)."
    )
