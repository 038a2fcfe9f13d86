"""Texts a dpo, reward or classify run reads whole, and grpo prompts given as text, holding chat-template markup: noted
as sft's text examples are."""

import json

import pytest

from tunelab.config import load_config
from tunelab.tasks.classify import CLASSIFY
from tunelab.tasks.preference_data import build_preferences
from tunelab.tasks.reward import REWARD

BUILD = {"dpo": build_preferences, "reward": REWARD.build_data, "classify": CLASSIFY.build_data}


def _row(task: str, i: int, wrap=lambda text: text) -> dict:
    if task == "classify":
        return {"text": wrap(f"Message {i}."), "label": "ab"[i % 2]}
    return {
        "chosen": wrap(f"Human: What is {i} + {i}? Assistant: {2 * i}."),
        "rejected": wrap(f"Human: What is {i} + {i}? Assistant: No."),
    }


def _notes(task: str, tokenizer, path, rows) -> list[str]:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    over = {"task": task, "data.train": [str(path)], "data.max_length": 128, "data.eval_fraction": 0.0}
    return BUILD[task](load_config(None, over).config, tokenizer, 0).report.notes


@pytest.mark.parametrize(
    ("task", "what"), [("dpo", "text pairs"), ("reward", "text pairs"), ("classify", "text inputs")]
)
def test_task_texts_holding_chat_markup_are_noted(task, what, smollm2_tokenizer, tmp_path):
    """sft noted text examples already rendered by a chat template; these tasks read their texts in their own code
    and said nothing, the markup scored as plain characters. Document tokens are no chat markup there either."""
    chatml = lambda text: f"<|im_start|>user\n{text}<|im_end|>"  # noqa: E731
    rows = [_row(task, i) for i in range(5)] + [_row(task, 5, chatml)]
    rows[2] = _row(task, 2, lambda text: text + "<|endoftext|>")
    path = tmp_path / "t.jsonl"
    (note,) = [n for n in _notes(task, smollm2_tokenizer, path, rows) if "chat-template markup" in n]
    assert note.startswith(f"1 of the 6 {what} hold chat-template markup or special-token text")
    assert f"(e.g. '<|im_start|>' at {path}:6)" in note and "as chats" in note and "writes the markup" in note
    assert "loss is on the answers" not in note  # sft's wording, no fit here
    rows[5] = _row(task, 5)
    assert not [n for n in _notes(task, smollm2_tokenizer, path, rows) if "markup" in n]


def test_grpo_prompts_given_as_text_holding_chat_markup_are_noted(smollm2_tokenizer, tmp_path):
    """A grpo prompt is the user's turn, wrapped by the template; one already written in a template (Llama 2's
    [INST], not special to this tokenizer) was asked inside it without a word, where the other tasks note such texts.
    The text of one of the tokenizer's special tokens stays refused, as in every chat."""
    from tunelab.errors import DataError
    from tunelab.tasks.prompt_data import build_prompts

    rows = [{"prompt": f"What is {i} + {i}?", "expected": str(2 * i)} for i in range(6)]
    rows[4]["prompt"] = "[INST] What is 4 + 4? [/INST]"
    rows.append({"messages": [{"role": "user", "content": "What is 6 + 6?"}], "expected": "12"})
    path = tmp_path / "p.jsonl"

    def notes(rows):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        over = {"task": "grpo", "data.train": [str(path)], "data.max_length": 128, "data.eval_fraction": 0.0}
        return build_prompts(load_config(None, over).config, smollm2_tokenizer, 0, []).report.notes

    (note,) = [n for n in notes(rows) if "chat-template markup" in n]
    assert note.startswith("1 of the 7 prompts hold chat-template markup or special-token text")
    assert f"(e.g. '[INST]' at {path}:5)" in note and "the user's text alone" in note
    rows[4]["prompt"] = "What is 4 + 4?"
    assert not [n for n in notes(rows) if "markup" in n]
    rows[4]["prompt"] = "<|im_start|>user\nWhat is 4 + 4?<|im_end|>"
    with pytest.raises(DataError, match=r"p\.jsonl:5: the special token text '<\|im_start\|>'"):
        notes(rows)
