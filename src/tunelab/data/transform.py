"""`data.transform`: the user's function applied to every record before its format is read.

Named `module:function` (an installed module, or MODULE.py in the working directory, which the config keeps by its
path: `config.paths.working_module_file`) or `file.py:function` (a path, relative to the YAML config). The function takes the row (a dict of column -> value) and returns the row to
use (a dict), a list of rows (one record made into several: the paths of a conversation tree), or None (or [])
to drop it; dropped rows, and rows made of one record, are counted in the data report. The function is the user's own code,
run because the config names it. An exception in it stops the run with a `DataError` naming the row (file and line,
or dataset and index) and the exception.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import importlib.util
import types
from collections.abc import Callable
from pathlib import Path

from tunelab.data.report import DataReport, Made, location
from tunelab.data.sources import Record
from tunelab.errors import ConfigError, DataError, article, counted

Transform = Callable[[dict], dict | list[dict] | None]


def load_transform(spec: str | None, option: str = "option 'data.transform'") -> Transform | None:
    """The function `spec` names (module:function or file.py:function); ConfigError, naming `option`, when it cannot
    be found. Other options that name a user's function (grpo.rewards) load it here too."""
    if not spec:
        return None
    module_name, sep, function = spec.rpartition(":")
    if not sep or not module_name or not function:
        raise ConfigError(f"{option} is {spec!r}; write module:function (e.g. my_rows:clean) or file.py:function.")
    try:
        local = Path(module_name if module_name.endswith(".py") else module_name.replace(".", "/") + ".py")
        if module_name.endswith(".py") or (local.is_file() and importlib.util.find_spec(module_name) is None):
            # a file, or a module beside the working directory
            module = _from_file(local.expanduser(), option, function)
        else:
            module = importlib.import_module(module_name)
    except ConfigError:
        raise
    except ModuleNotFoundError as exc:
        if not f"{module_name}.".startswith(f"{exc.name}."):  # the module was found; something it imports was not
            raise ConfigError(f"{option}: importing {module_name!r} failed ({type(exc).__name__}: {exc}).") from None
        raise ConfigError(
            f"{option}: no module {module_name!r} is installed, and the working directory ({Path.cwd()}) holds no "
            f"{local}. Run from the folder that holds it, or name the file by its path ({local}:{function}, relative "
            "to the config)."
        ) from None
    except Exception as exc:
        raise ConfigError(f"{option}: importing {module_name!r} failed ({type(exc).__name__}: {exc}).") from None
    except SystemExit as exc:  # a script's sys.exit() at import would end tunelab without a word
        raise ConfigError(f"{option}: importing {module_name!r} called sys.exit({exc.code!r}).") from None
    fn = getattr(module, function, None)
    if not callable(fn):
        raise ConfigError(f"{option}: {module_name!r} has no function {function!r}.")
    return fn


@dataclasses.dataclass(frozen=True)
class _Text:
    """A file's bytes, equal (and hashed) by their sha256 alone: the key of `_run_file`'s cache."""

    digest: str
    source: bytes = dataclasses.field(compare=False, repr=False)


def _from_file(path: Path, option: str, function: str):
    """The module of a .py file, its code run once per process while the file is unchanged (a check of the config
    and the run that builds from it load the same file: its top-level code, side effects and all, runs once, as an
    installed module's does on import); an edited file is run again. Unchanged means the same bytes: an edit within
    the clock's resolution that keeps the size passed a check of mtime and size (and Python's .pyc cache, which
    checks the same two), so the code run is compiled from the very bytes that were hashed."""
    if not path.is_file() and path.is_absolute():  # a run's config.yaml keeps it so: the run was moved or copied
        raise ConfigError(
            f"{option}: {path} not found. A run keeps the path of its transform's file, not a copy: a run "
            "directory copied to another folder or host needs the file at that path too. Copy the file there, or set "
            f"the option to where the file is now (e.g. {path.name}:{function}, a path relative to the config's "
            "folder)."
        )
    if not path.is_file():
        raise ConfigError(
            f"{option}: {path} not found (a path in a YAML config is relative to its folder, one given as a flag to "
            "the working directory)."
        )
    source = path.read_bytes()
    return _run_file(path.resolve(), _Text(hashlib.sha256(source).hexdigest(), source))


@functools.cache
def _run_file(path: Path, text: _Text):
    """The module of `text`, the bytes read from `path`, run once per (path, sha256), as import runs a module once."""
    spec = importlib.util.spec_from_file_location(f"tunelab_transform_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    exec(compile(text.source, str(path), "exec"), module.__dict__)  # noqa: S102 - the user's file, named by the config
    return module


QUESTION_ROWS = (
    " The rows of a question file (tunelab eval, compare, eval.questions) go through the run's data.transform too, "
    "as its training rows did, so a row holding a question and no answer reaches the function as well: let it "
    "return such a row as it is."
)


def apply_transform(
    records: list[Record], fn: Transform | None, spec: str | None, report: DataReport, questions: bool = False
) -> list[Record]:
    """Each record through fn; a None result (or an empty list) drops the record (counted in the report), a list of
    rows gives each its own record, named by the record's place and its row (`report.Made`), and counted in the
    report. `questions`: the records are a question file's, which the function, written for training rows, may not
    expect (its error says so)."""
    if fn is None:
        return records
    out = []
    for record in records:
        where = location(record.path, record.line)
        try:
            row = fn(dict(record.row))
            if isinstance(row, types.GeneratorType):  # a function that yields its rows
                row = list(row)
        except Exception as exc:
            raised = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise DataError(
                f"{where}: data.transform {spec} raised {raised} on this row. Fix the function, or the row."
                + (QUESTION_ROWS if questions else "")
            ) from None
        except SystemExit as exc:
            raise DataError(f"{where}: data.transform {spec} called sys.exit({exc.code!r}) on this row.") from None
        if row is None or (isinstance(row, (list, tuple)) and not row):
            report.read(record.path)
            report.skip(f"dropped by data.transform {spec}", record.path, record.line)
            continue
        if isinstance(row, dict):
            out.append(Record(record.path, record.line, row))
            continue
        if not isinstance(row, (list, tuple)):
            raise DataError(
                f"{where}: data.transform {spec} returned {article(type(row).__name__)}; it must return the row as a "
                "dict, a list of rows (dicts), or None to drop it."
            )
        if bad := next((k for k, item in enumerate(row, 1) if not isinstance(item, dict)), None):
            raise DataError(
                f"{where}: data.transform {spec} returned a list of {counted(len(row), 'item')} whose item {bad} is "
                f"{article(type(row[bad - 1]).__name__)}; each row it returns must be a dict."
            )
        if len(row) > 1:
            report.made_from += 1
            report.made_rows += len(row)
        out += [
            Record(record.path, Made(record.line, k, len(row)) if len(row) > 1 else record.line, item)
            for k, item in enumerate(row, 1)
        ]
    return out
