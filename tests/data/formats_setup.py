"""Converting rows written inline, for the format tests."""

from tunelab.data.formats import to_examples
from tunelab.data.report import DataReport
from tunelab.data.sources import Record


def convert(rows, fmt="auto", fields=None, system=None, path="d.jsonl"):
    """Rows as records of one file, converted; the examples and the report of what was skipped or noted."""
    report = DataReport()
    records = [Record(path, i + 1, row) for i, row in enumerate(rows)]
    return to_examples(records, fmt, fields or {}, system, report), report


USER_A = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
