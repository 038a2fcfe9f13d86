"""The prompts of task grpo (`tasks/prompt_data.py`): what a row's prompt is, and the rows refused."""

import json

import pytest

from tunelab.config import load_config
from tunelab.errors import DataError
from tunelab.tasks.prompt_data import build_prompts


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _build(tokenizer, train, **over):
    cfg = load_config(None, {"task": "grpo", "data.train": [train], "data.max_length": 128} | over).config
    return build_prompts(cfg, tokenizer, 0, [])


def test_an_eval_file_may_give_the_prompt_under_its_own_name(smollm2_tokenizer, tmp_path):
    """With data.fields {prompt: q}, an eval file whose column is 'prompt' was read (as every task's eval file may
    be) and then stopped the run with a bare StopIteration traceback, looking for its column under 'q' alone."""
    train = _write(tmp_path / "t.jsonl", [{"q": f"What is {i} + {i}?"} for i in range(4)])
    held = _write(tmp_path / "e.jsonl", [{"prompt": "What is 9 + 9?"}])
    data = _build(smollm2_tokenizer, train, **{"data.fields": {"prompt": "q"}, "data.eval": held})
    assert [r.prompt for r in data.eval] == ["What is 9 + 9?"]
    assert [r.prompt for r in data.train][:1] == ["What is 0 + 0?"]


def test_a_chat_that_ends_with_an_empty_answer_is_named_as_such(smollm2_tokenizer, tmp_path):
    """It was called an empty prompt, though its question was there."""
    turns = [{"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": ""}]
    train = _write(tmp_path / "t.jsonl", [{"messages": turns}])
    with pytest.raises(DataError, match=r"t\.jsonl:1: field 'messages': the prompt's chat ends with the assistant's"):
        _build(smollm2_tokenizer, train)


def test_prompts_that_leave_less_room_than_max_new_tokens_are_noted(smollm2_tokenizer, tmp_path):
    """Their sampled answers were cut to data.max_length and scored so, step after step, without a word at training
    (only tunelab check warned)."""
    rows = [{"prompt": "What is 1 + 1?"}, {"prompt": "word " * 60}]
    train = _write(tmp_path / "t.jsonl", rows)
    data = _build(smollm2_tokenizer, train, **{"grpo.max_new_tokens": 32, "data.max_length": 96})
    (note,) = data.report.notes
    assert note.startswith("1 of the 2 prompts leave fewer than grpo.max_new_tokens (32) tokens for an answer within ")
    assert f"(e.g. {train}:2: room for " in note and "note: 1 of the 2 prompts" in data.report.summary()
    assert not _build(smollm2_tokenizer, train, **{"grpo.max_new_tokens": 4, "data.max_length": 96}).report.notes


def test_reward_functions_receive_the_prompt_the_model_was_asked(smollm2_tokenizer, tmp_path):
    """An alpaca row's reward functions (and a reward model) received its instruction alone, though the model was
    asked the instruction joined with its input, after its history; a sharegpt chat reached them in its own
    from/value shape. They now receive what the model was asked: the user's text, or the turns as {role, content}."""
    rows = [
        {"instruction": "Add the numbers.", "input": "17 and 25"},
        {"instruction": "And these?", "input": "1 and 2", "history": [["Add 3 and 4.", "7"]]},
        {"conversations": [{"from": "human", "value": "What is 2 + 2?"}]},
        {"prompt": "What is 5 + 5?"},
    ]
    data = _build(smollm2_tokenizer, _write(tmp_path / "t.jsonl", rows), **{"data.system_prompt": "Be exact."})
    assert [r.prompt for r in data.train] == [
        "Add the numbers.\n\n17 and 25",
        [
            {"role": "user", "content": "Add 3 and 4."},
            {"role": "assistant", "content": "7"},
            {"role": "user", "content": "And these?\n\n1 and 2"},
        ],
        [{"role": "user", "content": "What is 2 + 2?"}],
        "What is 5 + 5?",
    ]


def test_a_text_file_of_prompts_one_a_line_is_told_it_is_one_record(smollm2_tokenizer, tmp_path):
    """prompts.txt, a prompt a line, was told to map a column with data.fields ({prompt: question_text}); {prompt:
    text} would ask its whole text as one prompt."""
    path = tmp_path / "prompts.txt"
    path.write_text("What is 2 + 2?\nWhat is 3 + 3?\n")
    with pytest.raises(DataError, match=r"prompts\.txt:1: a \.txt file is one text record, .*not one prompt a line"):
        _build(smollm2_tokenizer, str(path))
