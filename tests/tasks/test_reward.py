"""The reward task: the Bradley-Terry loss by hand, the pair formats it reads, and the pairs it skips."""

import json
import math
import shlex

import pytest
import torch

from tunelab.config import load_config
from tunelab.config.flags import CLI, PYTHON
from tunelab.errors import DataError
from tunelab.tasks.pair_data import SAME
from tunelab.tasks.reward import REWARD, read_pairs

LLAMAFACTORY = "/work/shared/data/llamafactory_dpo_en_demo/dpo_en_demo.json"


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _build(tokenizer, train, **over):
    cfg = load_config(None, {"task": "reward", "data.train": [train], "data.max_length": 256} | over).config
    return REWARD.build_data(cfg, tokenizer, 0)


def test_the_loss_is_minus_log_sigmoid_of_the_margins_summed():
    rewards = torch.tensor([[1.5], [-0.2], [0.3], [0.1], [0.4], [0.3]])  # chosen rows 0-2, rejected rows 3-5

    def model(ids, mask, positions):
        return rewards

    batch = {"input_ids": torch.zeros(6, 4, dtype=torch.long), "attention_mask": None, "position_ids": None}
    loss, metrics = REWARD.loss(model, batch)
    margins = [1.5 - 0.1, -0.2 - 0.4, 0.3 - 0.3]
    by_hand = sum(-math.log(1 / (1 + math.exp(-m))) for m in margins)
    assert REWARD.count(batch) == 3
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    assert int(metrics["accuracy"]) == 1  # a tie is not a win
    assert float(metrics["margin"]) == pytest.approx(sum(margins), abs=1e-6)


def test_batches_hold_the_chosen_rows_then_the_rejected_ones(smollm2_tokenizer, tmp_path):
    rows = [{"prompt": f"Q{i}?", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(3)]
    data = _build(smollm2_tokenizer, _write(tmp_path / "p.jsonl", rows))
    (batch,) = REWARD.make_batches(data.train, 3, smollm2_tokenizer.pad_token_id, shuffle=False, seed=0, epoch=0)
    texts = [smollm2_tokenizer.decode(ids[mask.bool()]) for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]  # fmt: skip
    assert ["good 0" in texts[0], "good 2" in texts[2], "bad 0" in texts[3], "bad 2" in texts[5]] == [True] * 4
    assert all("Q0?" in t for t in (texts[0], texts[3]))
    assert texts[0].endswith("<|im_end|>\n")  # the answer's turn closed, as the template writes it


def test_llamafactory_preference_format(smollm2_tokenizer):
    data = _build(smollm2_tokenizer, LLAMAFACTORY, **{"data.max_length": 4096})
    assert data.report.total_read == 300 and data.facts["input"] == "chat"
    first = json.loads(open(LLAMAFACTORY).read())[0]
    text = smollm2_tokenizer.decode(data.train[0].chosen_ids)
    assert first["conversations"][0]["value"] in text and first["chosen"]["value"].strip()[:80] in text
    assert first["rejected"]["value"].strip()[:80] in smollm2_tokenizer.decode(data.train[0].rejected_ids)


def test_message_lists_and_whole_texts(smollm2_tokenizer, tmp_path):
    rows = [
        {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello"}],
         "rejected": [{"role": "assistant", "content": "go away"}]},
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: no"},
    ]  # fmt: skip
    data = _build(smollm2_tokenizer, _write(tmp_path / "p.jsonl", rows))
    assert data.facts["input"] == "mixed" and len(data.train) == 2
    assert smollm2_tokenizer.decode(data.train[1].chosen_ids) == rows[1]["chosen"]  # a whole text, as it is


def test_equal_and_empty_pairs_are_counted_and_skipped(smollm2_tokenizer, tmp_path):
    rows = [
        {"prompt": "a", "chosen": "same", "rejected": "same"},
        {"prompt": "b", "chosen": "yes", "rejected": " "},
        {"prompt": "c", "chosen": "yes", "rejected": "no"},
    ]
    path = _write(tmp_path / "p.jsonl", rows)
    data = _build(smollm2_tokenizer, path)
    assert len(data.train) == 1
    assert data.report.skips[SAME].locations == [f"{path}:1"]
    assert data.report.skips["empty chosen or rejected answer"].locations == [f"{path}:2"]


@pytest.mark.parametrize("task", ["reward", "dpo"])
def test_conversations_whose_chosen_side_has_no_answer_are_skipped(smollm2_tokenizer, tmp_path, task):
    """Without a prompt field, reward trained on a chosen conversation that ends before its answer, or whose answer
    is blank; dpo skipped the same rows."""
    user = {"role": "user", "content": "hi"}
    rows = [
        {"chosen": [user], "rejected": [user, {"role": "assistant", "content": "no"}]},
        {"chosen": [user, {"role": "assistant", "content": " "}], "rejected": [user, {"role": "assistant", "content": "no"}]},
        {"chosen": [user, {"role": "assistant", "content": "hello"}], "rejected": [user, {"role": "assistant", "content": "no"}]},
    ]  # fmt: skip
    path = _write(tmp_path / "p.jsonl", rows)
    cfg = load_config(None, {"task": task, "data.train": [path], "data.max_length": 256}).config
    from tunelab.tasks import get_task

    data = get_task(task, cfg).build_data(cfg, smollm2_tokenizer, 0)
    assert len(data.train) == 1
    assert data.report.skips["empty chosen or rejected answer"].locations == [f"{path}:1", f"{path}:2"]


def test_reward_and_dpo_skip_the_same_pairs_without_an_answer(tmp_path):
    """One check (pair_data.answer_blank) for both tasks: with or without a prompt field, a side whose answer turns
    hold no assistant text is skipped by both, and the other rows are kept by both."""
    from tunelab.data.report import DataReport
    from tunelab.tasks.preference_data import read_preferences

    user, no = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "no"}
    rows = [
        {"chosen": [user], "rejected": [user, no]},  # the chosen conversation ends before its answer
        {"chosen": [user, {"role": "assistant", "content": "\n "}], "rejected": [user, no]},
        {"prompt": "hi", "chosen": [{"role": "user", "content": "more?"}], "rejected": "no"},  # no assistant turn
        {"prompt": "hi", "chosen": " ", "rejected": "no"},
        {"chosen": "", "rejected": "no"},
        {"prompt": "hi", "chosen": "yes", "rejected": "no"},
        {"chosen": [user, {"role": "assistant", "content": "yes"}], "rejected": [user, no]},
    ]
    path = _write(tmp_path / "p.jsonl", rows)
    skipped = {}
    for name, read in (("reward", read_pairs), ("dpo", read_preferences)):
        report = DataReport()
        kept = read([path], {}, None, report)
        assert [p.line for p in kept] == [6, 7]
        skipped[name] = report.skips["empty chosen or rejected answer"].locations
    assert skipped["reward"] == skipped["dpo"] == [f"{path}:{i}" for i in range(1, 6)]


def test_a_row_without_rejected_names_file_and_line(smollm2_tokenizer, tmp_path):
    path = _write(
        tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "x", "rejected": "y"}, {"prompt": "a", "chosen": "x"}]
    )
    with pytest.raises(DataError, match=r"p\.jsonl:2: 1 field missing \(rejected\)"):
        _build(smollm2_tokenizer, path)


def test_an_eval_row_without_rejected_names_the_columns_not_data_fields(tmp_path):
    """tunelab eval of a reward run told a row without rejected to map its columns with data.fields, which the eval
    file cannot change (it is read with the run's); it is told which column names the file may use."""
    from types import SimpleNamespace

    from tunelab.config import DataConfig
    from tunelab.eval.heads import _reward

    path = _write(tmp_path / "test.jsonl", [{"prompt": "a", "good": "x", "bad": "y"}])
    run = SimpleNamespace(data=DataConfig(fields={"chosen": "better"}), tokenizer=None, template=None, run_dir=tmp_path)
    with pytest.raises(DataError) as err:
        _reward(run, path, 16)
    msg = str(err.value)
    assert msg.startswith(f"{path}:1: 2 fields missing (better, rejected); tunelab eval reads each pair from columns")
    assert "named chosen and rejected (or the columns the run's data.fields maps them to: chosen -> better)" in msg
    assert f"This row has prompt, good, bad. Rename the columns in {path}." in msg and "data.fields, e.g." not in msg


def test_an_eval_file_of_single_answers_is_sent_to_predict(tmp_path):
    """tunelab eval of a reward run told a file of one answer a row (a prompt and its answer, predict's rows) to
    rename its columns, which cannot make pairs of single answers; it is now told that predict scores them."""
    from types import SimpleNamespace

    from tunelab.config import DataConfig
    from tunelab.eval.heads import _reward

    path = _write(tmp_path / "answers.jsonl", [{"prompt": "a", "answer": "x"}])
    run_dir = tmp_path / "my run"
    run = SimpleNamespace(data=DataConfig(), tokenizer=None, template=None, run_dir=run_dir)
    with pytest.raises(DataError) as err:
        _reward(run, path, 16)
    msg = str(err.value)
    assert msg.startswith(f"{path}:1: the row gives one answer (column 'answer'), not a preference pair")
    # a Python caller (tunelab.evaluate) is told of tunelab.predict with this run and file, the command line of its
    # flags; neither of a placeholder (RUN, run) for the run's directory
    call = f"tunelab.predict({str(run_dir)!r}, data={path!r})"
    assert f"Score single answers with {call}." in msg and "Rename the columns" not in msg
    assert ": tunelab.evaluate() of a reward run scores pairs" in msg and "--data" not in msg
    with pytest.raises(DataError) as err:
        _reward(run, path, 16, CLI)
    msg = str(err.value)
    assert f"'tunelab predict {shlex.quote(str(run_dir))} --data {shlex.quote(path)}'" in msg and " RUN " not in msg
    assert ": tunelab eval of a reward run" in msg


def _chat(user, answer):
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


@pytest.mark.parametrize("task", ["reward", "dpo"])
def test_pairs_whose_sides_answer_different_prompts_are_refused(smollm2_tokenizer, tmp_path, task):
    """Two whole conversations with different user turns were a pair of answers to two prompts, trained on as if one
    answered better than the other."""
    from tunelab.tasks import get_task

    def build(rows):
        over = {"task": task, "data.train": [_write(tmp_path / "p.jsonl", rows)], "data.max_length": 256}
        cfg = load_config(None, over).config
        return get_task(task, cfg).build_data(cfg, smollm2_tokenizer, 0)

    good = {"chosen": _chat("hi", "hello"), "rejected": _chat("hi", "go away")}
    assert len(build([good, good | {"rejected": _chat("hi", "no")}]).train) == 2
    with pytest.raises(DataError, match=r"p\.jsonl:2: the chosen and rejected conversations part at turn 1, the "
                       "chosen side's user turn: their answers follow different prompts"):  # fmt: skip
        build([good, {"chosen": _chat("hi", "hello"), "rejected": _chat("bye", "hello")}])
    answers_only = [{"role": "assistant", "content": "hello"}], [{"role": "assistant", "content": "no"}]
    with pytest.raises(DataError, match=r"p\.jsonl:1: the chosen and rejected conversations share no user turn"):
        build([{"chosen": answers_only[0], "rejected": answers_only[1]}])


def test_a_pair_of_a_conversation_and_a_text_is_refused(smollm2_tokenizer, tmp_path):
    path = _write(tmp_path / "p.jsonl", [{"chosen": _chat("hi", "hello"), "rejected": "Human: hi Assistant: no"}])
    with pytest.raises(DataError, match=r"p\.jsonl:1: chosen is a conversation and rejected a text"):
        _build(smollm2_tokenizer, path)


def test_predict_scores_a_whole_conversation(tmp_path):
    """A row to score that is a whole conversation (its messages ending with the assistant's answer) was refused as a
    prompt that must end with the user's turn, though read_scored's reader says it scores one."""
    from tunelab.data.report import DataReport
    from tunelab.tasks.reward import read_scored

    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    rows = [{"messages": chat, "system": "Be kind."}, {"prompt": "Hi", "answer": "Hello."}, {"messages": chat[:1]}]
    path = _write(tmp_path / "s.jsonl", rows)
    with pytest.raises(DataError, match=r"s\.jsonl:3: nothing to score"):
        read_scored([path], {}, None, DataReport())
    (first, _, _), (second, _, _) = read_scored([_write(tmp_path / "s.jsonl", rows[:2])], {}, None, DataReport())
    assert first.messages == [{"role": "system", "content": "Be kind."}, *chat]
    assert second.messages == chat


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"prompt": "What is 1 + 1?", "answer": " "}, "empty answer"),
        ({"text": " "}, "empty input"),
        (
            {
                "messages": [
                    {"role": "assistant", "content": "Hi."},
                    {"role": "user", "content": "Q?"},
                    {"role": "assistant", "content": "A."},
                ]
            },
            "conversation does not start with a user message",
        ),
    ],
)
def test_rows_to_score_that_training_would_skip_are_skipped_and_counted(row, reason, tmp_path):
    """tunelab predict of a reward run scored a blank answer, a blank text or a chat that training skips (one that
    starts with the assistant's turn), and printed a reward for it; such rows are now skipped and counted, and
    predict refuses them by name, as it refuses a classify run's."""
    from tunelab.data.report import DataReport
    from tunelab.tasks.reward import read_scored

    path = tmp_path / "new.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps({"prompt": "What is 2 + 2?", "answer": "4."}) + "\n")
    report = DataReport()
    scored = read_scored([str(path)], {}, None, report)
    assert [line for _, _, line in scored] == [2] and report.skips[reason].locations == [f"{path}:1"]


def test_predict_of_a_pair_file_points_to_eval(tmp_path):
    """predict of a reward run given its pair file was told to give each row a prompt and an answer, which would have
    scored one side; it is told that a pair is scored by tunelab eval."""
    from tunelab.data.report import DataReport
    from tunelab.tasks.reward import read_scored

    path = _write(tmp_path / "pairs.jsonl", [{"prompt": "Hi", "chosen": "Hello.", "rejected": "Go."}])
    with pytest.raises(
        DataError, match=r"pairs\.jsonl:1: nothing to score.* A preference pair \(chosen and rejected\)"
    ):
        read_scored([path], {}, None, DataReport())
    with pytest.raises(DataError) as cli:  # the command to run, with the run's directory and this file
        read_scored([path], {}, None, DataReport(), run_dir=tmp_path / "my run")
    assert f"is scored by 'tunelab eval {shlex.quote(str(tmp_path / 'my run'))} --data {shlex.quote(path)}' (" in str(
        cli.value
    )
    with pytest.raises(DataError) as python:  # tunelab.predict's caller is told of tunelab.evaluate
        read_scored([path], {}, None, DataReport(), spelling=PYTHON, run_dir=tmp_path / "my run")
    call = f"tunelab.evaluate({str(tmp_path / 'my run')!r}, data={path!r})"
    assert f"is scored by {call} (pairwise accuracy)" in str(python.value)
    assert "--data" not in str(python.value) and "tunelab eval " not in str(python.value)
    with pytest.raises(DataError) as unknown:  # no run directory known: it is named as a placeholder
        read_scored([path], {}, None, DataReport(), spelling=PYTHON)
    assert f"tunelab.evaluate(run_dir, data={path!r})" in str(unknown.value)
    other = _write(tmp_path / "other.jsonl", [{"body": "Hi"}])
    with pytest.raises(DataError) as err:
        read_scored([other], {}, None, DataReport())
    assert "tunelab eval" not in str(err.value)


def test_answers_that_repeat_their_prompt_are_counted_in_the_report(smollm2_tokenizer, tmp_path):
    """As in dpo: both answers starting with the prompt's text are whole transcripts beside their prompt."""
    start = "Human: Which box holds the keys? Assistant:"
    rows = [{"prompt": start, "chosen": f"{start} Box {i}.", "rejected": f"{start} No idea."} for i in range(2)]
    rows += [{"prompt": "Which box?", "chosen": f"Box {i}.", "rejected": "No idea."} for i in range(3)]
    path = _write(tmp_path / "t.jsonl", rows)
    note = next(n for n in _build(smollm2_tokenizer, path).report.notes if "repeat" in n)
    assert note.startswith(f"2 of the 5 pairs have answers that both start with their prompt's text (e.g. {path}:1)")


def test_a_pair_is_read_without_its_answers_thoughts(tmp_path):
    """A reasoning model's thought before an answer was trained on with it, while predict, eval and grpo score the
    answer alone: the pairs are now read without it, as they are scored; a pair whose answers differ only in their
    thoughts is one of equal sides, and an answer that is all thought an empty one."""
    from tunelab.data.report import DataReport
    from tunelab.tasks.pair_data import EMPTY_ANSWER

    rows = [
        {"prompt": "Code?", "chosen": "<think>Box 3.</think>\n7", "rejected": "8"},
        {"prompt": "Code?", "chosen": "<think>Box 3.</think>7", "rejected": "<think>Box 4.</think>7"},
        {"prompt": "Code?", "chosen": "7", "rejected": "<think>Box 4, and on"},
    ]
    report = DataReport()
    (pair,) = read_pairs([_write(tmp_path / "p.jsonl", rows)], {}, None, report)
    assert pair.chosen.messages[-1]["content"] == "7" and pair.rejected.messages[-1]["content"] == "8"
    assert pair.thoughts == ("Box 3.", None)
    assert report.skips[SAME].locations == [f"{tmp_path / 'p.jsonl'}:2"]
    assert report.skips[EMPTY_ANSWER].locations == [f"{tmp_path / 'p.jsonl'}:3"]


# DeepSeek-R1's later templates end the generation prompt with <think>: a model's answer starts inside the thought and
# closes it (`...</think>answer`). This one writes every answer's turn the same way.
OPENED = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}<think>\n{% endif %}"
    "{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)


def test_a_thought_the_template_opened_is_read_apart_as_scoring_reads_it(smollm2_tokenizer, tmp_path):
    """Under a template that opens the thought in the prompt, predict's answers and the reward function read an
    answer's text up to </think> as the thought, while training read a pair's `thought</think>answer` as all answer:
    the head was trained on thoughts it never scores. Training now reads it apart too; an answer without </think> is
    the answer as written, and under a template that opens no thought nothing changes."""
    import copy

    tokenizer = copy.deepcopy(smollm2_tokenizer)
    tokenizer.chat_template = OPENED
    rows = [
        {"prompt": "Code?", "chosen": "Box 3 holds it.\n</think>\n\n7", "rejected": "8"},
        {"prompt": "Code?", "chosen": "7", "rejected": "9"},
    ]
    train = _write(tmp_path / "p.jsonl", rows)
    data = _build(tokenizer, train, **{"data.eval_fraction": 0})
    thinking, plain = data.train
    assert thinking.chosen_ids == plain.chosen_ids  # the answer alone, as predict and the reward function score it
    assert "Box 3" not in tokenizer.decode(thinking.chosen_ids)
    chatml = _build(smollm2_tokenizer, train, **{"data.eval_fraction": 0})
    assert "Box 3" in smollm2_tokenizer.decode(chatml.train[0].chosen_ids)  # no thought opened: read as written
