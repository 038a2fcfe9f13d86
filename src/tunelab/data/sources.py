"""Read data files into records: one `Record` per row, each remembering where it came from.

Supported: .jsonl (one object a line), .json (an array of objects; a .json file holding JSON lines is read as
.jsonl, as the datasets library reads it), .csv / .tsv (header row, its names read without the spaces around them; a .csv file's separator is detected from its header line among , ; tab | unless
data.delimiter names it; duplicate column names are refused; a .csv file's quotes are read strictly, a .tsv file has
none, as IANA's text/tab-separated-values has none: a value there holds no tab or line break), .parquet (needs
pyarrow; a float column of whole numbers with nulls, pandas' form of an integer column with missing values, is read
as integers), .txt (the whole file is ONE text record, for continued pretraining: blank lines are paragraph breaks
inside a document, not document separators; put several documents in a folder of .txt files or in a .jsonl with a
"text" field). Any of these may be gzipped (.jsonl.gz, ...). A folder is
read recursively, in sorted path order, skipping files of other types.

`Record.line` is the 1-based line for jsonl (a .json file of JSON lines included: a report.Line) and txt, the file
line where the row starts for csv, and the 0-based item index for json arrays and parquet (shown as `file[index]`,
see report.location).
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import itertools
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tunelab.data.report import DataReport, Line, location
from tunelab.errors import DataError, article, counted
from tunelab.rundir import RUN_FILE, is_run_dir

EXTENSIONS = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")
# The csv module refuses a value longer than 131,072 characters by default; a document in a cell may be longer.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
DELIMITERS = {",": ",", ";": ";", "tab": "\t", "|": "|"}  # data.delimiter -> the character
_QUOTES_DOUBLED = re.compile(r'(?:[^"]|"")*', re.DOTALL)  # every quote doubled: one pass, no backtracking
TSV_QUOTING = (
    "rename the file .csv to read its quotes (its tab separator is detected), or write it without quoting (a .tsv "
    "value holds no tab or line break)."
)


@dataclass(frozen=True)
class Record:
    path: str
    line: int
    row: dict


def _kind(path: Path) -> str | None:
    """The extension that decides how to read the file (.gz stripped), or None if unsupported."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for ext in EXTENSIONS:
        if name.endswith(ext):
            return ext
    return None


def _files(paths: list[str], report: DataReport | None = None) -> list[Path]:
    """The data files the paths name, a folder's in sorted order. A file named twice (itself, or in a folder also
    named) is refused: it would be read, and trained on, twice without a word. A folder's files of other types are
    noted in `report`."""
    files, given = [], {}  # resolved file -> (index, entry) of the entry that names it
    for k, p in enumerate(paths):
        path = Path(p).expanduser()
        if path.suffix == ".arrow" or (
            path.is_dir() and any((path / name).is_file() for name in ("dataset_dict.json", "state.json"))
        ):
            raise DataError(  # its files are the library's: dataset_info.json was read as an array of rows
                f"{p}: a file or folder the datasets library wrote (save_to_disk); in data.train give it as a source "
                f"that library reads: {{path: {p}}} (with split: for a DatasetDict). An eval file (data.eval, a "
                "source's eval) is read as plain files: write its rows to one (dataset.to_json('eval.jsonl')). "
                "README: Data through the datasets library."
            )
        if path.is_dir():
            # Hidden files and folders are not data (.ipynb_checkpoints/ holds copies of the same files)
            inside = sorted(
                f
                for f in path.rglob("*")
                if f.is_file() and not any(part.startswith(".") for part in f.relative_to(path).parts)
            )
            runs = sorted(f.parent for f in inside if f.name == RUN_FILE and is_run_dir(f.parent))
            if runs:  # its metrics.jsonl, config.json and tokenizer.json were read as rows (or refused as bad ones)
                raise DataError(
                    f"{p}: the folder holds the tunelab run directory {runs[0]} (it has a {RUN_FILE}), whose metrics, "
                    "configs and tokenizer files are not training data. Move the run out of the data folder, or name "
                    "the data files themselves in data.train / data.eval."
                )
            saved = sorted(
                f.parent
                for f in inside
                if f.name == "dataset_dict.json"
                or (f.name == "state.json" and (f.parent / "dataset_info.json").is_file())
            )
            if saved:  # its dataset_info.json and state.json were read as rows (and refused as not an array)
                outer = min(saved, key=lambda d: len(d.parts))
                raise DataError(
                    f"{p}: the folder holds {outer}, a folder the datasets library wrote (save_to_disk), whose "
                    "metadata files are not rows. Give it as a source of its own in data.train ({path: "
                    f"{outer}}}), and the folder's other data files by name or in a folder without it."
                )
            found = [f for f in inside if _kind(f)]
            if not found:
                raise DataError(
                    f"{p}: the folder holds no data files; tunelab reads {', '.join(EXTENSIONS)} files (optionally gzipped). "
                    "Check the folder's path, or put the data files in it."
                )
            if (other := [str(f.relative_to(path)) for f in inside if not _kind(f)]) and report is not None:
                more = ", ..." if len(other) > 5 else ""
                report.notes.append(
                    f"{p}: {counted(len(other), 'file')} of other types not read ({', '.join(other[:5])}{more}); tunelab reads "
                    f"{', '.join(EXTENSIONS)} files (optionally gzipped)"
                )
        elif path.is_file():
            if _kind(path) is None:
                raise DataError(
                    f"{p}: unknown file type '{path.suffix}'; tunelab reads {', '.join(EXTENSIONS)} files (optionally .gz). "
                    "Convert the file or rename it if it already is one of these."
                )
            found = [path]
        else:
            raise DataError(
                f"{p}: file not found. Check the path in data.train / data.eval (relative paths in a YAML config are relative to the config's folder)."
            )
        for f in found:
            if (first := given.setdefault(f.resolve(), (k, p)))[0] != k:
                raise DataError(
                    f"{f}: the file is given twice (entry {first[0] + 1} as '{first[1]}' and entry {k + 1} as '{p}'), so "
                    "it would be read, and trained on, "
                    "twice. Remove one; to train on a file more often, give data.train entries weights (README: "
                    "Mixtures)."
                )
        files.extend(found)
    return files


class NotText(DataError):
    """A data file that is not UTF-8 text (another encoding, NUL bytes), or cannot be read at all."""


def _read_text(path: Path) -> str:
    try:
        raw = gzip.open(path, "rb").read() if path.name.lower().endswith(".gz") else path.read_bytes()
        text = raw.decode("utf-8-sig")
        if (at := text.find("\0")) >= 0:  # the line that holds it
            start, end = text.rfind("\n", 0, at) + 1, text.find("\n", at)
            _refuse_nul(path, text.count("\n", 0, at) + 1, text[start : end if end >= 0 else len(text)])
        return text
    except UnicodeDecodeError as exc:
        if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # Excel's "Unicode Text", PowerShell's > file
            raise NotText(
                f"{path}: the file is UTF-16 text (it starts with a UTF-16 byte order mark), not UTF-8; re-save it as "
                "UTF-8."
            ) from None
        line = raw[: exc.start].count(b"\n") + 1
        legacy = _legacy(raw, exc.start)  # which says how to re-save it, where it reads so
        raise NotText(
            f"{path}:{line}: the file is not UTF-8 text ({exc.reason} at byte {exc.start} of the file)"
            + (legacy or "; re-save it as UTF-8")
            + "."
        ) from None
    except (OSError, EOFError) as exc:
        raise NotText(f"{path}: cannot read the file ({exc}).") from None


def _refuse_nul(path: Path, line: int, text: str) -> None:
    """DataError when a line of a text file holds a NUL byte, which no text holds: a UTF-16 file without a byte order
    mark (every other byte 0, each a valid UTF-8 character) was read as text with a NUL between its letters, and
    its header and values trained on so, or refused as a row of the wrong shape."""
    if "\0" not in text:
        return
    utf16 = text.count("\0") * 3 >= len(text.strip("\r\n\0"))
    why = (
        "the file looks like UTF-16 text without a byte order mark (every other byte is 0); re-save it as UTF-8."
        if utf16
        else "a text file holds none; the file is damaged, or not a text file: remove them."
    )
    raise NotText(f"{path}:{line}: the line holds NUL bytes (character 0): {why}")


def _legacy(raw: bytes, at: int) -> str:
    """What the line around byte `at` says read as Windows-1252 (Latin-1's superset, which Excel and older Windows
    tools write), when it reads so: the user sees which text is at fault and what the file is likely in."""
    start, end = raw.rfind(b"\n", 0, at) + 1, raw.find(b"\n", at)
    piece = raw[max(start, at - 30) : min(end if end >= 0 else len(raw), at + 30)]
    try:
        text = piece.decode("cp1252").strip()
    except UnicodeDecodeError:
        return ""
    return (
        f"; read as Windows-1252 or Latin-1, as Excel and older Windows tools save text, it says {text!r}: re-save it "
        "from there with the encoding UTF-8, or in Python: open(path, encoding='cp1252').read() written back with "
        "encoding='utf-8'"
    )


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")  # noqa: SIM115


def _byte_lines(path: Path) -> Iterator[str]:
    """The file's lines as read, without the \n that ends each (only \n ends one: str.splitlines also breaks at
    U+2028, U+2029 and U+0085, which JSON strings may hold unescaped), decoded as UTF-8 one at a time (a BOM at its
    start dropped): a large file is never held whole. A line that is not UTF-8 stops it with `_read_text`'s error,
    naming line and byte; one that holds a NUL byte with `_refuse_nul`'s."""
    try:
        with _open(path) as f:
            for n, raw in enumerate(f):
                try:
                    line = raw.decode("utf-8-sig" if n == 0 else "utf-8")
                except UnicodeDecodeError:
                    _read_text(path)  # raises, naming the line and the byte
                    raise
                _refuse_nul(path, n + 1, line)
                yield line.removesuffix("\n")
    except (OSError, EOFError) as exc:
        raise NotText(f"{path}: cannot read the file ({exc}).") from None


def _text_lines(path: Path) -> Iterator[str]:
    """The file's lines as the csv module reads them (ending at \n, \r\n or an old Mac's lone \r, kept), decoded
    as UTF-8 as they are read (a BOM at its start dropped); bytes that are not UTF-8 stop it with `_read_text`'s
    error, naming line and byte; a line that holds a NUL byte with `_refuse_nul`'s."""
    try:
        with _open(path) as f, io.TextIOWrapper(f, encoding="utf-8-sig", newline="") as text:
            for n in itertools.count(1):
                try:
                    line = text.readline()
                except UnicodeDecodeError:
                    _read_text(path)  # raises, naming the line and the byte
                    raise
                if not line:
                    return
                _refuse_nul(path, n, line)
                yield line
    except (OSError, EOFError) as exc:
        raise NotText(f"{path}: cannot read the file ({exc}).") from None


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


def _jsonl(path: Path, lines: Iterable[str], named_json: bool = False) -> Iterator[Record]:
    """The records of the file's `lines`, as they are read. `named_json`: the file is a .json file that holds JSON
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
        yield Record(str(path), where, _object(str(path), where, value, f"{rule} must be one object.{hint}"))


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


def _json(path: Path, text: str) -> list[Record]:
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys)
    except DuplicateKey as exc:
        if text.lstrip().startswith("{"):  # JSON lines named .json: _jsonl names the line
            return list(_jsonl(path, text.split("\n"), named_json=True))
        raise DataError(f"{path}: an object of the array: {exc}") from None
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):  # several objects: JSON lines named .json
            return list(_jsonl(path, text.split("\n"), named_json=True))
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
    return [Record(str(path), i, _object(str(path), i, item, hint)) for i, item in enumerate(value)]


def detect_delimiter(text: str) -> str:
    """The separator that splits the header line into the most columns (a comma when none splits it). The header
    ends at \n, \r\n or a lone \r (old Mac files), as the csv module's rows do."""
    first = re.split(r"\r\n?|\n", text, maxsplit=1)[0]
    counts = {d: len(next(csv.reader([first], delimiter=d), [])) for d in DELIMITERS.values()}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > 1 else ","


def _csv(path: Path, lines: Iterable[str], delimiter: str, quoting: bool = True) -> Iterator[Record]:
    """The records of the file's `lines` (`_text_lines`), as they are read. `quoting`: CSV's quotes, read strictly (an
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
    if twice := _named_twice(header):
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
        yield Record(str(path), line, dict(zip(header, values)))


def _csv_quoted(value: str) -> bool:
    """A whole value in quotes with the quotes inside it doubled: CSV's quoting, which pandas' to_csv(sep="\t")
    writes into a .tsv file for a value holding a quote."""
    inner = value[1:-1]
    return len(value) > 3 and value[0] == value[-1] == '"' and '""' in inner and bool(_QUOTES_DOUBLED.fullmatch(inner))


def _named_twice(names: list[str]) -> str | None:
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


def _quoting_error(path: Path, line: int, exc: csv.Error) -> DataError:
    if "unexpected end of data" in str(exc):
        what = "a quoted value starts in this row and is never closed (the file ends inside it)"
    else:
        what = f"a quoted value is followed by more text before the separator ({exc})"
    return DataError(
        f'{path}:{line}: {what}. Close the quote, or double a quote that belongs to the text (""); in a .tsv file '
        "quotes are plain characters."
    )


PARQUET_BATCH = 1024  # rows decoded at a time: a reader of a file's first rows stops after a batch or so


def _parquet(path: Path) -> Iterator[Record]:
    """The rows of a parquet file, a batch at a time (a reader of its first rows reads no further row groups). The
    float columns alone are read whole first, to choose those that hold whole numbers (`_whole_columns`) for every
    row alike."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{path}: reading .parquet files needs pyarrow; install it with: pip install 'tunelab[parquet]' (or pip install pyarrow)."
        ) from None
    try:
        # a .parquet.gz file is read from its unpacked bytes: pyarrow takes it for a damaged parquet file
        source = pa.BufferReader(gzip.open(path, "rb").read()) if path.name.lower().endswith(".gz") else path
        file = pq.ParquetFile(source)
        twice = _named_twice(file.schema_arrow.names)  # read_table fails on one, ParquetFile keeps the last
        if twice:
            raise DataError(f"{path}: the file {twice}")
        whole = _whole_columns(file)
        line = 0
        for batch in file.iter_batches(batch_size=PARQUET_BATCH):
            for name in whole:  # a safe cast that succeeded on the whole column
                i = batch.schema.get_field_index(name)
                batch = batch.set_column(
                    i, batch.schema.field(i).with_type(pa.int64()), batch.column(i).cast(pa.int64())
                )
            for row in batch.to_pylist():
                yield Record(str(path), line, row)
                line += 1
    except DataError:
        raise
    except Exception as exc:  # pyarrow raises several unrelated types for a damaged file
        raise DataError(f"{path}: cannot read the parquet file ({exc}).") from None


def _whole_columns(file) -> list[str]:
    """The float columns of a parquet file that have a null and otherwise only whole numbers, to read as int64.
    pandas stores an integer column with a missing value so (a numpy int has no null): its 10 would be rendered
    "10.0". A null stays null; a float column without nulls, or with a fraction, NaN or infinity in it, stays float."""
    import pyarrow as pa

    floats = [field.name for field in file.schema_arrow if pa.types.is_floating(field.type)]
    if not floats:
        return []
    table = file.read(columns=floats)
    whole = []
    for name in floats:
        column = table.column(name)
        if not 0 < column.null_count < len(column):
            continue
        try:
            column.cast(pa.int64())  # a safe cast: refuses 2.5, NaN, inf and what int64 cannot hold
        except pa.ArrowInvalid:
            continue
        whole.append(name)
    return whole


def read_file(path: Path, delimiter: str = "auto", option: str = "data.delimiter") -> list[Record]:
    """delimiter: for .csv files, "auto" or a key of DELIMITERS; `option`: the option that set it, in messages."""
    return list(iter_file(path, delimiter, option))


def iter_file(path: Path, delimiter: str = "auto", option: str = "data.delimiter") -> Iterator[Record]:
    """The records of one file as `read_file` reads them, each as soon as it is read: a .jsonl, .csv or .tsv file is
    read a line at a time and a parquet file a batch of rows at a time (`_parquet`), so a reader of its first rows
    never holds (or checks) the rest; a .json array and a .txt document are read whole."""
    kind = _kind(path)
    if kind == ".parquet":
        yield from _parquet(path)
        return
    if kind == ".jsonl":
        yield from _jsonl(path, _byte_lines(path))
        return
    if kind in (".csv", ".tsv"):
        lines = _text_lines(path)
        first = next(lines, "")
        lines = itertools.chain([first], lines)
        if kind == ".tsv":
            yield from _csv(path, lines, "\t", quoting=False)
        elif delimiter == "auto":
            yield from _csv(path, lines, detect_delimiter(first))
        else:
            yield from _named_delimiter(path, lines, detect_delimiter(first), delimiter, option)
        return
    text = _read_text(path)
    if kind == ".json":
        yield from _json(path, text)
        return
    yield Record(str(path), 1, {"text": text.replace("\r\n", "\n")})  # a Windows file's line ends are \n


def _named_delimiter(path: Path, lines: Iterable[str], detected: str, delimiter: str, option: str) -> Iterator[Record]:
    """The records of a .csv file split by the separator `delimiter` names; an error of the rows' shape that the
    separator `detected` in its header line would explain says so."""
    chosen = DELIMITERS[delimiter]
    records = _csv(path, lines, chosen)
    for k in itertools.count():
        try:
            record = next(records)
        except StopIteration:
            return
        except NotText:
            raise
        except DataError as exc:
            if detected == chosen:
                raise
            raise _other_delimiter(f"{exc}", detected, delimiter, option) from None
        header, value = next(iter(record.row.items())) if k == 0 and len(record.row) == 1 else ("", None)
        if detected != chosen and detected in header and _splits_alike(header, value, detected):
            # one column named 'question,answer' over rows 'q,a': every row one value, refused later as a format it
            # is not. A column whose name holds the separator over rows that it splits otherwise is read as named.
            raise _other_delimiter(f"{path}:1: the header is one column, {header!r}.", detected, delimiter, option)
        yield record


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


def headerless(path: str, row: dict) -> str:
    """A hint for an error about a .csv or .tsv row's columns when the file's header names look like a row of data
    (a name of several words or over 40 characters): a file without a header line has its first row read as one."""
    if _kind(Path(path)) not in (".csv", ".tsv"):
        return ""
    looks = [name for name in row if isinstance(name, str) and (len(name) > 40 or len(name.split()) > 3)]
    if not looks:
        return ""
    return (
        f" The file's first line is read as its header, and a name in it looks like data ({looks[0][:60]!r}): if "
        "the file has no header line, add one naming its columns."
    )


def refuse_missing_file(path: str | Path, command: str) -> None:
    """DataError for a file given to a command (tunelab eval, predict) that is not there, before any model loads:
    the reader's own message points at data.train and data.eval, options the command's file does not come from."""
    if not Path(path).exists():
        raise DataError(
            f"{path}: file not found. Check the path given to {command} (--data; a relative path is read from the "
            "working directory)."
        )


def read_records(
    paths: list[str], delimiter: str = "auto", report: DataReport | None = None, option: str = "data.delimiter"
) -> list[Record]:
    """All records of the given files and folders, in order. Raises DataError for missing or unreadable input, or a
    file given twice; a folder's files of other types are noted in `report`. `option`: the option that set
    `delimiter`, named by its messages."""
    return list(iter_records(paths, delimiter, report, option))


def iter_records(
    paths: list[str], delimiter: str = "auto", report: DataReport | None = None, option: str = "data.delimiter"
) -> Iterator[Record]:
    """The records of `read_records`, each as soon as it is read (`iter_file`): the files are listed (and refused as
    `read_records` refuses them) first, then read one after another."""
    for path in _files(paths, report):
        yield from iter_file(path, delimiter, option)


def is_plain_text(path: str) -> bool:
    """A .txt record: always the text format, whatever data.format and data.fields say for the other files."""
    return _kind(Path(path)) == ".txt"
