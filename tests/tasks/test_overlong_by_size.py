"""Rows of the head tasks (classify, reward), dpo chat and text pairs, kto rows and grpo prompts too long for
data.max_length by their size alone (data/size_bound.py): with data.overlong=drop they are dropped without being tokenized, with the report they had
when every row was tokenized, but for their lengths, which are the fewest tokens they can have."""

import json
from types import SimpleNamespace

import pytest

from tunelab.checks.grpo import room_item
from tunelab.checks.heads import length_item
from tunelab.config import load_config
from tunelab.data import leading
from tunelab.tasks import head_data, kto_data, preference_data
from tunelab.tasks.classify import CLASSIFY
from tunelab.tasks.kto_data import build_feedback
from tunelab.tasks.preference_data import build_preferences
from tunelab.tasks.prompt_data import build_prompts
from tunelab.tasks.reward import REWARD

from ..data.counting import Counting

HUGE = ("Skerry's ferry leaves at 9:40, 12:15 and 17:05; bikes ride free. " * 4000)[:200_000]


def _config(task: str, path, max_length: int):
    options = {"task": "dpo", "dpo.loss": "kto"} if task == "kto" else {"task": "dpo" if task == "dpo_text" else task}
    return load_config(None, options | {"data.train": [str(path)], "data.max_length": max_length}).config


def _classify(tokenizer, path):
    return CLASSIFY.build_data(_config("classify", path, 64), tokenizer, 0)


def _reward(tokenizer, path):
    return REWARD.build_data(_config("reward", path, 64), tokenizer, 0)


def _dpo(tokenizer, path):
    return build_preferences(_config("dpo", path, 64), tokenizer, 0)


def _dpo_text(tokenizer, path):
    return build_preferences(_config("dpo_text", path, 64), tokenizer, 0)


def _kto(tokenizer, path):
    return build_feedback(_config("kto", path, 64), tokenizer, 0)


def _grpo(tokenizer, path):
    return build_prompts(_config("grpo", path, 64), tokenizer, 0, [])


def _rows(task: str) -> list[dict]:
    """Six rows, the second one of HUGE size."""
    if task == "classify":
        rows = [{"text": f"Ferry {i} was late.", "label": ["late", "on time"][i % 2]} for i in range(6)]
        rows[1]["text"] = HUGE
    elif task == "dpo":  # a chat pair: the prompt as the user's turn, each answer as the assistant's
        rows = [{"prompt": f"When is ferry {i}?", "chosen": "At 9:40.", "rejected": "No idea."} for i in range(6)]
        rows[1]["chosen"] = HUGE
    elif task == "dpo_text":  # two whole texts sharing their prompt, HH-RLHF's way
        rows = [
            {"chosen": f"Human: When is ferry {i}?\n\nAssistant: At 9:40.", "rejected": f"Human: When is ferry {i}?"}
            for i in range(6)
        ]
        for row in rows:
            row["rejected"] += "\n\nAssistant: No idea."
        rows[1]["chosen"] = "Human: When is ferry 1?\n\nAssistant: " + HUGE
    elif task == "kto":  # the huge completion is also the next row's mismatched one, cut to max_length
        rows = [{"prompt": f"When is ferry {i}?", "completion": f"At 9:{i}0.", "label": i % 2 == 0} for i in range(6)]
        rows[1]["completion"] = HUGE
    elif task == "reward":
        rows = [{"prompt": f"When is ferry {i}?", "chosen": "At 9:40.", "rejected": "No idea."} for i in range(6)]
        rows[1]["rejected"] = HUGE
    else:
        rows = [{"prompt": f"When does ferry {i} leave?"} for i in range(6)]
        rows[1]["prompt"] = HUGE
    return rows


@pytest.mark.parametrize(
    "task, build",
    [
        ("classify", _classify),
        ("reward", _reward),
        ("dpo", _dpo),
        ("dpo_text", _dpo_text),
        ("kto", _kto),
        ("grpo", _grpo),
    ],
)
def test_a_row_too_long_by_its_size_is_dropped_untokenized_with_the_same_report(
    task, build, smollm2_tokenizer, tmp_path, monkeypatch
):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in _rows(task)))
    counting = Counting(smollm2_tokenizer)
    data = build(counting, path)
    report = data.report
    assert max(counting.sizes) < 1000  # the huge row never reached the tokenizer
    [(reason, skip)] = report.skips.items()
    assert "max_length (64 tokens" in reason and skip.locations == [f"{path}:2"]
    assert report.lengths.at_least == 1 and report.lengths.max > 200_000 / 81
    for module in (head_data, preference_data, kto_data, leading):  # every row tokenized whole, as before
        monkeypatch.setattr(module, "size_bound", lambda tokenizer: None)
    before = build(smollm2_tokenizer, path).report
    now, then = report.to_dict(), before.to_dict()
    assert {k: v for k, v in now.items() if k != "lengths"} == {k: v for k, v in then.items() if k != "lengths"}
    assert report.losses() == before.losses()
    assert before.lengths.at_least == 0 and before.lengths.max > report.lengths.max
    assert now["lengths"]["count"] == then["lengths"]["count"]
    # tunelab check's line of the lengths says which are lower bounds
    item = (room_item if task == "grpo" else length_item)(_config(task, path, 64), SimpleNamespace(data=data))
    assert (
        "over data.max_length by size alone" in item.summary
        if task == "grpo"
        else "over it by size alone" in item.summary
    )
