"""Writing a small data file for the readers' tests."""

from pathlib import Path


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)
