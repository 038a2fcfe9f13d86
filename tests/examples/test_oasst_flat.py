"""examples/oasst_threads/flat_to_trees.py: a flat OASST message table (one message a row, as the oasst1 parquet of
the Hugging Face hub holds it) rebuilt into the trees file that threads.py reads. The flat tables here are made from
the shared sample of 100 OASST trees, so the rebuilt trees can be compared with the trees they came from."""

import json
import random
import runpy
from pathlib import Path

import pytest

from tunelab.cli import main
from tunelab.errors import counted

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "oasst_threads"
TREES = Path("/work/shared/data/oasst_en_100_trees/en_100_tree.jsonl")
pytestmark = pytest.mark.skipif(not TREES.is_file(), reason="the shared OASST sample is not here")


def _trees() -> list[dict]:
    return [json.loads(line) for line in TREES.read_text().splitlines()]


def _flat(trees: list[dict]) -> list[dict]:
    """One row a message, as the hub's oasst1 table gives them: the tree's id and state on every row, a null
    parent_id on the first prompt, no nesting."""
    rows = []

    def walk(node: dict, tree: dict) -> None:
        rows.append(
            {k: v for k, v in node.items() if k != "replies"}
            | {"parent_id": node.get("parent_id"), "message_tree_id": tree["message_tree_id"]}
            | {"tree_state": tree["tree_state"]}
        )
        for reply in node["replies"]:
            walk(reply, tree)

    for tree in trees:
        walk(tree["prompt"], tree)
    return rows


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _convert(*args: str) -> int:
    return runpy.run_path(str(EXAMPLE / "flat_to_trees.py"))["main"](list(args))


def _chats(path: Path, name: str = "threads") -> list:
    fn = runpy.run_path(str(EXAMPLE / "threads.py"))[name]
    return [chat for line in path.read_text().splitlines() for chat in fn(json.loads(line))]


def test_a_flat_table_becomes_the_trees_it_was_made_of(tmp_path, capsys):
    out = tmp_path / "trees.jsonl"
    assert _convert(_write(tmp_path / "flat.jsonl", _flat(_trees())), str(out)) == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == _trees()
    assert capsys.readouterr().out == f"{out}: 100 trees of 1167 messages\n"


def test_a_shuffled_parquet_table_gives_the_same_chats(tmp_path):
    """The rows of a table in any order (here a parquet file, as the hub ships oasst1), ranked replies by rank."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _flat(_trees())
    random.Random(0).shuffle(rows)
    columns = sorted({k for r in rows for k in r if k != "emojis"})  # emojis: objects of varying keys
    table = pa.Table.from_pylist([{k: r.get(k) for k in columns} for r in rows])
    pq.write_table(table, tmp_path / "flat.parquet")
    out = tmp_path / "trees.jsonl"
    assert _convert(str(tmp_path / "flat.parquet"), str(out)) == 0
    rebuilt = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(t["message_tree_id"] for t in rebuilt) == sorted(t["message_tree_id"] for t in _trees())
    for tree in rebuilt:
        node = tree["prompt"]
        while node["replies"]:  # the first reply of each message is its best ranked one
            ranks = [r["rank"] for r in node["replies"] if r["rank"] is not None]
            assert ranks == sorted(ranks) and (not ranks or node["replies"][0]["rank"] == ranks[0])
            node = node["replies"][0]
    key = lambda chat: json.dumps(chat, sort_keys=True)  # noqa: E731
    assert sorted(map(key, _chats(out))) == sorted(map(key, _chats(TREES)))


def test_the_rebuilt_trees_train_through_the_cli(tmp_path, tiny_overrides, capsys, cli_flags):
    out = tmp_path / "trees.jsonl"
    assert _convert(_write(tmp_path / "flat.jsonl", _flat(_trees()[:10])), str(out)) == 0
    capsys.readouterr()
    over = tiny_overrides | {"data.train": [str(out)], "data.transform": f"{EXAMPLE / 'threads.py'}:threads"}
    assert main(["check", *cli_flags(over | {"data.max_length": 1024}), "--data-only"]) == 0
    chats = len(_chats(out))
    assert f"data: 1 file, {chats} records ({chats} of them made by data.transform of 10 records)" in (
        capsys.readouterr().out
    )


def test_bad_rows_are_named_and_orphans_counted(tmp_path, capsys):
    rows = _flat(_trees()[:2])
    flat = tmp_path / "flat.jsonl"
    del rows[3]["role"]
    assert _convert(_write(flat, rows), str(tmp_path / "a.jsonl")) == 2
    assert f"{flat}:4: the row has no field 'role'" in capsys.readouterr().err
    rows = _flat(_trees()[:2])
    assert _convert(_write(flat, rows + [rows[5]]), str(tmp_path / "b.jsonl")) == 2
    assert f"{flat}:{len(rows) + 1}: message id {rows[5]['message_id']!r} is given twice (first at {flat}:6)" in (
        capsys.readouterr().err
    )
    gone = next(r for t in _trees()[:2] for r in t["prompt"]["replies"] if r["replies"])  # an answer, answered
    size = len(_flat([{"prompt": gone, "message_tree_id": "", "tree_state": ""}]))
    at = next(i for i, r in enumerate(rows) if r["message_id"] == gone["message_id"])
    kept = rows[:at] + rows[at + 1 :]  # its replies lose their parent
    out = tmp_path / "c.jsonl"
    assert _convert(_write(flat, kept), str(out)) == 0
    std = capsys.readouterr()
    assert std.out == f"{out}: 2 trees of {len(rows) - size} messages\n"
    assert std.err.startswith(
        f"left out {size - 1} messages that no first prompt leads to: {counted(len(gone['replies']), 'message')} whose "
        f"parent is not in the table, with the replies below (e.g. {flat}:{at + 1}, parent {gone['message_id']!r})"
    )
    assert _convert(str(flat), str(out)) == 2
    assert f"{out}: the file exists; remove it or name another, nothing is overwritten." in capsys.readouterr().err


def test_a_csv_table_gives_the_same_chats(tmp_path):
    """A csv file's values are text: a blank parent_id starts a tree, and 'False' in `deleted` is false."""
    import csv

    rows = _flat(_trees()[:10])
    columns = ["message_id", "parent_id", "role", "text", "rank", "deleted", "review_result", "message_tree_id"]
    with (tmp_path / "flat.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "trees.jsonl"
    assert _convert(str(tmp_path / "flat.csv"), str(out)) == 0
    trees = tmp_path / "ten.jsonl"
    trees.write_text("".join(line + "\n" for line in TREES.read_text().splitlines()[:10]))
    key = lambda chat: json.dumps(chat, sort_keys=True)  # noqa: E731
    assert sorted(map(key, _chats(out))) == sorted(map(key, _chats(trees)))
    first = json.loads(out.read_text().splitlines()[0])["prompt"]
    assert _chats(out) and first["deleted"] is False and first["review_result"] is True  # text 'False' would drop all
