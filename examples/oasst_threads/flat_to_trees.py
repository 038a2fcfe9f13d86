"""Rebuild Open-Assistant conversation trees from a flat message table, for `threads.py`.

The oasst1 and oasst2 releases on the Hugging Face hub ship each split as a flat table (parquet): one message a row,
with `message_id`, `parent_id` (null for the first prompt of a tree), `role`, `text`, `message_tree_id`,
`tree_state`, `rank` and more. One row holds one message, so no data.transform, which sees a row at a time, can make a
conversation of it. This script writes the trees file that `threads.py` reads (one tree a line, as OA exports it):

    python examples/oasst_threads/flat_to_trees.py train-00000-of-00001.parquet oasst1_train.trees.jsonl

The table is read as tunelab reads data (parquet, jsonl, json, csv; gzipped too; a csv file's `deleted`,
`review_result` and `synthetic`, text there, are read as true or false). Each message keeps its columns but
`message_tree_id` and `tree_state`, which the tree holds once, and a null `parent_id`; its replies follow it under
`replies`, ranked ones first in the order of their `rank`, then the others in the order of the table. A row without
`message_id`, `parent_id`, `role` or `text`, or a message id given twice, stops the script (exit 2) naming the file,
the row and the field. A message whose parent is not in the table (a table filtered by language, or rows of
another split) is left out with its replies, counted, and the first of them named on stderr. An existing output
file is not overwritten.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
from pathlib import Path

from tunelab.atomic import write_bytes
from tunelab.data.report import location
from tunelab.data.sources import Record, read_records
from tunelab.errors import DataError, TunelabError, counted

REQUIRED = ("message_id", "parent_id", "role", "text")
TREE_FIELDS = ("message_tree_id", "tree_state")  # what the tree holds once, not each message
FLAGS = ("deleted", "review_result", "synthetic")  # what threads.py reads as true or false; a csv file gives text


def _plain(value):
    """The value as JSON writes it: a NaN (how pandas writes a missing number) is null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _message_id(record: Record, field: str) -> str | None:
    """The id in `field` as text; None for a parent_id that is null or blank (a csv file's empty cell): a first prompt."""
    value = _plain(record.row[field])
    if field == "parent_id" and (value is None or (isinstance(value, str) and not value.strip())):
        return None
    if not isinstance(value, str | int) or isinstance(value, bool) or not str(value).strip():
        raise DataError(f"{location(record.path, record.line)}: field '{field}' must be a message id, got {value!r}.")
    return str(value)


def _rank(value) -> float | None:
    """A reply's rank as a number (a csv file gives it as text), or None for an unranked one."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        rank = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(rank) else rank


def build_trees(records: list[Record]) -> tuple[list[dict], list[Record]]:
    """The trees of the messages (one dict a tree: message_tree_id, tree_state, prompt), in the order of their first
    prompts in the table, and the records left out: those whose parent is not among them, and their replies."""
    by_id: dict[str, Record] = {}
    replies: dict[str | None, list[Record]] = {}
    for record in records:
        where = location(record.path, record.line)
        if missing := [field for field in REQUIRED if field not in record.row]:
            has = ", ".join(map(str, record.row)) or "none"
            raise DataError(
                f"{where}: the row has no field '{missing[0]}' (it has {has}); a flat OASST message table gives "
                f"every message {', '.join(REQUIRED)}."
            )
        key = _message_id(record, "message_id")
        if key in by_id:
            first = by_id[key]
            raise DataError(
                f"{where}: message id {key!r} is given twice (first at {location(first.path, first.line)})."
            )
        by_id[key] = record
        replies.setdefault(_message_id(record, "parent_id"), []).append(record)

    def ranked(found: list[Record]) -> list[Record]:  # ranked replies by rank, then the others, in table order
        rank = [_rank(r.row.get("rank")) for r in found]
        order = sorted(range(len(found)), key=lambda i: (rank[i] is None, rank[i] or 0.0, i))
        return [found[i] for i in order]

    def message(record: Record) -> dict:
        node = {k: _plain(v) for k, v in record.row.items() if k not in TREE_FIELDS}
        for flag in FLAGS:
            if isinstance(node.get(flag), str) and node[flag].strip().lower() in ("true", "false", ""):
                node[flag] = {"true": True, "false": False}.get(node[flag].strip().lower())
        if _message_id(record, "parent_id") is None:
            del node["parent_id"]
        node["replies"] = [message(r) for r in ranked(replies.get(str(record.row["message_id"]), []))]
        return node

    trees = []
    for root in replies.get(None, []):
        tree = {field: _plain(root.row[field]) for field in TREE_FIELDS if field in root.row}
        tree.setdefault("message_tree_id", str(root.row["message_id"]))
        trees.append(tree | {"prompt": message(root)})
    reached = set()
    stack = [str(r.row["message_id"]) for r in replies.get(None, [])]
    while stack:
        key = stack.pop()
        reached.add(key)
        stack += [str(r.row["message_id"]) for r in replies.get(key, [])]
    return trees, [r for key, r in by_id.items() if key not in reached]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", help="the flat message table (.parquet, .jsonl, .json or .csv; gzipped too)")
    parser.add_argument("out", help="the trees file to write (.jsonl, or .jsonl.gz)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        if out.exists():
            raise DataError(f"{out}: the file exists; remove it or name another, nothing is overwritten.")
        records = read_records([args.table])
        trees, left = build_trees(records)
        if not trees:
            raise DataError(f"{args.table}: no message has a null parent_id: no tree starts in the table.")
        text = "".join(json.dumps(tree, ensure_ascii=False, default=str) + "\n" for tree in trees).encode()
        write_bytes(out, gzip.compress(text, mtime=0) if out.name.lower().endswith(".gz") else text)
    except TunelabError as exc:
        print(f"flat_to_trees: {exc}", file=sys.stderr)
        return 2
    print(f"{out}: {counted(len(trees), 'tree')} of {counted(len(records) - len(left), 'message')}")
    if left:
        ids = {str(r.row["message_id"]) for r in records}
        orphans = [r for r in left if str(r.row["parent_id"]) not in ids]
        first = orphans[0] if orphans else left[0]
        why = (
            f"{counted(len(orphans), 'message')} whose parent is not in the table, with the replies below"
            if orphans
            else "messages that are their own ancestors"
        )
        print(
            f"left out {counted(len(left), 'message')} that no first prompt leads to: {why} (e.g. "
            f"{location(first.path, first.line)}, parent {first.row['parent_id']!r})",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
