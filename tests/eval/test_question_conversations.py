"""A question row that is a conversation ending with a user turn: asked with its history, scored on the last
question (examples/ferry_chat/heldout.jsonl has such rows)."""

import json

import pytest

from tunelab.config import DataConfig
from tunelab.errors import DataError
from tunelab.eval.questions import read_questions


def test_a_conversation_ending_with_a_question_is_asked_whole(tmp_path):
    turns = [
        {"role": "user", "content": "What does a foot passenger pay?"},
        {"role": "assistant", "content": "9 pounds each way."},
        {"role": "user", "content": "And how long is the crossing?"},
    ]
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"messages": turns, "expected": "55 minutes", "kind": "fact"}) + "\n")
    (q,) = read_questions(path, DataConfig(system_prompt="You help with ferries."), need_expected=True)
    assert q.prompt == [{"role": "system", "content": "You help with ferries."}, *turns]
    assert q.text == "And how long is the crossing?" and q.expected == "55 minutes" and q.kind == "fact"
    assert not q.whole_answer  # a key the answer contains, not the whole answer
    assert q.example.messages[-1] == {"role": "assistant", "content": "55 minutes"}

    path.write_text(json.dumps({"messages": turns}) + "\n")
    with pytest.raises(DataError, match="ends with a question but the row has no 'expected'"):
        read_questions(path, need_expected=True)
    (unscored,) = read_questions(path)
    assert unscored.expected is None and unscored.prompt == turns
