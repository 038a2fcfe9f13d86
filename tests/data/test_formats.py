"""Format detection, conversion to examples, skips with locations, and the errors for badly shaped records."""

import re

import pytest

from tunelab.data.formats import LATE_SYSTEM, detect_format, to_examples
from tunelab.data.report import DataReport
from tunelab.data.sources import Record
from tunelab.errors import ConfigError, DataError

from .formats_setup import USER_A, convert


@pytest.mark.parametrize(
    "row, fmt",
    [
        ({"messages": USER_A}, "messages"),
        ({"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}, "sharegpt"),
        ({"instruction": "Q", "input": "", "output": "A"}, "alpaca"),
        ({"prompt": "Q", "completion": "A"}, "prompt_completion"),
        ({"question": "Q", "answer": "A", "id": 3}, "question_answer"),
        ({"text": "Q A"}, "text"),
    ],
)
def test_detect_and_convert_every_format(row, fmt):
    assert detect_format(row, {}) == fmt
    (ex,), _ = convert([row])
    if fmt == "text":
        assert ex.text == "Q A" and ex.messages is None
    else:
        assert ex.messages == USER_A and ex.text is None
    assert (ex.path, ex.line) == ("d.jsonl", 1)


def test_alpaca_input_joins_instruction_with_blank_line():
    (ex,), _ = convert([{"instruction": "Translate.", "input": "Hallo", "output": "Hello"}])
    assert ex.messages[0] == {"role": "user", "content": "Translate.\n\nHallo"}
    # an empty instruction put two blank lines before the input, which the prompt then opened with
    (ex,), _ = convert([{"instruction": "", "input": "Hallo", "output": "Hello"}])
    assert ex.messages[0] == {"role": "user", "content": "Hallo"}


def test_alpaca_history_is_read_as_the_turns_before_the_rows_own():
    """LLaMA-Factory's alpaca rows carry earlier turns as history: [[instruction, response], ...]; the field was
    ignored, so a multi-turn row trained as its last turn alone, without a word."""
    row = {"instruction": "And 3?", "output": "9.", "history": [["Square 2?", "4."]], "system": "Be brief."}
    (ex,), _ = convert([row])
    assert ex.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Square 2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3?"},
        {"role": "assistant", "content": "9."},
    ]
    (ex,), _ = convert([{"instruction": "Q", "output": "A", "history": []}])
    assert ex.messages == USER_A
    with pytest.raises(
        DataError, match=r"d\.jsonl:1: field 'history' must be a list of \[instruction, response\] pairs"
    ):
        convert([{"instruction": "Q", "output": "A", "history": ["Square 2?", "4."]}])


def test_system_prompt_added_only_when_missing():
    rows = [
        {"prompt": "Q", "completion": "A"},
        {"messages": [{"role": "system", "content": "own"}] + USER_A},
        {
            "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}],
            "system": "sharegpt system",
        },
    ]
    examples = [convert([r], system="be brief")[0][0] for r in rows]
    assert [ex.messages[0] for ex in examples] == [
        {"role": "system", "content": "be brief"},
        {"role": "system", "content": "own"},
        {"role": "system", "content": "sharegpt system"},
    ]
    (ex,), _ = convert([rows[0]])
    assert ex.messages[0]["role"] == "user"  # no system_prompt configured: none added
    # an empty system message is none, as "system": "" is in the other formats (it trained an empty system block)
    empty = {"messages": [{"role": "system", "content": " "}] + USER_A}
    assert convert([empty], system="be brief")[0][0].messages[0] == {"role": "system", "content": "be brief"}
    assert convert([{"prompt": "Q", "completion": "A", "system": ""}], system="be brief")[0][0].messages[0] == {
        "role": "system",
        "content": "be brief",
    }
    # ... also without data.system_prompt: it trained an empty system block, where "system": "" trains none
    assert convert([empty])[0][0].messages == USER_A
    assert convert([{"prompt": "Q", "completion": "A", "system": ""}])[0][0].messages == USER_A


def test_an_openai_developer_turn_is_the_system_message_as_serve_reads_it():
    """A messages row with OpenAI's `developer` role was refused as an unknown role, while `tunelab serve` reads a
    request's developer message as the system message; training data now reads it the same way, in every check that
    applies to a system message."""
    developer = {"role": "developer", "content": "Answer briefly."}
    (ex,), _ = convert([{"messages": [developer, *USER_A]}], system="be brief")
    assert ex.messages == [{"role": "system", "content": "Answer briefly."}, *USER_A]
    _, report = convert([{"messages": [*USER_A, developer, *USER_A]}])  # after the first message: skipped, counted
    assert report.skips[LATE_SYSTEM].locations == ["d.jsonl:1"]
    (ex,), _ = convert([{"messages": [{"role": "developer", "content": " "}, *USER_A]}], system="be brief")
    assert ex.messages[0] == {"role": "system", "content": "be brief"}  # a blank one is none, as a system one is


def test_empty_answers_and_texts_are_skipped_with_locations():
    rows = [
        {"prompt": "Q", "completion": "A"},
        {"prompt": "Q", "completion": "  "},
        {"prompt": "Q", "completion": None},
        {"prompt": "Q", "completion": "A"},
    ]
    examples, report = convert(rows)
    assert len(examples) == 2
    skip = report.skips["empty answer"]
    assert skip.count == 2 and skip.locations == ["d.jsonl:2", "d.jsonl:3"]
    assert report.files["d.jsonl"].read == 4 and report.files["d.jsonl"].skipped == 2
    examples, report = convert([{"text": ""}, {"text": "x"}], path="t.json")
    assert len(examples) == 1 and report.skips["empty text"].locations == ["t.json[1]"]


def test_conversations_without_usable_turns_are_skipped():
    rows = [
        {"conversations": [{"from": "human", "value": "only a question"}]},
        {"messages": [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "hi"}]},
        {"messages": USER_A + [{"role": "assistant", "content": ""}]},
    ]
    reasons = []
    for row in rows:
        examples, report = convert([row])
        assert examples == [] and report.files["d.jsonl"].skipped == 1
        reasons += list(report.skips)
    assert reasons == [
        "no assistant message to learn from",
        "conversation does not start with a user message",
        "empty answer",
    ]


def test_undetectable_format_lists_keys_and_formats():
    with pytest.raises(DataError) as err:
        convert([{"query": "Q", "response": "A"}])
    msg = str(err.value)
    assert msg.startswith("d.jsonl:1: cannot tell the data format")
    assert "'query', 'response'" in msg and "prompt_completion (prompt, completion)" in msg and "data.fields" in msg


def test_a_row_one_column_short_of_a_format_is_told_the_mapping_it_needs():
    """GPTeacher's rows (instruction, input, response) were told 'map them with data.fields (e.g. {prompt: question,
    completion: answer})', a mapping for other rows; the one column alpaca lacks is named now."""
    with pytest.raises(DataError, match=r"data.fields \(e.g. \{output: response\}\)"):
        convert([{"instruction": "Add 2 and 2.", "input": "", "response": "4"}])
    with pytest.raises(DataError, match=r"data.fields \(e.g. \{completion: response\}\)"):
        convert([{"prompt": "Add 2 and 2.", "response": "4"}])
    with pytest.raises(DataError, match=r"data.fields \(e.g. \{answer: response\}\)"):
        convert([{"Question": "Add 2 and 2.", "response": "4"}])  # a spreadsheet's header: Question is the question


def test_preference_pairs_given_to_sft_are_told_the_tasks_that_read_them():
    """Anthropic HH rows (chosen, rejected) given to an sft run were told to rename or map their columns, which no
    mapping can fix: they are pairs for task dpo or reward, and the error says so now."""
    with pytest.raises(DataError, match=r"preference pairs: train them with task: dpo \(or a reward model"):
        convert([{"chosen": "Human: Hi Assistant: Hello", "rejected": "Human: Hi Assistant: Go away"}])


def test_missing_field_names_file_line_field_and_expected_fields():
    with pytest.raises(DataError) as err:
        convert([{"prompt": "Q", "completion": "A"}, {"prompt": "Q2"}])
    msg = str(err.value)
    assert msg.startswith("d.jsonl:2: field 'completion' is missing")
    assert "prompt_completion format expects the fields prompt, completion" in msg and "data.fields" in msg


def test_wrong_type_names_field():
    with pytest.raises(DataError, match=r"d\.jsonl:1: field 'answer' must be a string, got a list"):
        convert([{"question": "Q", "answer": ["A", "B"]}])
    (ex,), _ = convert([{"question": "2+2?", "answer": 4}])
    assert ex.messages[1]["content"] == "4"  # numbers are their text


def test_an_object_where_a_text_belongs_is_shown_as_json_with_a_fix_for_its_kind():
    """The error showed Python's repr of the value ("{'a': 1}") and told an object's owner to join lists."""
    with pytest.raises(
        DataError, match=r'd\.jsonl:1: field \'prompt\' must be a string, got a dict \(\{"text": "Q"\}\); put the'
    ):
        convert([{"prompt": {"text": "Q"}, "completion": "A"}])
    with pytest.raises(
        DataError, match=r'field \'answer\' must be a string, got a list \(\["A", "B"\]\); join its items'
    ):
        convert([{"question": "Q", "answer": ["A", "B"]}])


def test_a_sharegpt_system_field_beside_a_system_turn():
    """The field was used only when the conversation had no system turn at all: beside an empty one it was lost (the
    row trained with no system message), beside another one it was ignored, without a word."""
    turns = [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]
    empty = {"conversations": [{"from": "system", "value": ""}] + turns, "system": "Be brief."}
    (ex,), _ = convert([empty])
    assert ex.messages == [{"role": "system", "content": "Be brief."}] + USER_A
    same = {"conversations": [{"from": "system", "value": "Be brief."}] + turns, "system": "Be brief."}
    assert convert([same])[0][0].messages == ex.messages
    with pytest.raises(DataError, match=r"d\.jsonl:1: the row gives its system message twice, differently"):
        convert([{**same, "system": "Be kind."}])


def test_openai_content_parts_are_read_as_their_text():
    """OpenAI's messages may give a content as a list of parts; tunelab serve read them, training refused them ('must
    be a string, got a list'). Text parts are joined; an image part is refused, naming the row, not dropped."""
    parts = [{"type": "text", "text": "Translate: "}, {"type": "text", "text": "Hallo"}]
    (ex,), _ = convert([{"messages": [{"role": "user", "content": parts}, USER_A[1]]}])
    assert ex.messages[0] == {"role": "user", "content": "Translate: Hallo"}
    image = [{"type": "image_url", "image_url": {"url": "http://x/cat.png"}}]
    with pytest.raises(
        DataError, match=r"d\.jsonl:1: field 'messages', turn 1, key 'content', part 1 is .*image_url.* must be text"
    ):
        convert([{"messages": [{"role": "user", "content": image}, USER_A[1]]}])


def test_unknown_roles_are_rejected():
    tool = {"messages": [{"role": "user", "content": "Q"}, {"role": "tool", "content": "{}"}]}
    with pytest.raises(
        DataError,
        match=r"d\.jsonl:1: field 'messages', turn 2 has the unknown role 'tool'; allowed roles: system, developer, user, assistant",
    ):
        convert([tool])
    obs = {"conversations": [{"from": "human", "value": "Q"}, {"from": "observation", "value": "x"}]}
    with pytest.raises(DataError, match=r"field 'conversations', turn 2 has the unknown role 'observation'.*human"):
        convert([obs])
    # an assistant turn that calls a tool has no text (content null): named as a tool turn, not skipped as empty
    call = {"type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    calls = {"messages": [USER_A[0], {"role": "assistant", "content": None, "tool_calls": [call]}]}
    with pytest.raises(
        DataError, match=r"d\.jsonl:1: field 'messages', turn 2 is a turn that calls tools.*not supported"
    ):
        convert([calls])


@pytest.mark.parametrize(
    "row, named",
    [
        (
            {"messages": [USER_A[0], {"role": "assistant", "content": {"a": 1}}]},
            "field 'messages', turn 2, key 'content'",
        ),
        ({"messages": [USER_A[0], {"role": "assistant", "content": "A", "weight": 2}]}, "field 'messages', turn 2 has"),
        (
            {"messages": [USER_A[0], {"role": "assistant", "content": [{"type": "text", "text": ["A"]}]}]},
            "field 'messages', turn 2, key 'content', part 1 is",
        ),
        (
            {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": ["A"]}]},
            "field 'conversations', turn 2, key 'value'",
        ),
        (
            {"instruction": "Q", "output": "A", "history": [["q", "a"], ["q", {"b": 1}]]},
            "field 'history', pair 2, response",
        ),
    ],
)
def test_a_turn_is_named_from_1_as_a_reader_counts(row, named):
    """A bad second turn was named as item 1 (`messages[1].content`), which a reader takes for the first: every
    message names the turns of a row, the parts of a content and the pairs of a history from 1."""
    with pytest.raises(DataError, match=r"^d\.jsonl:1: " + re.escape(named)):
        convert([row])


def test_turn_without_keys_and_non_list_conversation():
    with pytest.raises(DataError, match=r"d\.jsonl:1: field 'messages', turn 1 needs the keys 'role' and 'content'"):
        convert([{"messages": [{"speaker": "user", "text": "Q"}]}])
    with pytest.raises(DataError, match=r"field 'messages' must be a list of turns"):
        convert([{"messages": "Q"}])


def test_forced_format_and_bad_format_option():
    (ex,), _ = convert([{"text": "x", "prompt": "Q", "completion": "A"}], fmt="text")
    assert ex.text == "x"
    with pytest.raises(ConfigError, match="data.format"):
        convert([{"text": "x"}], fmt="chat")


def test_format_detected_per_file():
    report = DataReport()
    records = [Record("a.jsonl", 1, {"text": "doc"}), Record("b.jsonl", 1, {"prompt": "Q", "completion": "A"})]
    examples = to_examples(records, "auto", {}, None, report)
    assert [ex.text is not None for ex in examples] == [True, False]
    assert report.formats == {"a.jsonl": "text", "b.jsonl": "prompt_completion"}


def test_real_oasst_tree_file_is_not_a_known_format():
    """OASST trees must be flattened to conversations first; the error says which keys it saw."""
    from tunelab.data.sources import read_records

    path = "/work/shared/data/oasst_en_100_trees/en_100_tree.jsonl"
    with pytest.raises(
        DataError,
        match=rf"{path}:1: cannot tell the data format from the fields 'message_tree_id', 'tree_state', 'prompt'",
    ):
        to_examples(read_records([path]), "auto", {}, None, DataReport())


def test_null_or_empty_questions_are_counted_skips():
    rows = [
        {"question": None, "answer": "A"},
        {"question": "  ", "answer": "A"},
        {"question": "Q", "answer": "A"},
    ]
    examples, report = convert(rows)
    assert len(examples) == 1 and report.skips["empty question"].locations == ["d.jsonl:1", "d.jsonl:2"]


def test_nan_is_a_missing_value_and_infinity_is_refused():
    """NaN is how pandas and parquet write a missing value (and json reads the bare NaN of Python's json.dumps): an
    empty field, skipped and counted, never the text 'nan'."""
    examples, report = convert([{"question": "Q", "answer": float("nan")}, {"question": "Q", "answer": 1.5}])
    assert len(examples) == 1 and report.skips["empty answer"].locations == ["d.jsonl:1"]
    with pytest.raises(DataError, match=r"d\.jsonl:1: field 'answer' is inf"):
        convert([{"question": "Q", "answer": float("inf")}])


def test_a_lone_surrogate_in_a_field_is_refused_naming_row_and_field():
    """JSON's unpaired "\\ud800" reads as a str that no tokenizer can take (it crashed there with a TypeError)."""
    with pytest.raises(
        DataError, match=r"^d\.jsonl:2: field 'completion': character 3 is U\+D800, a lone UTF-16 surrogate"
    ):
        convert([{"prompt": "Q", "completion": "A"}, {"prompt": "Q", "completion": "ab\ud800"}])
    turns = [{"role": "user", "content": "\udcff"}, {"role": "assistant", "content": "A"}]
    with pytest.raises(DataError, match=r"field 'messages', turn 1, key 'content': .*U\+DCFF.*the byte 0xff"):
        convert([{"messages": turns}])


def test_a_text_row_with_a_system_message_is_refused_as_every_task_refuses_it():
    """A text (continued pretraining) is read as it is, without the chat template: its row's `system` column was
    left out without a word; it is refused now, naming the row and field, as the other tasks' readers refuse it."""
    with pytest.raises(
        DataError,
        match=r"d\.jsonl:1: field 'sys' gives a system message, but the row's input \(field 'text'\) is a text",
    ):
        convert([{"text": "A document.", "sys": "Be brief."}], fields={"system": "sys"})
    (ex,), _ = convert([{"text": "A document.", "system": ""}])
    assert ex.text == "A document."


@pytest.mark.parametrize("blank", [" ", "  \n", "\t"])
def test_a_blank_system_prompt_is_none_in_sft_as_in_every_task(blank):
    """data.system_prompt made only of spaces went into every sft chat as a system block of spaces, where the other
    tasks, predict and chat add none; it is now none in sft too."""
    from tunelab.tasks.head_data import read_input

    for row in ({"prompt": "Q", "completion": "A"}, {"messages": USER_A}, {"instruction": "Q", "output": "A"}):
        assert convert([row], system=blank)[0][0].messages == USER_A
    assert read_input({"prompt": "Q"}, {}, "d.jsonl:1", blank).messages == USER_A[:1]


def test_a_messages_rows_system_field_is_its_system_message_as_in_sharegpt():
    """OpenAI-style rows that give the system message in a column beside `messages` (or {system: sys}) trained
    without it, the column left out without a word; it is read as sharegpt's `system` is."""
    (ex,), _ = convert([{"messages": USER_A, "system": "Be brief."}])
    assert ex.messages == [{"role": "system", "content": "Be brief."}, *USER_A]
    (ex,), _ = convert([{"messages": USER_A, "sys": "Be kind."}], fields={"system": "sys"})
    assert ex.messages[0] == {"role": "system", "content": "Be kind."}
    own = [{"role": "system", "content": "Be terse."}, *USER_A]
    assert convert([{"messages": own, "system": "Be terse."}])[0][0].messages == own
    with pytest.raises(DataError, match=r"d\.jsonl:1: the row gives its system message twice, differently"):
        convert([{"messages": own, "system": "Be brief."}])


def test_a_csv_file_without_a_header_line_is_told_so():
    """A .csv file of question,answer rows with no header line: its first row became the column names and the
    format could not be told, without a word of the missing header."""
    with pytest.raises(DataError, match=r"d\.csv:1: cannot tell the data format .* a name in it looks like data"):
        convert([{"What is the code of box 12?": "q", "It is 1444.": "a"}], path="d.csv")
    with pytest.raises(DataError) as err:  # short names: no such guess
        convert([{"q": "x", "a": "y"}], path="d.csv")
    assert "header" not in str(err.value)
    for first in ({"What is 1?": "What is 2?", "One": "Two"}, {"3": "4", "three": "four"}):  # a question, a number
        with pytest.raises(DataError, match=r"a name in it looks like data"):
            convert([first], path="d.csv")


def test_a_questions_file_given_as_training_or_eval_data_is_told_where_it_goes():
    """company_faq's heldout.jsonl (question, expected, kind) given as data.eval was told to map its columns with
    data.fields: {answer: expected} would take an eval loss on key strings ('1997'), not on answers. The error says
    that such rows are questions for compare and eval, given as eval.questions."""
    with pytest.raises(DataError) as err:
        convert([{"question": "Since when?", "expected": "1997", "kind": "fact"}])
    assert "cannot tell the data format" in str(err.value)
    assert (
        "give the file as eval.questions, asked after training (or, once the run is trained, as eval's data file)"
        in str(err.value)
    )
    with pytest.raises(DataError) as err:  # other rows are not told so
        convert([{"query": "Q", "reply": "A"}])
    assert "eval.questions" not in str(err.value)


def test_the_questions_advice_names_no_callers_spelling_but_its_own(tiny_overrides, tmp_path, cli_flags, capsys):
    """The advice named `tunelab eval RUN_DIR --data FILE` and `evaluate(run_dir, data=file)` to every caller at once;
    read below every command, it names eval.questions and eval's data file alone, on the command line and in Python."""
    import tunelab
    from tunelab.cli import main

    questions = tmp_path / "heldout.jsonl"
    questions.write_text('{"question": "Since when?", "expected": "1997", "kind": "fact"}\n')
    over = tiny_overrides | {"data.eval": str(questions)}
    assert main(["check", "--data-only", *cli_flags(over)]) == 2
    said = capsys.readouterr().err
    assert "give the file as eval.questions" in said
    assert "evaluate(" not in said and "in Python" not in said
    with pytest.raises(DataError) as err:
        tunelab.check(None, over, model=False)
    assert "give the file as eval.questions" in str(err.value)
    assert "tunelab eval" not in str(err.value) and "--data" not in str(err.value)


def test_a_text_file_of_json_lines_is_noted_as_one_document_of_json():
    """A .jsonl file saved as .txt was trained on as one document of braces, quotes and field names, without a word."""
    rows = '{"question": "What is 2 + 2?", "answer": "4."}\n\n{"question": "Who?", "answer": "Ann."}\n'
    examples, report = convert([{"text": rows}], path="qa.txt")
    assert examples[0].text == rows
    (note,) = [n for n in report.notes if "JSON objects" in n]
    assert note.startswith("qa.txt: the text file holds JSON objects, one a line") and "name it .jsonl" in note
    _, report = convert([{"text": 'A config:\n{"lr": 1}\n'}], path="doc.txt")  # a document quoting one
    assert not [n for n in report.notes if "JSON objects" in n]
