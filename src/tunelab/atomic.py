"""Writes that never leave a half-written file: write beside the target under a temporary name, then rename.

`os.replace` is atomic on POSIX and Windows within one filesystem, so a reader (or a resumed run after a crash) sees
the old content or the new one, never a mixture. Every file tunelab writes into a run directory goes through here,
and every folder it writes whole (a merged model, a converted GGUF) is built in `scratch_folder`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temporary_sibling(path: Path) -> Path:
    """Where `path` is written before the rename: same folder (same filesystem), hidden, recognisable."""
    return path.with_name(f".tmp-{path.name}")


def write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    tmp = temporary_sibling(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    tmp = temporary_sibling(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def write_json(path: str | Path, value: Any) -> Path:
    """JSON with two-space indents and non-ASCII kept as it is (answers in any language stay readable)."""
    return write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def ordinary_permissions(folder: Path) -> None:
    """Give `folder` and everything in it the permissions a file or folder created now would get (the user's umask):
    temporary folders are made 0700 and some writers leave 0600 files, which other users and tools cannot read."""
    probe = folder / ".tmp-mode-probe"
    probe.touch()
    file_mode = probe.stat().st_mode & 0o777  # 0o666 less the umask
    probe.unlink()
    dir_mode = file_mode | (file_mode & 0o444) >> 2  # whoever may read may also list: r-- -> r-x
    for root, dirs, files in os.walk(folder):
        for name in files:
            os.chmod(os.path.join(root, name), file_mode)
        for name in dirs:
            os.chmod(os.path.join(root, name), dir_mode)
    os.chmod(folder, dir_mode)


def replace_folder(scratch: Path, target: Path) -> None:
    """Move a finished scratch folder onto `target`; an existing target is moved aside first and deleted after, so
    `target` is the old folder or the new one at every moment, never a mixture."""
    old = None
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    elif target.exists():
        old = target.with_name(f".old-{target.name}-{os.getpid()}")
        os.replace(target, old)
    os.replace(scratch, target)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


@contextmanager
def scratch_folder(target: str | Path, replace: bool = True) -> Iterator[Path]:
    """A new hidden folder beside `target` to build it in. When the block ends normally the folder gets ordinary
    permissions and is renamed onto `target` (`replace`: an existing target is replaced; otherwise the rename fails
    with OSError when another writer got there first); when it raises, the folder is deleted."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{target.name}-"))
    try:
        yield scratch
        ordinary_permissions(scratch)
        if replace:
            replace_folder(scratch, target)
        else:
            os.replace(scratch, target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
