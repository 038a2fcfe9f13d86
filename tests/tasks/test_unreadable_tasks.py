"""Rows of dpo and kto, reward, classify and grpo holding characters the tokenizer drops (SmolLM2 has no token for
U+0004 and no unknown token): counted and the first named in the data report, as sft's are; tokens unchanged."""

import json

import pytest

from tunelab.config import load_config
from tunelab.data import render
from tunelab.tasks.classify import CLASSIFY
from tunelab.tasks.kto_data import build_feedback
from tunelab.tasks.preference_data import build_preferences
from tunelab.tasks.prompt_data import build_prompts
from tunelab.tasks.reward import REWARD


def _text_pair(i: int, mark: str = "") -> dict:
    return {
        "chosen": f"Human: What is {i}{mark} + {i}? Assistant: {2 * i}.",
        "rejected": f"Human: What is {i}{mark} + {i}? Assistant: No.",
    }


ROWS = {  # (options, row i, row i holding U+0004 once)
    "dpo text": ({"task": "dpo"}, _text_pair, lambda i: _text_pair(i, "\x04")),
    "dpo chat": (
        {"task": "dpo"},
        lambda i: {"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}.", "rejected": "No."},
        lambda i: {"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}.", "rejected": "No\x04."},
    ),
    "kto": (
        {"task": "dpo", "dpo.loss": "kto"},
        lambda i: {"prompt": f"Question {i}?", "completion": f"Answer {i}.", "label": i % 2 == 0},
        lambda i: {"prompt": f"Question {i}?", "completion": f"Answer\x04 {i}.", "label": i % 2 == 0},
    ),
    "reward": ({"task": "reward"}, _text_pair, lambda i: _text_pair(i, "\x04")),
    "classify": (
        {"task": "classify"},
        lambda i: {"text": f"Message {i}.", "label": "ab"[i % 2]},
        lambda i: {"text": f"Message\x04 {i}.", "label": "ab"[i % 2]},
    ),
    "grpo": (
        {"task": "grpo"},
        lambda i: {"prompt": f"What is {i} + {i}?", "expected": str(2 * i)},
        lambda i: {"prompt": f"What is\x04 {i} + {i}?", "expected": str(2 * i)},
    ),
}


EFFECT = {  # what the summary says each task does with such a row: a training row, an eval row
    "dpo": ("they are trained on without them", "they are evaluated without them"),
    "reward": ("they are trained on without them", "they are evaluated without them"),
    "classify": ("they are scored and trained on without them", "they are scored without them"),
    "grpo": ("the model generates its answers from these prompts without them",) * 2,
}


def _build(options: dict, path, tokenizer, held=None):
    over = options | {"data.train": [str(path)], "data.max_length": 128, "data.eval_fraction": 0.0}
    over |= {"data.eval": str(held)} if held else {}
    cfg = load_config(None, over).config
    if options["task"] == "grpo":
        return build_prompts(cfg, tokenizer, 0, [])
    if options.get("dpo.loss") == "kto":
        return build_feedback(cfg, tokenizer, 0)
    return {"dpo": build_preferences, "reward": REWARD.build_data, "classify": CLASSIFY.build_data}[options["task"]](
        cfg, tokenizer, 0
    )


@pytest.mark.parametrize("kind", list(ROWS))
def test_task_rows_with_dropped_characters_are_counted_and_named(kind, smollm2_tokenizer, tmp_path, monkeypatch):
    """These tasks read their rows in their own code, and a row holding U+0004 went uncounted there."""
    options, row, marked = ROWS[kind]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(marked(i) if i == 2 else row(i)) + "\n" for i in range(6)))
    data = _build(options, path, smollm2_tokenizer)
    unread = data.report.unread
    assert (unread.rows, unread.first, unread.chars) == (1, f"{path}:3", {"U+0004": 1})
    line = (
        "  1 row holds characters the tokenizer drops, having no token for them (U+0004 x1): "
        f"first at {path}:3; {EFFECT[options['task']][0]}"
    )
    assert line in data.report.summary().splitlines()
    monkeypatch.setattr(render, "unreadable", lambda tokenizer: None)
    before = _build(options, path, smollm2_tokenizer)
    assert before.report.unread.rows == 0
    assert [r.input_ids for r in data.train] == [r.input_ids for r in before.train]


@pytest.mark.parametrize("kind", list(ROWS))
def test_each_task_says_what_it_does_with_a_training_and_an_eval_row_holding_them(kind, smollm2_tokenizer, tmp_path):
    """The line said 'they are trained on without them' for every task: grpo's prompts are answered, not trained
    on; classify's inputs are scored by its head; an eval row is evaluated, not trained on."""
    options, row, marked = ROWS[kind]
    train, held = tmp_path / "t.jsonl", tmp_path / "e.jsonl"
    train.write_text("".join(json.dumps(row(i)) + "\n" for i in range(6)))
    held.write_text("".join(json.dumps(marked(i) if i == 1 else row(i)) + "\n" for i in range(4)))
    report = _build(options, train, smollm2_tokenizer, held).report
    assert (report.unread.rows, report.unread.held, report.unread.first) == (1, 1, f"{held}:2")
    assert report.unread.line().endswith(f"first at {held}:2; {EFFECT[options['task']][1]}")
    assert report.unread.line() in report.summary().splitlines()
    train.write_text("".join(json.dumps(marked(i) if i == 4 else row(i)) + "\n" for i in range(6)))
    both = _build(options, train, smollm2_tokenizer, held).report.unread
    clause = EFFECT[options["task"]]
    evaluated = "" if clause[0] == clause[1] else f" (the eval row among them is {clause[1][len('they are ') :]})"
    assert (both.rows, both.held) == (2, 1) and both.line().endswith(f"; {clause[0]}{evaluated}")
