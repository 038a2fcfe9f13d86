"""Read data files into records: one `Record` per row, each remembering where it came from.

Supported: .jsonl (one object a line), .json (an array of objects; a .json file holding JSON lines is read as
.jsonl, as the datasets library reads it: `json_rows`), .csv / .tsv (header row, its names read without the spaces around them; a .csv file's separator is detected from its header line among , ; tab | unless
data.delimiter names it; duplicate column names are refused; a .csv file's quotes are read strictly, a .tsv file has
none, as IANA's text/tab-separated-values has none: a value there holds no tab or line break: `csv_rows`), .parquet (needs
pyarrow; a float column of whole numbers with nulls, pandas' form of an integer column with missing values, is read
as integers), .txt, .md and .markdown (the whole file is ONE text record, its Markdown kept as written, for continued pretraining: blank lines are paragraph breaks
inside a document, not document separators; put several documents in a folder of .txt files or in a .jsonl with a
"text" field). Any of these may be gzipped (.jsonl.gz, ...); text that is not UTF-8 is refused (`decode`). A folder is
read recursively, in sorted path order, skipping files of other types, its Markdown files when it holds files of rows,
and the files that describe it (README.md, LICENSE.txt, SOURCE.md: `about_folder`), which are no documents or rows of
it; each kind skipped is counted in a note of the report.

`Record.line` is the 1-based line for jsonl (a .json file of JSON lines included: a report.Line) and txt, the file
line where the row starts for csv, and the 0-based item index for json arrays and parquet (shown as `file[index]`,
see report.location).
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.data import csv_rows, json_rows
from tunelab.data.csv_rows import named_twice
from tunelab.data.decode import byte_lines, read_text
from tunelab.data.report import DataReport
from tunelab.errors import DataError, counted
from tunelab.run_info import RUN_FILE
from tunelab.rundir import is_run_dir

# Plain text, each file one document: Markdown too (a project's docs, for continued pretraining), read as written
TEXT_EXTENSIONS = (".txt", ".md", ".markdown")
EXTENSIONS = (".jsonl", ".json", ".csv", ".tsv", ".parquet", *TEXT_EXTENSIONS)


@dataclass(frozen=True)
class Record:
    path: str
    line: int
    row: dict
    renamed: dict[str, str] = field(default_factory=dict)  # {column as written: name read} (`data.case`)


def _kind(path: Path) -> str | None:
    """The extension that decides how to read the file (.gz stripped; ".txt" for any plain text), or None if
    unsupported."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for ext in EXTENSIONS:
        if name.endswith(ext):
            return ".txt" if ext in TEXT_EXTENSIONS else ext
    return None


def _markdown(path: Path) -> bool:
    return path.name.lower().removesuffix(".gz").endswith((".md", ".markdown"))


# the files that describe a folder of data, not part of it: a dataset's card, its licence, where it came from
ABOUT_FILES = ("readme", "license", "licence", "copying", "notice", "citation", "source")


def about_folder(path: Path) -> bool:
    """A file named as one that describes its folder (README.md, LICENSE.txt, SOURCE.md, readme_fr.md): skipped when
    its folder is read, as no document or rows of it; read when named itself."""
    stem = path.name.lower().split(".")[0]
    return stem in ABOUT_FILES or any(stem.startswith((f"{name}_", f"{name}-")) for name in ABOUT_FILES[:3])


def _files(paths: list[str], report: DataReport | None = None) -> list[Path]:
    """The data files the paths name, a folder's in sorted order. A file named twice (itself, or in a folder also
    named) is refused: it would be read, and trained on, twice without a word. A folder's files of other types are
    noted in `report`."""
    files, given = [], {}  # resolved file -> (index, entry) of the entry that names it
    named = {Path(p).expanduser().resolve() for p in paths if Path(p).expanduser().is_file()}
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
            about = [f for f in inside if about_folder(f)]  # LICENSE, of no type read, is noted with them
            found = [f for f in inside if _kind(f) and f not in about]
            if any(_kind(f) != ".txt" for f in found):  # a Markdown file beside rows is no document of them
                found = [f for f in found if not _markdown(f)]
            if not found:
                readable = [f for f in about if _kind(f)]
                skipped = (
                    f" ({_listed(path, readable)} describe{'s' if len(readable) == 1 else ''} the folder and "
                    f"{'is' if len(readable) == 1 else 'are'} not read from it: name such a file itself to train on it)"
                    if readable
                    else ""
                )
                raise DataError(
                    f"{p}: the folder holds no data files{skipped}; tunelab reads {', '.join(EXTENSIONS)} files (optionally gzipped). "
                    "Check the folder's path, or put the data files in it."
                )
            unnamed = [f for f in about if f.resolve() not in named]  # one named itself is read there
            if unnamed and report is not None:
                report.notes.append(
                    f"{p}: {counted(len(unnamed), 'file')} that describe{'s' if len(unnamed) == 1 else ''} the folder not "
                    f"read ({_listed(path, unnamed)}): a "
                    "folder's README, LICENSE, COPYING, NOTICE, CITATION and SOURCE files are about its data, not part of "
                    "it; to train on one, name the file itself in data.train beside the folder"
                )
            other = [str(f.relative_to(path)) for f in inside if f not in found and f not in about]
            if other and report is not None:
                more = ", ..." if len(other) > 5 else ""
                report.notes.append(
                    f"{p}: {counted(len(other), 'file')} of other types not read ({', '.join(other[:5])}{more}); tunelab reads "
                    f"{', '.join(EXTENSIONS)} files (optionally gzipped), and a folder's Markdown only when it holds no "
                    "files of rows"
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
                # a config's relative paths are absolute by now: ./a.csv and a.csv read the same
                how = (
                    f"entries {first[0] + 1} and {k + 1} both name it; a relative path, ./a.csv or a.csv alike, is "
                    "read against the config's folder"
                    if first[1] == p
                    else f"entry {first[0] + 1} as '{first[1]}' and entry {k + 1} as '{p}'"
                )
                raise DataError(
                    f"{f}: the file is given twice ({how}), so "
                    "it would be read, and trained on, "
                    "twice. Remove one; to train on a file more often, give data.train entries weights (README: "
                    "Mixtures)."
                )
        files.extend(found)
    return files


def _listed(folder: Path, files: list[Path]) -> str:
    """The first five of a folder's `files`, relative to it: "README.md, sub/LICENSE.txt, ..."."""
    return ", ".join(str(f.relative_to(folder)) for f in files[:5]) + (", ..." if len(files) > 5 else "")


PARQUET_BATCH = 1024  # rows decoded at a time: a reader of a file's first rows stops after a batch or so


def _parquet(path: Path) -> Iterator[tuple[int, dict]]:
    """The (index, row) of each row of a parquet file, a batch at a time (a reader of its first rows reads no further row groups). The
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
        twice = named_twice(file.schema_arrow.names)  # read_table fails on one, ParquetFile keeps the last
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
                yield line, row
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
    never holds (or checks) the rest, and a .json array an item at a time (`json_rows.json_file_rows`); a .txt
    document is read whole."""
    kind = _kind(path)
    if kind == ".txt":  # one document; a Windows file's line ends are \n
        yield Record(str(path), 1, {"text": read_text(path).replace("\r\n", "\n")})
        return
    if kind == ".parquet":
        rows = _parquet(path)
    elif kind == ".jsonl":
        rows = json_rows.jsonl_rows(path, byte_lines(path))
    elif kind == ".json":
        rows = json_rows.json_file_rows(path)
    else:
        rows = csv_rows.file_rows(path, kind == ".tsv", delimiter, option)
    for line, row in rows:
        yield Record(str(path), line, row)


def headerless(path: str, row: dict) -> str:
    """A hint for an error about a .csv or .tsv row's columns when the file's header names look like a row of data
    (a name of several words or over 40 characters, a question or sentence, a number): a file without a header line
    has its first row read as one."""
    if _kind(Path(path)) not in (".csv", ".tsv"):
        return ""
    looks = [name for name in row if isinstance(name, str) and _data_like(name)]
    if not looks:
        return ""
    return (
        f" The file's first line is read as its header, and a name in it looks like data ({looks[0][:60]!r}): if "
        "the file has no header line, add one naming its columns."
    )


def _data_like(name: str) -> bool:
    """A header name that reads as a value: long, of several words, a question or sentence ("What is 1?", "One."),
    or a number ("12", "0.5")."""
    if len(name) > 40 or len(name.split()) > 3 or (len(name) > 1 and name.rstrip()[-1:] in "?.!"):
        return True
    try:
        float(name)
    except ValueError:
        return False
    return True


def refuse_missing_file(path: str | Path, command: str, option: str = "data", flags: bool = True) -> None:
    """DataError for a file given to a command (tunelab eval, predict: --data; compare: --questions) that is not
    there, before any model loads, in the same words for each: the readers' own messages point at data.train and
    data.eval or say no option, where the command's file came from its `option`. `flags`: named as the CLI's
    flag (eval, --data), else as the Python API's function and argument (tunelab.evaluate(), argument 'data')."""
    if not Path(path).exists():
        where = (
            f"{command} (--{option}"
            if flags
            else f"tunelab.{PYTHON_NAMES.get(command, command)}() (argument '{option}'"
        )
        raise DataError(
            f"{path}: file not found. Check the path given to {where}; a relative path is read from the working "
            "directory)."
        )


PYTHON_NAMES = {"eval": "evaluate"}  # a command whose Python function has another name


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


# words that name a held-out split in a file's name (test.jsonl, en_valid.csv, dev-00000.parquet)
HELD_OUT_WORDS = ("test", "valid", "validation", "val", "dev", "eval", "heldout", "holdout")


def held_out_named(path: Path) -> bool:
    """Whether a file of rows is named as a held-out split: a word of its name, split at . _ - and spaces."""
    return _kind(path) != ".txt" and bool(set(re.split(r"[._\-\s]+", path.name.lower())) & set(HELD_OUT_WORDS))


def note_held_out_files(paths: list[str], report: DataReport) -> None:
    """A note in `report` for each folder of training paths that holds files of rows named as held-out splits
    (snips' train.jsonl, valid.jsonl and test.jsonl side by side): a folder is read whole, so they are trained on,
    and a later eval on them scores rows the model has seen. A file named itself is taken as meant."""
    for p in paths:
        if not Path(p).expanduser().is_dir():
            continue
        folder = Path(p).expanduser()
        held = [f for f in _files([p]) if held_out_named(f)]
        if held:
            report.notes.append(
                f"{p}: {_listed(folder, held)} {'is' if len(held) == 1 else 'are'} named as held-out "
                f"{'split' if len(held) == 1 else 'splits'}, but a folder is read whole, so {'its' if len(held) == 1 else 'their'} "
                "rows are trained on: scored later, they are rows the model has seen. Name the training files "
                "themselves in data.train and give a held-out file as data.eval, or keep them knowingly"
            )


def _json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def note_rows_as_text(records: list[Record], report: DataReport) -> None:
    """A note in `report` for each .txt record whose first lines (up to five) are all JSON objects: a .jsonl file
    named .txt, read as one document, braces, quotes and field names included, instead of as its rows."""
    for record in records:
        if not is_plain_text(record.path) or not isinstance(record.row.get("text"), str):
            continue
        lines = [line.strip() for line in record.row["text"].splitlines() if line.strip()][:5]
        if lines and all(line.startswith("{") and _json_object(line) for line in lines):
            report.notes.append(
                f"{record.path}: the text file holds JSON objects, one a line (as a .jsonl file does), and is read as "
                "one text document, its braces, quotes and field names included; to train on its rows, name it .jsonl"
            )


def is_plain_text(path: str) -> bool:
    """A .txt record: always the text format, whatever data.format and data.fields say for the other files."""
    return _kind(Path(path)) == ".txt"
