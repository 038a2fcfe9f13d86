"""A reward run on a reasoning model's answers: the thought (`<think>...</think>` first) is not scored, as grpo's
rewards read answers, wherever the reward model reads one (`tunelab predict`, `tunelab eval`'s pairs, the reward
function from Python), and predictions and eval.json keep it apart."""

import copy
import dataclasses
import json

import pytest

import tunelab
from tunelab.data.templates import resolve_template
from tunelab.errors import ConfigError, DataError
from tunelab.eval.heads import evaluate_head_run
from tunelab.infer.predict import format_predictions, predict, save_predictions
from tunelab.tasks.head_run import HeadRun, RewardModel, load_reward_model, open_head_run

THOUGHT = "They asked for kindness, so I should say something kind."
ANSWER = "You are great 3"


def _train(model_dir, tmp, rows):
    data = tmp / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = {
        "task": "reward",
        "model.name": str(model_dir),
        "data.train": [str(data)],
        "data.max_length": 64,
        "method.r": 4,
        "train.micro_batch": 4,
        "train.max_steps": 1,
        "output_dir": str(tmp / "run"),
    }
    tunelab.train(None, overrides)
    return tmp / "run"


@pytest.fixture(scope="module")
def reward_run(tiny_model_dir, tmp_path_factory):
    rows = [
        {"prompt": f"Say something kind {i}", "chosen": f"You are great {i}", "rejected": f"Go away {i}"}
        for i in range(8)
    ]
    return _train(tiny_model_dir, tmp_path_factory.mktemp("reward"), rows)


@pytest.fixture(scope="module")
def text_reward_run(tiny_model_dir, tmp_path_factory):
    """A reward run trained on whole texts: it scores a prompt and its answer joined as one text."""
    rows = [{"chosen": f"Say something kind {i} You are great {i}", "rejected": f"Go away {i}"} for i in range(8)]
    return _train(tiny_model_dir, tmp_path_factory.mktemp("text_reward"), rows)


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


def test_a_run_of_texts_scores_an_answer_without_its_thought(text_reward_run):
    """The prompt was joined to the answer before the thought was looked for, which then sat mid-text: it was scored."""
    prompt = "Say something kind 3 "
    thinking, plain = predict(
        text_reward_run, prompt=prompt, answers=[f"<think>\n{THOUGHT}\n</think>\n\n{ANSWER}", ANSWER], device="cpu"
    )
    assert thinking.reward == pytest.approx(plain.reward, abs=1e-6)
    assert (thinking.thought, plain.thought) == (THOUGHT, None)
    assert thinking.input == plain.input == prompt + ANSWER


def test_the_reward_function_scores_an_answer_without_its_thought(reward_run, text_reward_run):
    """load_reward_model's function from Python (TRL's GRPOTrainer calls it so) scored the thought with the answer, as
    grpo's `model` reward no longer does; an answer that is all thought is scored as the empty answer after it."""
    for run in (reward_run, text_reward_run):
        reward = load_reward_model(run, device="cpu")
        prompts = ["Say something kind 3"] * 4
        answers = [f"<think>{THOUGHT}</think>\n{ANSWER}", ANSWER, f"<think>\n{THOUGHT}", ""]
        thinking, plain, all_thought, empty = reward(prompts, answers)
        assert thinking == pytest.approx(plain, abs=1e-6) and all_thought == pytest.approx(empty, abs=1e-6)
        assert plain != pytest.approx(reward(prompts[:1], [f"{THOUGHT}\n{ANSWER}"])[0], abs=1e-6)  # the thought counted


def test_eval_scores_pairs_without_their_thoughts_and_keeps_them(reward_run, tmp_path):
    """`tunelab eval` of a reward run scored each side's thought with its answer; it now scores the answers alone (the
    margins of the pairs written without thoughts) and eval.json keeps the thoughts beside them."""
    rows = [
        {"prompt": f"Say something kind {i}", "chosen": f"You are great {i}", "rejected": f"Go away {i}"}
        for i in range(3)
    ]
    thinking = [r | {"chosen": f"<think>{THOUGHT}</think>{r['chosen']}"} for r in rows]
    plain_file, thinking_file = tmp_path / "plain.jsonl", tmp_path / "thinking.jsonl"
    plain_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    thinking_file.write_text("".join(json.dumps(r) + "\n" for r in thinking))
    plain = evaluate_head_run(reward_run, plain_file, device="cpu", save=False)
    got = evaluate_head_run(reward_run, thinking_file, device="cpu", out=tmp_path / "eval.json")
    assert got.tuned == pytest.approx(plain.tuned, abs=1e-6) and got.rows_read == 3
    saved = json.loads((tmp_path / "eval.json").read_text())["rows"]
    assert [(r["chosen_thought"], r["rejected_thought"]) for r in saved] == [(THOUGHT, None)] * 3
    assert all(THOUGHT not in r["chosen"] for r in saved)


# DeepSeek-R1's later templates end the generation prompt with <think>: the model's answer starts inside the thought.
# This one writes an earlier answer's turn the same way, so that the render finds each answer where it starts.
OPENED = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}<think>\n{% endif %}"
    "{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)


def _opened(run: HeadRun) -> HeadRun:
    tokenizer = copy.deepcopy(run.tokenizer)
    tokenizer.chat_template = OPENED
    return dataclasses.replace(run, tokenizer=tokenizer, template=resolve_template("tokenizer", tokenizer))


def test_a_thought_the_prompt_opened_is_not_scored(reward_run):
    """Where the run's template ends the prompt with <think>, a model's answer starts inside its thought, without the
    tag: the reward function from Python (and predict's answers) scored that thought as the answer, where the server
    answers it as the thought. Its text up to </think> is now the thought, as the server reads it, and an answer that
    never closes the thought is all thought."""
    run = _opened(open_head_run(reward_run, device="cpu"))
    reward = RewardModel(run)
    prompts = ["Say something kind 3"] * 3
    opened, tagged, all_thought = reward(
        prompts, [f"{THOUGHT}\n</think>\n\n{ANSWER}", f"<think>{THOUGHT}</think>{ANSWER}", THOUGHT]
    )
    assert opened == pytest.approx(tagged, abs=1e-6)  # the thought read apart as where <think> is written
    alone, empty = reward.score(prompts[:2], [ANSWER, ""])
    assert tagged == pytest.approx(alone, abs=1e-6) and all_thought == pytest.approx(empty, abs=1e-6)
    assert opened != pytest.approx(reward.score(prompts[:1], [f"{THOUGHT}\n</think>\n\n{ANSWER}"])[0], abs=1e-6)
    got = predict(run, prompt=prompts[0], answers=[f"{THOUGHT}\n</think>\n\n{ANSWER}"], device="cpu")[0]
    assert (got.thought, got.reward) == (THOUGHT, pytest.approx(alone, abs=1e-6))
    with pytest.raises(DataError, match=r"answer 1: the answer is all thought \(the run's template ends the prompt"):
        predict(run, prompt=prompts[0], answers=[THOUGHT], device="cpu")
    # where the template does not open the thought, an answer without <think> is the answer as written
    plain = load_reward_model(reward_run, device="cpu")
    written = f"{THOUGHT}\n</think>\n\n{ANSWER}"
    assert plain(prompts[:1], [written]) == pytest.approx(plain.score(prompts[:1], [written]), abs=1e-6)


def test_rows_read_a_thought_the_prompt_opened_as_answers_are(reward_run, tmp_path, monkeypatch):
    """predict's `--answer` read a `thought</think>answer` to a prompt the template opens with <think> as thought and
    answer, while a `--data` row and an eval pair of the same text were scored whole, thought and all (as training
    read them): the same answer got two rewards. Rows now read it apart too; an answer without </think> is the answer
    as written."""
    import tunelab.eval.heads as heads

    run = _opened(open_head_run(reward_run, device="cpu"))
    prompt, written = "Say something kind 3", f"{THOUGHT}\n</think>\n\n{ANSWER}"
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        json.dumps({"prompt": prompt, "answer": written})
        + "\n"
        + json.dumps({"prompt": prompt, "answer": ANSWER})
        + "\n"
    )
    (given,) = predict(run, prompt=prompt, answers=[written], device="cpu")
    from_row, plain = predict(run, data=rows, device="cpu")
    assert (from_row.thought, plain.thought) == (THOUGHT, None)
    assert from_row.reward == pytest.approx(given.reward, abs=1e-6) == pytest.approx(plain.reward, abs=1e-6)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        json.dumps({"prompt": prompt, "chosen": written, "rejected": "Go away"}) + "\n"
        + json.dumps({"prompt": prompt, "chosen": ANSWER, "rejected": "Go away"}) + "\n"
    )  # fmt: skip
    monkeypatch.setattr(heads, "open_head_run", lambda *a, **k: run)
    got = evaluate_head_run(reward_run, pairs, device="cpu", out=tmp_path / "eval.json")
    saved = json.loads((tmp_path / "eval.json").read_text())["rows"]
    assert [r["chosen_thought"] for r in saved] == [THOUGHT, None] and got.rows_read == 2
    assert saved[0]["margin"] == pytest.approx(saved[1]["margin"], abs=1e-6)


def test_a_row_that_is_all_thought_the_prompt_opened_is_refused_in_its_own_words(reward_run, tmp_path):
    """A `--data` row written `thought</think>` under a template that opens the thought was refused as "<think>
    without an answer", though the row wrote no <think>; it now says the template opened the thought, as `--answer`
    does, and a row that writes <think> itself keeps the old words."""
    run = _opened(open_head_run(reward_run, device="cpu"))
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "Say something kind 3", "answer": f"{THOUGHT}</think>"}) + "\n")
    with pytest.raises(DataError, match=r"the answer is all thought \(the run's template ends the prompt") as err:
        predict(run, data=rows, device="cpu")
    assert "<think> without an answer" not in str(err.value)
    rows.write_text(json.dumps({"prompt": "Say something kind 3", "answer": f"<think>{THOUGHT}</think>"}) + "\n")
    with pytest.raises(DataError, match=r"all thought \(<think> without an answer after its </think>\)"):
        predict(run, data=rows, device="cpu")


def test_the_reward_function_takes_what_trls_grpo_trainer_passes(reward_run):
    """TRL's GRPOTrainer calls a reward function by keyword with completion_ids, trainer_state and the dataset's
    columns beside the prompts and completions, a conversation's completions as lists of one assistant message, and
    logs it under its __name__: the reward model failed each (a TypeError for the keywords, an AttributeError deep
    inside for the messages and the name). It now reads the text of such a completion, lets the rest be, and a
    completion of another shape is refused by name."""
    reward = load_reward_model(reward_run, device="cpu")
    prompt = [{"role": "user", "content": "Say something kind 3"}]
    plain = reward([prompt], [ANSWER])
    got = reward(
        prompts=[prompt],
        completions=[[{"role": "assistant", "content": f"<think>{THOUGHT}</think>{ANSWER}"}]],
        completion_ids=[[1, 2, 3]],
        trainer_state=None,
        solution=["kind"],
    )
    assert got == pytest.approx(plain, abs=1e-6) and reward.__name__ == "run"
    with pytest.raises(ConfigError, match=r"answer 1 of 1 scored: a completion is a text, or a list of one assistant"):
        reward([prompt], [42])


def test_scoring_answers_read_apart_checks_them_as_the_call_does(reward_run):
    """reward.score(prompts, answers) zipped a prompt list and an answer list of other lengths, scoring the pairs the
    shorter one had without a word, and took an answer that is no text to fail deep inside; each is refused by name."""
    reward = load_reward_model(reward_run, device="cpu")
    with pytest.raises(ConfigError, match="reward model: 1 prompt but 2 answers; give one each"):
        reward.score(["Say something kind 3"], [ANSWER, ANSWER])
    with pytest.raises(ConfigError, match="answer 2 of 2 scored: an answer is a text, got an int"):
        reward.score(["Say something kind 3"] * 2, [ANSWER, 7])
