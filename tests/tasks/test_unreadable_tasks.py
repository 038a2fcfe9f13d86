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


def _build(options: dict, path, tokenizer):
    over = options | {"data.train": [str(path)], "data.max_length": 128, "data.eval_fraction": 0.0}
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
        f"first at {path}:3; they are trained on without them"
    )
    assert line in data.report.summary().splitlines()
    monkeypatch.setattr(render, "unreadable", lambda tokenizer: None)
    before = _build(options, path, smollm2_tokenizer)
    assert before.report.unread.rows == 0
    assert [r.input_ids for r in data.train] == [r.input_ids for r in before.train]
