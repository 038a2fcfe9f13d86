"""examples/oasst_threads: an Open-Assistant trees file (one conversation tree a line) read through data.transform
functions that return a list of rows, checked through the real CLI (`tunelab check --data-only`) on the shared
sample of 100 OASST trees."""

import json
from pathlib import Path

import pytest

from tunelab.cli import main
from tunelab.config import DataConfig
from tunelab.data.loader import build_datasets

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "oasst_threads" / "threads.py"
TREES = Path("/work/shared/data/oasst_en_100_trees/en_100_tree.jsonl")
pytestmark = pytest.mark.skipif(not TREES.is_file(), reason="the shared OASST sample is not here")


def _answers(node: dict) -> list[tuple[str, bool]]:
    """(text, no answer below it) of every assistant message kept (not deleted, not failed in review) below `node`."""
    if node.get("deleted") or node.get("review_result") is False:
        return []
    below = [a for r in node.get("replies", []) for a in _answers(r)]
    return ([(node["text"], not below)] if node["role"] == "assistant" else []) + below


def _tree_answers() -> list[tuple[str, bool]]:
    return [a for line in TREES.read_text().splitlines() for a in _answers(json.loads(line)["prompt"])]


def test_threads_make_a_chat_of_every_path_through_the_cli(tiny_overrides, capsys, cli_flags):
    """Every path ends one chat at its last answer (a path that ends with an unanswered prompt too), and the data
    report counts the rows made of the trees."""
    over = tiny_overrides | {
        "data.train": [str(TREES)],
        "data.transform": f"{EXAMPLE}:threads",
        "data.max_length": 1024,
    }
    assert main(["check", *cli_flags(over), "--data-only"]) == 0
    out = capsys.readouterr().out
    data = build_datasets(
        DataConfig(train=[str(TREES)], transform=f"{EXAMPLE}:threads", max_length=1024), _tok(over), 0
    )
    ends = [ex.messages[-1]["content"] for ex in data.examples]
    last = [text for text, last in _tree_answers() if last]
    assert sorted(set(last)) == sorted(set(ends)) and len(ends) == len(set(ends))
    assert all(ex.messages[0]["role"] == "user" for ex in data.examples)
    rows = len(data.examples)
    assert f"data: 1 file, {rows} records ({rows} of them made by data.transform of 100 records)" in out
    assert "en_100_tree.jsonl:1 (data.transform's row 1 of 3)" in out  # the preview names the tree and the row


def test_replies_train_each_answer_once_with_its_history(tiny_overrides):
    over = tiny_overrides | {"data.transform": f"{EXAMPLE}:replies"}
    cfg = DataConfig(train=[str(TREES)], transform=over["data.transform"], max_length=1024)
    data = build_datasets(cfg, _tok(over), 0)
    last = [ex.messages[-1]["content"] for ex in data.examples]
    assert sorted(last) == sorted(text for text, _ in _tree_answers())
    for ex in data.examples:
        assert all(m.get("weight") == 0 for m in ex.messages[:-1] if m["role"] == "assistant")


def test_a_message_without_a_role_is_named_with_file_line_and_place(tiny_overrides, tmp_path, capsys, cli_flags):
    trees = [json.loads(line) for line in TREES.read_text().splitlines()[:2]]
    del trees[1]["prompt"]["replies"][0]["role"]
    path = tmp_path / "trees.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in trees))
    over = tiny_overrides | {"data.train": [str(path)], "data.transform": f"{EXAMPLE}:threads"}
    assert main(["check", *cli_flags(over), "--data-only"]) == 2
    err = capsys.readouterr().err
    assert (
        f"{path}:2: data.transform {EXAMPLE}:threads raised ValueError: prompt.replies[0]: the message has no field 'role'"
        in err
    )


def _tok(over):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(over["model.name"])
