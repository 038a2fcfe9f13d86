"""Writes that never leave a half-written file: write beside the target under a temporary name, then rename.

`os.replace` is atomic on POSIX and Windows within one filesystem, so a reader (or a resumed run after a crash) sees
the old content or the new one, never a mixture. Every file tunelab writes into a run directory goes through here,
and every folder it writes whole (a merged model, a converted GGUF) is built in `scratch_folder`.

A write the system refuses (a full disk, a read-only file or filesystem) is a `WriteFailed` naming the file, the
system's reason and what to do (`write_failed`), never a traceback; what the write would have replaced is unchanged.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from tunelab.errors import WriteFailed


def temporary_sibling(path: Path) -> Path:
    """Where `path` is written before the rename: same folder (same filesystem), hidden, recognisable."""
    return path.with_name(f".tmp-{path.name}")


def write_failed(path: Path, exc: OSError) -> WriteFailed:
    """The error for a write of `path` that the system refused: the file, the system's reason and what to do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        todo = "free some space on its disk (df -h shows what is left)"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        todo = "make it writable, or write somewhere else"
    else:
        todo = "check the disk and the folder"
    return WriteFailed(
        f"{path}: cannot be written ({exc.strerror or exc}). Its earlier content, if any, is unchanged; {todo}, then "
        "run the command again."
    )


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**28 else f"{n / 2**20:.1f} MB"


def require_space(target: Path, needed: int, what: str) -> None:
    """WriteFailed unless the disk `target` is written to (its nearest existing folder's) has `needed` bytes free:
    the commands that write gigabytes after minutes of work say so before they start, not with a half-written file
    (numpy's short write names no errno, so `write_failed` could not say the disk was full)."""
    folder = next((f for f in (target.parent, *target.parent.parents) if f.exists()), None)
    if folder is None or not folder.is_dir():
        return
    try:
        free = shutil.disk_usage(folder).free
    except OSError:  # a filesystem that does not say: the write itself will tell
        return
    if free < needed:
        raise WriteFailed(
            f"{target}: {what} needs about {_size(needed)} on its disk, which has {_size(free)} free; free some space "
            "(df -h shows what is left) or write it elsewhere. Nothing was written."
        )


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """For a file written in place (metrics.jsonl is appended to): an OSError in the block is `write_failed`'s."""
    try:
        yield
    except OSError as exc:
        raise write_failed(path, exc) from None


def _replace(path: Path, write: Callable[[Path], Any]) -> Path:
    tmp = temporary_sibling(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        with suppress(OSError):  # on a read-only filesystem there is nothing to remove, and removing fails
            tmp.unlink(missing_ok=True)
        raise write_failed(path, exc) from None
    return path


def check_can_write(path: Path) -> None:
    """`write_failed`'s error unless a file or folder can be written at `path` now, found by creating and removing its
    temporary sibling as the write will (a read-only folder or filesystem refuses it, for root too): the commands that
    work for minutes before they write ask first. Where `path`'s folder does not exist yet, the nearest folder above
    it that does is tried (the folders are made there); a file in the way is for the caller to refuse."""
    folder = next((f for f in (path.parent, *path.parent.parents) if f.exists()), None)
    if folder is None or not folder.is_dir():
        return
    tmp = folder / temporary_sibling(path).name
    try:
        tmp.write_bytes(b"")
        tmp.unlink()
    except OSError as exc:
        raise write_failed(path, exc) from None


def write_text(path: str | Path, text: str) -> Path:
    return _replace(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes(path: str | Path, data: bytes) -> Path:
    return _replace(Path(path), lambda tmp: tmp.write_bytes(data))


def write_json(path: str | Path, value: Any) -> Path:
    """JSON with two-space indents and non-ASCII kept as it is (answers in any language stay readable)."""
    return write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def new_file_mode(folder: Path) -> int:
    """The permissions a file created in `folder` now gets: 0o666 less the user's umask."""
    probe = folder / ".tmp-mode-probe"
    probe.touch()
    file_mode = probe.stat().st_mode & 0o777
    probe.unlink()
    return file_mode


def ordinary_permissions(folder: Path) -> None:
    """Give `folder` and everything in it the permissions a file or folder created now would get (the user's umask):
    temporary folders are made 0700 and some writers leave 0600 files, which other users and tools cannot read."""
    file_mode = new_file_mode(folder)
    dir_mode = file_mode | (file_mode & 0o444) >> 2  # whoever may read may also list: r-- -> r-x
    for root, dirs, files in os.walk(folder):
        for name in files:
            os.chmod(os.path.join(root, name), file_mode)
        for name in dirs:
            os.chmod(os.path.join(root, name), dir_mode)
    os.chmod(folder, dir_mode)


ASIDE_PREFIX = ".old-"  # replace_folder's name for the old folder: .old-NAME-PID


def replace_folder(scratch: Path, target: Path) -> None:
    """Move a finished scratch folder onto `target`; an existing target is moved aside first and deleted after, so
    `target` is the old folder or the new one at every moment, never a mixture. A process killed in between leaves
    the old folder under its `ASIDE_PREFIX` name (`tunelab cache` lists and clears those of the conversion cache)."""
    old = None
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    elif target.exists():
        old = target.with_name(f"{ASIDE_PREFIX}{target.name}-{os.getpid()}")
        os.replace(target, old)
    os.replace(scratch, target)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


@contextmanager
def scratch_folder(target: str | Path, replace: bool = True) -> Iterator[Path]:
    """A new hidden folder beside `target` to build it in. When the block ends normally the folder gets ordinary
    permissions and is renamed onto `target` (`replace`: an existing target is replaced; otherwise the rename fails
    with OSError when another writer got there first); when it raises, the folder is deleted. Any other OSError (a full
    disk while the block writes) is `write_failed`'s, naming `target`."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{target.name}-"))
    except OSError as exc:
        raise write_failed(target, exc) from None
    try:
        with writing(target):
            yield scratch
            ordinary_permissions(scratch)
            if replace:
                replace_folder(scratch, target)
        if not replace:
            os.replace(scratch, target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
