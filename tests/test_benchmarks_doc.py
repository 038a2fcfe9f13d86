"""BENCHMARKS.md names the scripts and records behind its figures: every one it names in backticks exists, or is
marked "(since removed)" right after its backticks (a historical record keeps the command that ran)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
SPAN = re.compile(r"`([^`\n]+)`")
PATH = re.compile(r"(?<![\w./-])((?:scripts|benchmarks)/[\w./-]*)")
BARE = re.compile(r"^([\w-]+\.(?:py|sh))\b")  # a script named alone (`train_bench.py --shape ...`)
REMOVED = re.compile(r"\s*\(since\s+removed\b")


def _named(text: str = TEXT) -> list[tuple[str, int, bool]]:
    """(path, line, marked since removed) for each script or record path a backtick span of `text` names."""
    found = []
    for span in SPAN.finditer(text):
        line = text.count("\n", 0, span.start()) + 1
        marked = bool(REMOVED.match(text, span.end()))
        for path in PATH.findall(span.group(1)):
            found.append((path.rstrip("."), line, marked))
        if bare := BARE.match(span.group(1)):
            found.append((bare.group(1), line, marked))
    return found


def _exists(path: str) -> bool:
    if "/" in path:
        return (ROOT / path).exists()
    return any(next((ROOT / folder).rglob(path), None) for folder in ("scripts", "benchmarks", "tests"))


def test_every_script_and_record_benchmarks_names_exists_or_is_marked_removed():
    named = _named()
    assert len(named) > 50  # the spans are read at all
    missing = [f"line {line}: {path}" for path, line, marked in named if not marked and not _exists(path)]
    assert not missing, f"BENCHMARKS.md names files that do not exist (mark them '(since removed)'): {missing}"


def test_a_file_marked_removed_is_gone():
    """A mark left on a file that came back, or put on one that exists, says what is not so."""
    wrongly = [f"line {line}: {path}" for path, line, marked in _named() if marked and _exists(path)]
    assert not wrongly, wrongly


def test_the_reader_finds_a_missing_script_and_the_mark():
    text = "ran `bash scripts/gone.sh` here,\n`scripts/old.py` (since\nremoved) there, `gone_bench.py --x`."
    assert _named(text) == [("scripts/gone.sh", 1, False), ("scripts/old.py", 2, True), ("gone_bench.py", 3, False)]
    assert not _exists("scripts/gone.sh") and not _exists("gone_bench.py") and _exists("train_bench.py")
