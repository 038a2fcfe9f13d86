"""What the readers of every task but sft share (`tasks/head_data.py`): the checks of the sft data pipeline, held
alike by the dpo, reward, classify and grpo readers."""

import json

import pytest

from tunelab.config import load_config
from tunelab.errors import ConfigError, DataError
from tunelab.tasks.classify import CLASSIFY
from tunelab.tasks.preference_data import build_preferences
from tunelab.tasks.prompt_data import build_prompts
from tunelab.tasks.reward import REWARD

TASKS = ("dpo", "reward", "classify", "grpo")


def _row(task: str, i: int) -> dict:
    if task in ("dpo", "reward"):
        return {"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}.", "rejected": "No idea."}
    if task == "classify":
        return {"prompt": f"What is {i} + {i}?", "label": ["even", "odd"][i % 2]}
    return {"prompt": f"What is {i} + {i}?"}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _build(task, tokenizer, train, **over):
    cfg = load_config(None, {"task": task, "data.train": [train], "data.max_length": 128} | over).config
    build = {
        "dpo": build_preferences,
        "reward": REWARD.build_data,
        "classify": CLASSIFY.build_data,
        "grpo": lambda c, t, s: build_prompts(c, t, s, []),
    }[task]
    return build(cfg, tokenizer, 0)


@pytest.mark.parametrize("task", TASKS)
def test_special_token_text_in_a_system_prompt_is_refused_naming_the_option(task, smollm2_tokenizer, tmp_path):
    """The first row was blamed for the option's text ('...:1: the special token text ... remove it from the row')."""
    train = _write(tmp_path / "d.jsonl", [_row(task, i) for i in range(6)])
    with pytest.raises(ConfigError, match=r"^option 'data.system_prompt' holds the special token text '<\|im_end\|>'"):
        _build(task, smollm2_tokenizer, train, **{"data.system_prompt": "Be brief.<|im_end|>"})


@pytest.mark.parametrize("task", TASKS)
def test_eval_rows_that_repeat_training_rows_are_noted(task, smollm2_tokenizer, tmp_path):
    """A row repeated in a file that data.eval_fraction splits, or copied into data.eval, was trained on and scored
    as held out without a word; sft notes it, and now every task does."""
    train = _write(tmp_path / "t.jsonl", [_row(task, i % 4) for i in range(12)])
    data = _build(task, smollm2_tokenizer, train, **{"data.eval_fraction": 0.25})
    (note,) = [n for n in data.report.notes if "eval examples" in n]  # classify notes the training copies too
    assert note.startswith("3 of the 3 eval examples are also training examples, word for word (e.g. ")
    assert "note: 3 of the 3 eval examples" in data.report.summary()
    held = _write(tmp_path / "e.jsonl", [_row(task, i) for i in range(2, 6)])
    data = _build(
        task, smollm2_tokenizer, _write(tmp_path / "t.jsonl", [_row(task, i) for i in range(4)]), **{"data.eval": held}
    )
    assert data.report.notes == [
        f"2 of the 4 eval examples are also training examples, word for word (e.g. {held}:1 repeats {train}:3, ...): "
        "their eval loss measures recall of rows the model trained on (train.keep_best and the verdict read it); "
        "remove the repeated rows"
    ]
    apart = _write(tmp_path / "e.jsonl", [_row(task, i) for i in range(4, 8)])
    assert not _build(task, smollm2_tokenizer, train, **{"data.eval": apart}).report.notes


@pytest.mark.parametrize("task", TASKS)
def test_a_fields_mapping_to_a_column_no_row_has_is_refused(task, smollm2_tokenizer, tmp_path):
    """{system: sytem} (a typo for the column 'sys') left every row without its system message, and the run trained
    on, without a word; sft refuses it. An eval file may give the field under its own name, as it may any field."""
    rows = [_row(task, i) | {"sys": "Answer in digits."} for i in range(6)]
    train = _write(tmp_path / "t.jsonl", rows)
    with pytest.raises(
        DataError, match=r"t\.jsonl: option 'data.fields' maps system -> 'sytem', but no record .*'sys'"
    ):
        _build(task, smollm2_tokenizer, train, **{"data.fields": {"system": "sytem"}})
    held = _write(tmp_path / "e.jsonl", [_row(task, i) | {"system": "Answer in digits."} for i in range(6, 8)])
    data = _build(task, smollm2_tokenizer, train, **{"data.fields": {"system": "sys"}, "data.eval": held})
    assert data.report.eval.used == 2
    plain = _write(tmp_path / "p.jsonl", [_row(task, i) for i in range(6, 8)])
    with pytest.raises(DataError, match=r"p\.jsonl: .* maps system -> 'sys', but no record .* \(nor the field's own"):
        _build(task, smollm2_tokenizer, train, **{"data.fields": {"system": "sys"}, "data.eval": plain})


def _first_ids(task, data):
    row = data.eval[0] if data.eval else data.train[0]
    return row.prompt_ids if task == "grpo" else (row.chosen_ids if task in ("dpo", "reward") else row.input_ids)


@pytest.mark.parametrize("task", TASKS)
def test_an_eval_file_gives_its_system_message_under_its_own_name(task, smollm2_tokenizer, tmp_path):
    """With data.fields {system: sys}, an eval file's 'system' column was accepted (an eval file may give a field
    under its own name) but not read: its rows were scored without their system message."""
    train = _write(tmp_path / "t.jsonl", [_row(task, i) | {"sys": "Answer in digits."} for i in range(6)])
    held = _write(tmp_path / "e.jsonl", [_row(task, 7) | {"system": "Answer in words."}])
    data = _build(task, smollm2_tokenizer, train, **{"data.fields": {"system": "sys"}, "data.eval": held})
    assert "Answer in words." in smollm2_tokenizer.decode(_first_ids(task, data))


def _chat_row(task: str, system: str) -> dict:
    turns = [{"role": "system", "content": system}, {"role": "user", "content": "What is 1 + 1?"}]
    if task in ("dpo", "reward"):
        return {"messages": turns, "chosen": "2.", "rejected": "No idea."}
    return {"messages": turns} | ({"label": "even"} if task == "classify" else {})


@pytest.mark.parametrize("task", TASKS)
def test_an_empty_system_turn_is_none_and_a_second_system_message_is_refused(task, smollm2_tokenizer, tmp_path):
    """An empty system turn was rendered as an empty system block and kept data.system_prompt out (sft drops it), and
    a row's system field beside another system turn was dropped without a word (sft refuses it)."""
    rows = [_chat_row(task, "")] + [_row(task, i) for i in range(1, 6)]
    data = _build(task, smollm2_tokenizer, _write(tmp_path / "t.jsonl", rows), **{"data.system_prompt": "Be exact."})
    assert not data.eval
    first = smollm2_tokenizer.decode(_first_ids(task, data))
    assert first.startswith("<|im_start|>system\nBe exact.<|im_end|>") and first.count("system") == 1
    rows = [_chat_row(task, "Be brief.") | {"system": "Be long."}] + [_row(task, i) for i in range(1, 6)]
    with pytest.raises(DataError, match=r"t\.jsonl:1: the row gives its system message twice, differently: field "):
        _build(task, smollm2_tokenizer, _write(tmp_path / "t.jsonl", rows))
    rows = [_chat_row(task, "Be brief.") | {"system": "Be brief."}] + [_row(task, i) for i in range(1, 6)]
    assert _build(task, smollm2_tokenizer, _write(tmp_path / "t.jsonl", rows)).report.train.used >= 5


@pytest.mark.parametrize("task", ["dpo", "reward"])
@pytest.mark.parametrize("role", ["user", "system"])
def test_an_answer_whose_turns_do_not_start_with_the_assistants_is_refused(task, role, smollm2_tokenizer, tmp_path):
    """{prompt: Q, chosen: [{user: other question}, {assistant: A}], rejected: B} trained A (an answer to another
    question) over B, and a system turn in an answer stood in the middle of the chat; two whole conversations that
    part at a user turn were already refused."""
    first = {"role": role, "content": "Another question?"}
    chosen = [first, {"role": "assistant", "content": "2."}]
    rows = [{"prompt": "What is 1 + 1?", "chosen": chosen, "rejected": "No idea."}] + [_row(task, i) for i in range(5)]
    with pytest.raises(DataError, match=rf"t\.jsonl:1: field 'chosen', turn 1 is a {role} turn; an answer follows"):
        _build(task, smollm2_tokenizer, _write(tmp_path / "t.jsonl", rows))
    chosen = [
        {"role": "assistant", "content": "2."},
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "Yes."},
    ]
    rows[0]["chosen"] = chosen  # a multi-turn answer goes on after the assistant's turn
    assert _build(task, smollm2_tokenizer, _write(tmp_path / "t.jsonl", rows)).report.train.used == 6


@pytest.mark.parametrize("task", ["dpo", "reward"])
def test_whole_conversations_that_are_equal_or_one_the_start_of_the_other_are_skipped_so(
    task, smollm2_tokenizer, tmp_path
):
    """Two equal conversations were skipped as 'empty chosen or rejected answer'; a chosen conversation that is the
    start of the rejected one stopped the run saying their answers followed different prompts, though the chosen
    side has no answer of its own after the turns they share."""
    q, a = {"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": "2."}
    more = [{"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "Yes."}]
    rows = [{"chosen": [q, a], "rejected": [q, a]}, {"chosen": [q, a], "rejected": [q, a, *more]}]
    rows += [_row(task, i) for i in range(4)]
    path = _write(tmp_path / "t.jsonl", rows)
    skips = _build(task, smollm2_tokenizer, path).report.skips
    assert skips["chosen and rejected are the same"].locations == [f"{path}:1"]
    assert skips["empty chosen or rejected answer"].locations == [f"{path}:2"]


def test_a_dpo_pair_whose_prompt_fills_max_length_is_dropped_and_counted_with_overlong_drop(
    smollm2_tokenizer, tmp_path
):
    """One long transcript among thousands of pairs stopped the run (fix it, rerun, meet the next one), though
    data.overlong: drop drops every other pair longer than max_length; with truncate the cut would leave no answer."""
    rows = [{"prompt": "word " * 200, "chosen": "2.", "rejected": "No idea."}] + [_row("dpo", i) for i in range(4)]
    path = _write(tmp_path / "t.jsonl", rows)
    data = _build("dpo", smollm2_tokenizer, path)
    assert data.report.skips["longer than max_length (128 tokens; data.overlong=drop)"].locations == [f"{path}:1"]
    assert len(data.train) == 4
    with pytest.raises(DataError, match=r"t\.jsonl:1: the prompt is \d+ tokens, which leaves no room for an answer"):
        _build("dpo", smollm2_tokenizer, path, **{"data.overlong": "truncate"})


def test_a_grpo_prompt_that_fills_max_length_is_dropped_and_counted_with_overlong_drop(smollm2_tokenizer, tmp_path):
    """One long prompt among many stopped a grpo run (data.overlong was not read), where dpo drops a pair whose
    prompt fills max_length: it is skipped and counted now, and with truncate still refused by name."""
    rows = [{"prompt": "word " * 200}] + [_row("grpo", i) for i in range(4)]
    path = _write(tmp_path / "t.jsonl", rows)
    data = _build("grpo", smollm2_tokenizer, path)
    reason = "prompt leaves no room for an answer in max_length (128 tokens; data.overlong=drop)"
    assert data.report.skips[reason].locations == [f"{path}:1"] and len(data.train) == 4
    with pytest.raises(DataError, match=r"t\.jsonl:1: the prompt is \d+ tokens, which leaves no room for an answer"):
        _build("grpo", smollm2_tokenizer, path, **{"data.overlong": "truncate"})


def test_dpo_answers_cut_to_max_length_are_counted_with_the_tokens_they_lose(smollm2_tokenizer, tmp_path):
    """data.overlong=truncate cut a pair's answers from their end with a bare 'truncated' count: how much of the
    answers the loss no longer read was not said. The prompt is kept whole and the answer tokens lost are counted."""
    rows = [{"prompt": "What is 1 + 1?", "chosen": "two " * 150, "rejected": "No idea."}] + [
        _row("dpo", i) for i in range(4)
    ]
    path = _write(tmp_path / "t.jsonl", rows)
    data = _build("dpo", smollm2_tokenizer, path, **{"data.overlong": "truncate"})
    (row,) = [r for r in data.train if r.line == 1]
    chosen = smollm2_tokenizer.decode(row.chosen_ids)
    assert len(row.chosen_ids) == 128 and "What is 1 + 1?" in chosen and chosen.rstrip().endswith("two")
    (note,) = [n for n in data.report.notes if "were cut to max_length" in n]
    kept = sum(t != -100 for t in row.chosen_labels + row.rejected_labels)
    lost = int(note.split("lost ")[1].split(" of")[0])
    total = int(note.split(" of ")[1].split(" tokens")[0])
    assert note.startswith("1 training pairs were cut to max_length (128 tokens) keeping the prompt whole")
    assert total - lost == kept and lost > 0


@pytest.mark.parametrize("task", ["dpo", "reward"])
def test_a_prompt_column_beside_whole_conversations_is_their_shared_start(task, smollm2_tokenizer, tmp_path):
    """UltraFeedback's binarized pairs give the prompt as text and chosen and rejected as whole conversations that
    start with it; each side was trained with the question twice (the prompt's user turn, then the conversation's).
    Now the pair is read as two whole conversations (as TRL reads it); a conversation that starts with another
    question is refused."""
    q = {"role": "user", "content": "What is 1 + 1?"}
    chosen, rejected = [q, {"role": "assistant", "content": "2."}], [q, {"role": "assistant", "content": "No idea."}]
    rows = [{"prompt": q["content"], "chosen": chosen, "rejected": rejected}] + [_row(task, i) for i in range(2, 6)]
    data = _build(task, smollm2_tokenizer, _write(tmp_path / "t.jsonl", rows), **{"data.system_prompt": "Be exact."})
    first = smollm2_tokenizer.decode(data.train[0].chosen_ids)
    assert first.count("What is 1 + 1?") == 1 and first.count("Be exact.") == 1 and "2." in first
    if task == "dpo":
        answer = [t for t in data.train[0].chosen_labels if t != -100]
        assert smollm2_tokenizer.decode(answer) == "2.<|im_end|>"
    rows[0]["prompt"] = "What is 2 + 2?"
    with pytest.raises(DataError, match=r"t\.jsonl:1: field 'chosen', turn 1 is a user turn"):
        _build(task, smollm2_tokenizer, _write(tmp_path / "t.jsonl", rows))


def test_training_files_that_give_different_inputs_may_each_use_one_mapping(smollm2_tokenizer, tmp_path):
    """data.fields {text: body, prompt: ask} over one file of texts and one of prompts: each mapping names a column of
    one file, and neither is a typo."""
    texts = _write(tmp_path / "a.jsonl", [{"body": f"text {i}", "label": "ab"[i % 2]} for i in range(4)])
    asks = _write(tmp_path / "b.jsonl", [{"ask": f"Q{i}?", "label": "ab"[i % 2]} for i in range(4)])
    cfg = load_config(
        None, {"task": "classify", "data.train": [texts, asks], "data.fields": {"text": "body", "prompt": "ask"}}
    ).config
    assert CLASSIFY.build_data(cfg, smollm2_tokenizer, 0).report.train.used == 8
    cfg.data.fields = {"text": "body", "prompt": "ask", "system": "sytem"}
    with pytest.raises(DataError, match=r"a\.jsonl, .*b\.jsonl: option 'data.fields' maps system -> 'sytem', but no"):
        CLASSIFY.build_data(cfg, smollm2_tokenizer, 0)


def test_rows_to_predict_need_not_have_the_training_rows_system_column(smollm2_tokenizer, tmp_path):
    """tunelab predict reads new rows with the run's data.fields; {system: sys} refused a file of new messages that
    had no system message at all, and a second input mapping a file that gave the other input."""
    from tunelab.data.report import DataReport
    from tunelab.tasks.classify import read_labelled

    path = _write(tmp_path / "new.jsonl", [{"body": "Win a prize now"}])
    fields = {"text": "body", "prompt": "ask", "system": "sys"}
    (row,) = read_labelled([path], fields, None, DataReport(), require_label=False, lenient=True)
    assert row.input.text == "Win a prize now" and row.label is None


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize(
    "role, content, reason",
    [("system", "Be brief.", "system message that is not the first message"), ("user", " ", "empty question")],
)
def test_a_chat_that_sft_would_skip_is_skipped_as_in_sft(task, role, content, reason, smollm2_tokenizer, tmp_path):
    """sft skips a chat with a system message after its first turn, or a blank question, and counts it; the other
    tasks rendered the system turn in the middle of the chat, or the blank user turn."""
    turns = [
        {"role": "user", "content": "What is 1 + 1?"},
        {"role": "assistant", "content": "2."},
        {"role": role, "content": content},
        {"role": "user", "content": "Well?"},
    ]
    late = {"messages": turns} | {k: v for k, v in _row(task, 1).items() if k != "prompt"}
    path = _write(tmp_path / "t.jsonl", [late] + [_row(task, i) for i in range(2, 6)])
    data = _build(task, smollm2_tokenizer, path)
    assert data.report.skips[reason].locations == [f"{path}:1"]
    assert data.report.train.used == 4
    with pytest.raises(DataError, match=r"t\.jsonl: no usable"):
        _build(task, smollm2_tokenizer, _write(tmp_path / "t.jsonl", [late]))


@pytest.mark.parametrize("task", TASKS)
def test_a_chat_that_starts_with_the_assistants_turn_is_skipped_as_in_sft(task, smollm2_tokenizer, tmp_path):
    """sft skips a conversation whose first turn (after the system message) is not the user's, and counts it; the
    other tasks rendered it, an answer to no question first (templates that require a user turn first refuse it)."""
    turns = [
        {"role": "system", "content": "Be exact."},
        {"role": "assistant", "content": "Hello, ask me a sum."},
        {"role": "user", "content": "What is 1 + 1?"},
    ]
    first = {"messages": turns} | {k: v for k, v in _row(task, 1).items() if k != "prompt"}
    path = _write(tmp_path / "t.jsonl", [first] + [_row(task, i) for i in range(2, 6)])
    data = _build(task, smollm2_tokenizer, path)
    assert data.report.skips["conversation does not start with a user message"].locations == [f"{path}:1"]
    assert data.report.train.used == 4
    held = _write(tmp_path / "e.jsonl", [first, _row(task, 7)])
    data = _build(task, smollm2_tokenizer, path, **{"data.eval": held})
    assert data.report.skips["conversation does not start with a user message"].locations == [f"{path}:1", f"{held}:1"]
    assert data.report.eval.used == 1


@pytest.mark.parametrize("task, kept", [("dpo", "first 128"), ("reward", "128 kept")])
def test_sides_the_same_as_tokens_say_whether_they_were_cut(task, kept, smollm2_tokenizer, tmp_path):
    """Answers that differ only in what the template trims ('2.' and ' 2. ' under llama2) were skipped as 'the same
    in their first (last) 128 tokens', though nothing was cut; that reason is now kept for pairs that were cut."""
    rows = [{"prompt": "What is 1 + 1?", "chosen": "2.", "rejected": " 2. "}] + [_row(task, i) for i in range(2, 6)]
    path = _write(tmp_path / "t.jsonl", rows)
    skips = _build(task, smollm2_tokenizer, path, **{"data.template": "llama2"}).report.skips
    assert skips["chosen and rejected are the same once rendered to tokens"].locations == [f"{path}:1"]
    long = "word " * 150  # dpo keeps a pair's first tokens, the reward head its sides' last: they differ past the cut
    rows[0] = {"prompt": "Say it.", "chosen": long + "a", "rejected": long + "b"}
    if task == "reward":
        rows[0] = {"prompt": "Say it.", "chosen": "a " + long, "rejected": "b " + long}
    skips = _build(
        task, smollm2_tokenizer, _write(tmp_path / "t.jsonl", rows), **{"data.overlong": "truncate"}
    ).report.skips
    assert skips[f"chosen and rejected are the same in their {kept} tokens"].locations == [f"{path}:1"]


def _text_row(task: str, i: int) -> dict:
    if task == "classify":
        return {"text": f"Message {i}.", "label": "ab"[i % 2]}
    return {
        "chosen": f"Human: What is {i} + {i}? Assistant: {2 * i}.",
        "rejected": f"Human: What is {i} + {i}? Assistant: No.",
    }


@pytest.mark.parametrize("task", ["dpo", "reward", "classify"])
def test_a_text_input_with_a_system_message_is_refused_and_a_system_prompt_noted(task, smollm2_tokenizer, tmp_path):
    """A text (read as it is, without the chat template) has no turn for a system message: a row's `system` beside
    a text input was dropped without a word (refused now, naming the row and field, in an eval file too), and
    data.system_prompt went into the chats only (the report now counts the texts it is not added to)."""
    name = "text" if task == "classify" else "chosen"
    rows = [_text_row(task, 0) | {"system": "Be brief."}] + [_text_row(task, i) for i in range(1, 6)]
    with pytest.raises(
        DataError,
        match=rf"t\.jsonl:1: field 'system' gives a system message, but the row's input \(field '{name}'\) is a text",
    ):
        _build(task, smollm2_tokenizer, _write(tmp_path / "t.jsonl", rows))
    train = _write(tmp_path / "t.jsonl", [_text_row(task, i) for i in range(6)])
    held = _write(tmp_path / "e.jsonl", [_text_row(task, 7) | {"system": "Be brief."}])
    with pytest.raises(DataError, match=r"e\.jsonl:1: field 'system' gives a system message"):
        _build(task, smollm2_tokenizer, train, **{"data.eval": held})
    chats = _write(tmp_path / "c.jsonl", [_row(task, i) for i in range(6)])
    cfg = {"data.system_prompt": "Be exact.", "data.eval_fraction": 0.0}
    data = _build(task, smollm2_tokenizer, chats, **cfg | {"data.train": [chats, train]})
    assert f"option 'data.system_prompt' is not added to the 6 text examples (e.g. {train}:1)" in data.report.summary()
    assert not _build(task, smollm2_tokenizer, chats, **cfg).report.notes


def test_predict_refuses_a_text_with_a_system_message_as_training_does(smollm2_tokenizer, tmp_path):
    from tunelab.data.report import DataReport
    from tunelab.tasks.reward import read_scored

    path = _write(tmp_path / "new.jsonl", [{"text": "Human: Hi. Assistant: Hello.", "system": "Be brief."}])
    with pytest.raises(DataError, match=r"new\.jsonl:1: field 'system' gives a system message, but the row's input"):
        read_scored([path], {}, None, DataReport())


@pytest.mark.parametrize("task", ["dpo", "reward"])
def test_a_pairs_report_counts_pairs_and_the_lengths_of_their_sides(task, smollm2_tokenizer, tmp_path):
    """The data report of a pair task said '6 examples ... -> 12 rows' and 'tokens per example' over 12 lengths (each
    pair's chosen and rejected side): the numbers now say pairs and sides, in the summary and the HTML report."""
    from tunelab.eval.report_inputs import Input
    from tunelab.eval.report_run import data_section

    data = _build(task, smollm2_tokenizer, _write(tmp_path / "t.jsonl", [_row(task, i) for i in range(6)]))
    summary = data.report.summary()
    assert "  train: 6 pairs, 6 used -> 12 rows (chosen and rejected sides), " in summary
    assert "  tokens per side: min " in summary and data.report.lengths.count == 12
    page = data_section(Input("data_report.json", data.report.to_dict()))
    assert '<th class="num">pairs</th>' in page and "Token lengths per side (chosen or rejected)" in page
    assert "tokens per example" not in summary


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize(
    "option, value, message",
    [
        ("train.group_by_length", True, r"^option 'train.group_by_length' is for task sft; a \w+ run does not use it"),
        ("data.train", "source", r"^option 'data.train', entry 1: weighted sources \(mappings\) are read by task sft"),
        ("data.format", "messages", r"^option 'data.format' is for task sft; a \w+ run does not use it"),
        ("data.train_on_prompt", True, r"^option 'data.train_on_prompt' is for task sft; a \w+ run does not use it"),
    ],
)
def test_the_data_recipes_of_sft_are_refused_by_every_other_task(
    task, option, value, message, smollm2_tokenizer, tmp_path
):
    """A dpo run passed over train.group_by_length without a word, and stopped with a TypeError on a weighted
    source; the other tasks refused them (grpo with its own message). Every task now refuses them alike (and
    data.transform, once refused here too, is read by every task: tests/tasks/test_head_transform.py)."""
    train = _write(tmp_path / "t.jsonl", [_row(task, i) for i in range(6)])
    value = [{"path": train, "weight": 2.0}] if value == "source" else value
    with pytest.raises(ConfigError, match=message):
        _build(task, smollm2_tokenizer, train, **{option: value})


def test_a_grpo_run_reads_data_transform_as_the_other_tasks_do(smollm2_tokenizer, tmp_path):
    """grpo refused data.transform, though its reader takes it; its prompts now go through the function too (what
    the rewards receive: tests/tasks/test_head_transform.py)."""
    (tmp_path / "ask.py").write_text("def ask(row):\n    return {'prompt': 'Please: ' + row['prompt']}\n")
    train = _write(tmp_path / "t.jsonl", [_row("grpo", i) for i in range(6)])
    data = _build("grpo", smollm2_tokenizer, train, **{"data.transform": f"{tmp_path / 'ask.py'}:ask"})
    prompts = [row.prompt for row in data.train + data.eval]
    assert len(prompts) == 6 and all(p.startswith("Please: What is ") for p in prompts)


def test_a_column_mapped_to_another_field_is_that_fields_only(smollm2_tokenizer, tmp_path):
    """data.fields {prompt: text} over a classify file with a `text` column read the column as a raw text (the
    field `text` is tried first, under its own name), so the mapping was passed over and no row went through the chat
    template; the column is now the prompt it was mapped to, in training and in tunelab predict alike."""
    from tunelab.data.report import DataReport
    from tunelab.tasks.classify import read_labelled

    train = _write(tmp_path / "t.jsonl", [{"text": f"What is {i} + {i}?", "label": "ab"[i % 2]} for i in range(6)])
    data = _build("classify", smollm2_tokenizer, train, **{"data.fields": {"prompt": "text"}})
    assert data.facts["input"] == "chat" and data.report.template != "none (text only)"
    assert "<|im_start|>user\nWhat is 0 + 0?" in smollm2_tokenizer.decode(data.train[0].input_ids)
    (row,) = read_labelled([train], {"prompt": "text"}, None, DataReport(), require_label=False, lenient=True)[:1]
    assert row.input.messages == [{"role": "user", "content": "What is 0 + 0?"}]


@pytest.mark.parametrize("task", TASKS)
def test_an_instruction_takes_its_rows_input_as_in_sft(task, smollm2_tokenizer, tmp_path):
    """LLaMA-Factory's alpaca preference rows give `instruction` and `input`: dpo, reward and grpo read the
    instruction alone and left the input out of every prompt without a word (classify and sft join the two)."""
    rows = []
    for i in range(6):
        row = {k: v for k, v in _row(task, i).items() if k != "prompt"}
        rows.append(row | {"instruction": "Add the two numbers.", "input": f"{i} and {i}"})
    data = _build(task, smollm2_tokenizer, _write(tmp_path / "t.jsonl", rows))
    assert "<|im_start|>user\nAdd the two numbers.\n\n0 and 0<|im_end|>" in smollm2_tokenizer.decode(
        _first_ids(task, data)
    )


@pytest.mark.parametrize("task", TASKS)
def test_an_instruction_takes_its_rows_history_as_in_sft(task, smollm2_tokenizer, tmp_path):
    """LLaMA-Factory's alpaca rows give earlier turns as `history` ([instruction, response] pairs); sft puts them
    before the row's own, the other tasks left them out of the prompt without a word."""
    rows = [
        {k: v for k, v in _row(task, i).items() if k != "prompt"} | {"instruction": "Add 2 and 2."} for i in range(6)
    ]
    rows[0]["history"] = [["Can you add?", "Yes."]]
    shown = smollm2_tokenizer.decode(
        _first_ids(task, _build(task, smollm2_tokenizer, _write(tmp_path / "t.jsonl", rows)))
    )
    assert "<|im_start|>user\nCan you add?<|im_end|>\n<|im_start|>assistant\nYes.<|im_end|>\n" in shown
    assert shown.index("Can you add?") < shown.index("Add 2 and 2.")


def test_predict_reads_a_blank_system_prompt_as_training_does():
    """`tunelab predict --text` (and a reward run's --prompt/--answer, and the reward model as a grpo reward function)
    put a data.system_prompt made only of spaces into the input as a system block, and kept a prompt's empty system
    turn, where training adds none and drops it; they now read the input as the training rows were read."""
    from types import SimpleNamespace

    from tunelab.infer.predict import text_input
    from tunelab.tasks.head_data import read_input
    from tunelab.tasks.head_run import scored_input

    question, answer = {"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4."}
    for blank in ("  ", "\n"):
        run = SimpleNamespace(
            chat_input=True, data=SimpleNamespace(system_prompt=blank), info=SimpleNamespace(task="classify")
        )
        trained = read_input({"prompt": "What is 2 + 2?"}, {}, "t.jsonl:1", blank)
        assert text_input(run, "What is 2 + 2?").messages == trained.messages == [question]
        assert scored_input(run, "What is 2 + 2?", "4.").messages == [question, answer]
    told = SimpleNamespace(chat_input=True, data=SimpleNamespace(system_prompt="Be exact."))
    asked = [{"role": "system", "content": ""}, question]
    assert scored_input(told, asked, "4.").messages == [{"role": "system", "content": "Be exact."}, question, answer]


@pytest.mark.parametrize("task", TASKS)
def test_an_input_column_beside_a_prompt_that_is_no_instruction_is_counted_in_a_note(task, smollm2_tokenizer, tmp_path):
    """Only an instruction takes its row's `input` (as sft's alpaca rows do): with {prompt: instruction} on rows that
    also have an input, every input was left out without a word; such rows are now counted, as sft counts them."""
    rows = [
        {k: v for k, v in _row(task, i).items() if k != "prompt"} | {"q": "Add.", "input": f"{i} and {i}"}
        for i in range(6)
    ]
    path = _write(tmp_path / "t.jsonl", rows)
    data = _build(task, smollm2_tokenizer, path, **{"data.fields": {"prompt": "q"}})
    note = next(n for n in data.report.notes if "'input'" in n)
    assert note.startswith(f"{path}: 6 rows have a column 'input' that only an instruction reads (e.g. {path}:1)")
    told = _build(task, smollm2_tokenizer, path, **{"data.fields": {"instruction": "q"}})
    assert not [n for n in told.report.notes if "'input'" in n]
    rows = [row | {"ctx": row.pop("input")} for row in rows]  # a mapped input, beside a prompt, is left out too
    mapped = _build(
        task, smollm2_tokenizer, _write(tmp_path / "m.jsonl", rows), **{"data.fields": {"prompt": "q", "input": "ctx"}}
    )
    assert [n for n in mapped.report.notes if "column 'ctx' (data.fields' input)" in n]


def test_a_reward_pair_cut_to_max_length_keeps_its_system_prompt(smollm2_tokenizer, tmp_path):
    """data.overlong=truncate kept a long pair's last max_length tokens, cutting off its system prompt; the start is
    kept now and the cut taken from the prompt's text."""
    long = " ".join(f"w{i}" for i in range(200))
    rows = [{"system": "Be brief.", "prompt": long, "chosen": "Yes.", "rejected": "No."}]
    rows += [_row("reward", i) for i in range(2, 6)]
    data = _build("reward", smollm2_tokenizer, _write(tmp_path / "t.jsonl", rows), **{"data.overlong": "truncate"})
    row = next(r for r in data.train if len(r.chosen_ids) == 128)
    for ids, answer in ((row.chosen_ids, "Yes."), (row.rejected_ids, "No.")):
        text = smollm2_tokenizer.decode(ids)
        assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n") and answer in text
    assert data.report.total_truncated == 1


@pytest.mark.parametrize("task", TASKS)
def test_split_seed_holds_out_the_same_rows_whatever_the_train_seed(task, smollm2_tokenizer, tmp_path):
    """data.eval_fraction's held-out rows followed train.seed alone: runs of two seeds were scored on other rows."""
    train = _write(tmp_path / "t.jsonl", [_row(task, i) for i in range(40)])
    cfg = load_config(
        None, {"task": task, "data.train": [train], "data.eval_fraction": 0.25, "data.split_seed": 3}
    ).config
    build = {"dpo": build_preferences, "reward": REWARD.build_data, "classify": CLASSIFY.build_data}.get(
        task, lambda c, t, s: build_prompts(c, t, s, [])
    )
    held = [[(r.path, r.line) for r in build(cfg, smollm2_tokenizer, seed).eval] for seed in (1, 2)]
    assert held[0] == held[1] and len(held[0]) == 10
    assert build(cfg, smollm2_tokenizer, 1).report.split_seed == 3


@pytest.mark.parametrize("task", ("dpo", "reward", "classify"))
def test_rows_all_skipped_beside_an_eval_fraction_say_why(task, smollm2_tokenizer, tmp_path):
    """Every row skipped (a pair's sides the same, an empty input) beside data.eval_fraction was refused as
    "data.eval_fraction=0.1 holds out 1 of 0 usable examples of  and leaves none to train on", naming no file and
    no reason. It says there are no usable rows, with the skips and their lines, as without an eval split."""
    row = (
        {"prompt": "Hi?", "chosen": "Same.", "rejected": "Same."} if task != "classify" else {"text": "", "label": "a"}
    )
    train = _write(tmp_path / "t.jsonl", [row] * 4)
    with pytest.raises(DataError) as refused:
        _build(task, smollm2_tokenizer, train, **{"data.eval_fraction": 0.1})
    message = str(refused.value)
    assert message.startswith(f"{train}: no usable training rows."), message
    assert "skipped 4: " in message and f"{train}:1" in message and "holds out" not in message, message


def test_a_reward_pair_with_a_long_answer_keeps_the_answers_cue_and_end(smollm2_tokenizer, tmp_path):
    """data.overlong=truncate kept a long pair's start and last tokens: an answer longer than max_length lost its
    assistant cue and the whole prompt, so the head scored an answer's middle with no sign of whose turn it was. The
    cut keeps the start, the cue and the answer's end (its first tokens go), and a prompt's end where there is room."""
    long = " ".join(f"w{i}" for i in range(300))
    rows = [{"system": "Be brief.", "prompt": "Tell me.", "chosen": long + " yes.", "rejected": long + " no."}]
    rows += [_row("reward", i) for i in range(2, 6)]
    data = _build("reward", smollm2_tokenizer, _write(tmp_path / "t.jsonl", rows), **{"data.overlong": "truncate"})
    row = next(r for r in data.train if len(r.chosen_ids) == 128)
    for ids, end in ((row.chosen_ids, " yes.<|im_end|>"), (row.rejected_ids, " no.<|im_end|>")):
        text = smollm2_tokenizer.decode(ids)
        assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
        assert "<|im_start|>assistant\n" in text and text.rstrip("\n").endswith(end), text[-80:]
    assert data.report.total_truncated == 1


def test_a_cut_keeps_the_prompts_end_before_a_whole_answer_and_skips_what_leaves_no_room():
    from tunelab.tasks.head_fit import Keep, fit, overlong_reason

    ids = list(range(20))  # start 0-1, prompt 2-11, cue 12-13, answer 14-19
    keep = Keep(2, 12, 14)
    assert fit(ids, 12, "truncate", keep) == [0, 1, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    assert fit(ids, 7, "truncate", keep) == [0, 1, 12, 13, 17, 18, 19]
    assert fit(ids, 4, "truncate", keep) is None and "assistant cue (4 tokens)" in overlong_reason(4, keep)
    assert fit(ids, 7, "truncate", Keep(2)) == [0, 1, 15, 16, 17, 18, 19]  # no answer at the end: the tail
    assert fit(ids, 7, "drop", keep) is None and "data.overlong=drop" in overlong_reason(7, keep)


@pytest.mark.parametrize("task", TASKS)
def test_columns_of_text_lists_and_objects_that_no_field_reads_are_noted(task, smollm2_tokenizer, tmp_path):
    """A `note` or `meta` column beside a classify text and label (or a reward or dpo pair) was left out of every row
    without a word, where sft notes it. grpo notes none: its reward functions may read any column."""
    rows = [_row(task, i) | {"note": "checked by Ann", "meta": {"src": "web"}, "id": f"{i}"} for i in range(6)]
    path = _write(tmp_path / "t.jsonl", rows)
    notes = _build(task, smollm2_tokenizer, path).report.notes
    if task == "grpo":
        assert not [n for n in notes if "'note'" in n or "'meta'" in n]
        return
    text, objects = (next(n for n in notes if n.startswith(f"{path}: {kind}")) for kind in ("text in", "lists and"))
    assert text.startswith(
        f"{path}: text in columns that task {task} does not read is left out of its rows: 'note' (6 rows, e.g. {path}:1);"
    )
    field = "text" if task == "classify" else "prompt"
    assert f"To read one as the row's {field}, map {field} to it with data.fields (e.g. {{{field}: note}})" in text
    assert "'id'" not in text
    assert f"'meta' (6 rows, e.g. {path}:1)" in objects and "the text at row['meta']['src']" in objects
    mapped = _build(task, smollm2_tokenizer, path, **{"data.fields": {"system": "note"}}).report.notes
    assert not [n for n in mapped if "text in columns" in n]
