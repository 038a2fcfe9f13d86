"""`tunelab predict` of a reward run on a reasoning model's answers: the thought (`<think>...</think>` first) is not
scored, as `tunelab eval` and grpo's rewards read answers, and the prediction keeps it apart, as eval.json does."""

import json

import pytest

import tunelab
from tunelab.errors import DataError
from tunelab.infer.predict import format_predictions, predict, save_predictions

THOUGHT = "They asked for kindness, so I should say something kind."
ANSWER = "You are great 3"


@pytest.fixture(scope="module")
def reward_run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reward")
    rows = [
        {"prompt": f"Say something kind {i}", "chosen": f"You are great {i}", "rejected": f"Go away {i}"}
        for i in range(8)
    ]
    data = tmp / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = {
        "task": "reward",
        "model.name": str(tiny_model_dir),
        "data.train": [str(data)],
        "data.max_length": 64,
        "method.r": 4,
        "train.micro_batch": 4,
        "train.max_steps": 1,
        "output_dir": str(tmp / "run"),
    }
    tunelab.train(None, overrides)
    return tmp / "run"


def test_a_thought_is_not_scored_and_kept_apart(reward_run, tmp_path):
    """The reward model scored the thought with the answer: an answer's reward changed with what the model thought
    before it. It now scores the answer alone, the same reward as the answer written without a thought, and the
    prediction (its printed line, its .jsonl and .csv rows) keeps the thought apart."""
    prompt = "Say something kind 3"
    thinking, plain = predict(
        reward_run, prompt=prompt, answers=[f"<think>\n{THOUGHT}\n</think>\n\n{ANSWER}", ANSWER], device="cpu"
    )
    assert thinking.reward == pytest.approx(plain.reward, abs=1e-6)
    assert (thinking.thought, plain.thought) == (THOUGHT, None)
    assert "<think>" not in thinking.input and THOUGHT not in thinking.input
    assert f"(thought, not scored: {THOUGHT})" in format_predictions([thinking, plain])
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps({"prompt": prompt, "answer": f"<think>{THOUGHT}</think>{ANSWER}"}) + "\n"
        + json.dumps({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": ANSWER}]})
        + "\n"
    )  # fmt: skip
    from_rows = predict(reward_run, data=rows, device="cpu")
    assert [p.thought for p in from_rows] == [THOUGHT, None]
    assert [p.reward for p in from_rows] == pytest.approx([plain.reward] * 2, abs=1e-6)
    out = save_predictions(from_rows, tmp_path / "out.jsonl", reward_run)
    assert [json.loads(line)["thought"] for line in out.read_text().splitlines()] == [THOUGHT, None]
    out = save_predictions(from_rows, tmp_path / "out.csv", reward_run)
    assert out.read_text().splitlines()[0] == "where,input,reward,thought" and THOUGHT in out.read_text()


def test_an_answer_that_is_all_thought_is_refused_by_name(reward_run):
    with pytest.raises(DataError, match="answer 1: the answer is all thought"):
        predict(reward_run, prompt="Say something kind 3", answers=[f"<think>\n{THOUGHT}"], device="cpu")
