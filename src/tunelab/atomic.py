"""Writes that never leave a half-written file: write beside the target under a temporary name, then rename.

`os.replace` is atomic on POSIX and Windows within one filesystem, so a reader (or a resumed run after a crash) sees
the old content or the new one, never a mixture. Every file tunelab writes into a run directory goes through here.
"""

from __future__ import annotations

import json
import os
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
