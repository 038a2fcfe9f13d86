"""A data file's bytes read as UTF-8 text, whole (`read_text`), a line at a time (`byte_lines`, `text_lines`) or a
piece at a time (`text_pieces`), so that a large file is never held whole by a reader of lines or of a JSON array. Bytes that are not UTF-8 (another encoding, UTF-16
without a byte order mark, NUL bytes) stop the reader with a `NotText` naming the line and the byte, and where the
text reads as Windows-1252, what it says there."""

from __future__ import annotations

import codecs
import gzip
import io
import itertools
from collections.abc import Iterator
from pathlib import Path

from tunelab.errors import DataError


class NotText(DataError):
    """A data file that is not UTF-8 text (another encoding, NUL bytes), or cannot be read at all."""


def read_text(path: Path) -> str:
    try:
        raw = gzip.open(path, "rb").read() if path.name.lower().endswith(".gz") else path.read_bytes()
        text = raw.decode("utf-8-sig")
        if (at := text.find("\0")) >= 0:  # the line that holds it
            start, end = text.rfind("\n", 0, at) + 1, text.find("\n", at)
            refuse_nul(path, text.count("\n", 0, at) + 1, text[start : end if end >= 0 else len(text)])
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


def refuse_nul(path: Path, line: int, text: str) -> None:
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


def byte_lines(path: Path) -> Iterator[str]:
    """The file's lines as read, without the \n that ends each (only \n ends one: str.splitlines also breaks at
    U+2028, U+2029 and U+0085, which JSON strings may hold unescaped), decoded as UTF-8 one at a time (a BOM at its
    start dropped): a large file is never held whole. A line that is not UTF-8 stops it with `read_text`'s error,
    naming line and byte; one that holds a NUL byte with `refuse_nul`'s."""
    try:
        with _open(path) as f:
            for n, raw in enumerate(f):
                try:
                    line = raw.decode("utf-8-sig" if n == 0 else "utf-8")
                except UnicodeDecodeError:
                    read_text(path)  # raises, naming the line and the byte
                    raise
                refuse_nul(path, n + 1, line)
                yield line.removesuffix("\n")
    except (OSError, EOFError) as exc:
        raise NotText(f"{path}: cannot read the file ({exc}).") from None


def text_lines(path: Path) -> Iterator[str]:
    """The file's lines as the csv module reads them (ending at \n, \r\n or an old Mac's lone \r, kept), decoded
    as UTF-8 as they are read (a BOM at its start dropped); bytes that are not UTF-8 stop it with `read_text`'s
    error, naming line and byte; a line that holds a NUL byte with `refuse_nul`'s."""
    try:
        with _open(path) as f, io.TextIOWrapper(f, encoding="utf-8-sig", newline="") as text:
            for n in itertools.count(1):
                try:
                    line = text.readline()
                except UnicodeDecodeError:
                    read_text(path)  # raises, naming the line and the byte
                    raise
                if not line:
                    return
                refuse_nul(path, n, line)
                yield line
    except (OSError, EOFError) as exc:
        raise NotText(f"{path}: cannot read the file ({exc}).") from None


def text_pieces(path: Path, size: int) -> Iterator[str]:
    """The file's text in pieces of about `size` characters, decoded as UTF-8 as they are read (a BOM at its start
    dropped). Bytes that are not UTF-8 stop it with `read_text`'s error, naming line and byte, and so does a NUL."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    try:
        with _open(path) as f:
            while True:
                raw = f.read(size)
                try:
                    text = decoder.decode(raw, final=not raw)
                except UnicodeDecodeError:
                    read_text(path)  # raises, naming the line and the byte
                    raise
                if "\0" in text:
                    read_text(path)  # raises, naming the line
                if text:
                    yield text
                if not raw:
                    return
    except (OSError, EOFError) as exc:
        raise NotText(f"{path}: cannot read the file ({exc}).") from None
