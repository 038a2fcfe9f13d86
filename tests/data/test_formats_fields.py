"""Which columns a row's format reads: the data.fields mapping, whose errors name the mapping and the field meant,
and the notes for columns no field reads."""

import pytest

from tunelab.data.formats import check_fields, detect_format
from tunelab.errors import ConfigError, DataError

from .formats_setup import USER_A, convert


def test_fields_mapping():
    row = {"q": "Q", "a": "A"}
    fields = {"prompt": "q", "completion": "a"}
    assert detect_format(row, fields) == "prompt_completion"
    (ex,), _ = convert([row], fields=fields)
    assert ex.messages == USER_A


def test_unknown_field_in_mapping_is_a_config_error():
    with pytest.raises(ConfigError, match="data.fields.*reply.*prompt, completion"):
        convert([{"prompt": "Q", "completion": "A"}], fields={"reply": "a"})


def test_missing_mapped_field_mentions_the_mapping():
    with pytest.raises(
        DataError, match=r"d\.jsonl:1: field 'reply' is missing \(data\.fields maps completion to 'reply'\)"
    ):
        convert([{"prompt": "Q", "answer": "A"}], fmt="prompt_completion", fields={"completion": "reply"})


def test_lists_and_objects_in_unread_columns_are_noted_with_the_column():
    """A column of lists or objects that the format reads as none of its fields (self-instruct's `instances`, which
    hold the answers; a `tools` list beside messages; metadata) was left out of every example without a word: only
    columns of text were noted. Each is now named, with its rows and first place, and how a transform reads a text
    inside it. Empty lists and objects hold nothing to lose."""
    rows = [
        {"question": "Q1", "answer": "A1", "instances": [{"input": "", "output": "out"}], "meta": {"src": "web"}},
        {"question": "Q2", "answer": "A2", "instances": [], "meta": {}},
        {"question": "Q3", "answer": "A3", "instances": [{"input": "x", "output": "y"}], "meta": {"src": "x"}},
    ]
    examples, report = convert(rows)
    assert len(examples) == 3
    (note,) = [n for n in report.notes if "lists and objects" in n]
    assert note.startswith("d.jsonl: lists and objects in columns that the question_answer format does not read")
    assert "'instances' (2 rows, e.g. d.jsonl:1), 'meta' (2 rows, e.g. d.jsonl:1)" in note
    assert "row['instances'][0]['output']" in note
    _, report = convert([{"messages": USER_A, "tools": [{"type": "function"}]}])
    assert any("'tools' (1 row, e.g. d.jsonl:1)" in n for n in report.notes)
    _, report = convert([{"prompt": "Q", "completion": "A", "tags": []}])
    assert report.notes == []


def test_a_fields_mapping_to_missing_columns_names_the_mapping_not_the_format():
    with pytest.raises(DataError) as err:
        convert([{"question": "Q", "answer": "A"}], fields={"prompt": "q", "completion": "a"})
    msg = str(err.value)
    assert "option 'data.fields' maps prompt -> 'q', completion -> 'a'" in msg and "'question', 'answer'" in msg
    assert "cannot tell the data format" not in msg


def test_a_fields_mapping_of_an_optional_field_to_a_column_no_record_has_is_refused():
    """{system: sytem} (a typo for the column 'sys') left every example without its system message, silently; a
    mapping of a required field to a missing column was already refused. A column that some rows have is used."""
    rows = [{"q": "Q", "a": "A", "sys": "Be brief."}, {"q": "Q2", "a": "A2", "sys": "Be kind."}]
    fields = {"prompt": "q", "completion": "a", "system": "sytem"}
    with pytest.raises(
        DataError, match=r"^d\.jsonl: option 'data.fields' maps system -> 'sytem', but no record .*'sys'"
    ):
        convert(rows, fields=fields)
    examples, _ = convert([{"q": "Q", "a": "A"}, rows[0]], fields=fields | {"system": "sys"})
    assert [ex.messages[0]["role"] for ex in examples] == ["user", "system"]
    with pytest.raises(DataError, match=r"maps input -> 'context'"):
        convert([{"instruction": "Q", "output": "A"}], fields={"input": "context"})


def test_a_mapped_field_picks_its_format_over_the_columns_of_another():
    """{text: prompt} on rows with prompt and completion columns trained them as prompt_completion chats, the
    mapping ignored without a word (the formats were tried in a fixed order); a format whose fields data.fields maps
    is now the one read. {prompt: q, completion: a} on rows that also hold messages: the same."""
    rows = [{"prompt": "Once upon a time.", "completion": "The end."}]
    (ex,), report = convert(rows, fields={"text": "prompt"})
    assert ex.text == "Once upon a time." and ex.messages is None and report.formats == {"d.jsonl": "text"}
    row = {
        "messages": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "B"}],
        "q": "Q",
        "a": "A",
    }
    fields = {"prompt": "q", "completion": "a"}
    assert detect_format(row, fields) == "prompt_completion"
    assert convert([row], fields=fields)[0][0].messages == USER_A


def test_a_mapped_field_whose_format_the_row_cannot_fill_is_refused_by_name():
    with pytest.raises(
        DataError, match=r"d\.jsonl:1: option 'data.fields' maps prompt -> 'q', a field of the prompt_completion format"
    ) as err:
        convert([{"q": "Q", "answer": "A"}], fields={"prompt": "q"})
    assert "completion" in str(err.value)


@pytest.mark.parametrize(
    "row, fmt, fields, name",
    [
        ({"prompt": "Q", "completion": "A"}, "prompt_completion", {"text": "prompt"}, "text"),
        ({"prompt": "Q", "completion": "A", "past": []}, "auto", {"history": "past"}, "history"),
        ({"question": "Q", "answer": "A", "ctx": "more"}, "auto", {"input": "ctx"}, "input"),
    ],
)
def test_a_mapping_the_files_format_does_not_read_is_refused_where_the_row_has_its_column(row, fmt, fields, name):
    """A forced data.format, or a detected one, that has no such field left the mapped column out of every example
    without a word (a prompt_completion row's `past` never became its earlier turns)."""
    with pytest.raises(
        DataError, match=rf"d\.jsonl:1: option 'data.fields' maps {name} -> '{fields[name]}', which the .* format"
    ):
        convert([row], fmt=fmt, fields=fields)
    # a file of another format, without the column, leaves the mapping to the files that use it
    assert convert([{"prompt": "Q", "completion": "A"}], fields={"history": "past"})[0][0].messages == USER_A


def test_an_input_or_history_column_the_rows_format_does_not_read_is_counted_in_a_note():
    """{prompt: instruction, completion: response} on GPTeacher's rows (instruction, input, response) trained every
    answer without its input ("width: 5, height: 8"), without a word; the rows that lose one are now counted."""
    rows = [
        {"instruction": "Area of the rectangle?", "input": "width: 5, height: 8", "response": "40"},
        {"instruction": "Say hi.", "input": "", "response": "Hi."},
        {"instruction": "Double it.", "input": "4", "response": "8"},
    ]
    examples, report = convert(rows, fields={"prompt": "instruction", "completion": "response"})
    assert len(examples) == 3
    (note,) = report.notes
    assert note.startswith("d.jsonl: 2 rows have a column 'input' that the prompt_completion format does not read "
                           "(e.g. d.jsonl:1)")  # fmt: skip
    assert "alpaca" in note
    _, report = convert(rows[1:2] + rows[:1], fields={"prompt": "instruction", "completion": "response"})
    assert report.notes[0].startswith("d.jsonl: 1 row has a column 'input' that")  # said "1 rows have"
    _, report = convert(rows, fields={"output": "response"})  # alpaca reads it
    assert not report.notes


def test_text_in_a_column_no_field_reads_is_noted():
    """databricks-dolly's rows (instruction, context, response, category) read with {output: response} trained every
    answer without its context, the passage it answers from, without a word. The columns of text left out are now
    named in a note, with the rows that hold some; a mapped column, numbers, ids, dates (as a .csv file gives them:
    text; pandas' unnamed index column) and empty text are not."""
    rows = [
        {"instruction": "When was Tomoaki born?", "context": "Tomoaki (born 10 July 1981) plays football.",
         "response": "10 July 1981", "category": "closed_qa", "id": 7, "": "0", "date": "2023-04-01"},
        {"instruction": "Name a colour.", "context": " ", "response": "Blue.", "category": "open_qa", "id": 8},
    ]  # fmt: skip
    examples, report = convert(rows, fields={"output": "response"})
    assert len(examples) == 2 and report.notes == [
        "d.jsonl: text in columns that the alpaca format does not read is left out of the examples: 'context' (1 "
        "row, e.g. d.jsonl:1), 'category' (2 rows, e.g. d.jsonl:1); to train on one, map it to a field with "
        "data.fields (e.g. {input: context}: alpaca's input, joined to the instruction), or let data.transform drop "
        "the column to silence this note"
    ]
    examples, report = convert(rows, fields={"output": "response", "input": "context", "system": "category"})
    assert not report.notes and examples[0].messages[1]["content"].endswith("plays football.")


def test_a_column_left_out_of_chats_is_not_told_a_mapping_that_is_refused():
    """An OpenAI-style chat file with a 'lang' column beside 'messages' was told to map it as {input: lang}, alpaca's
    input; the messages format reads no input, so that mapping is refused. The note says what works there."""
    rows = [{"messages": USER_A, "lang": "en"}]
    examples, report = convert(rows)
    assert len(examples) == 1 and len(report.notes) == 1
    note = report.notes[0]
    assert "'lang' (1 row, e.g. d.jsonl:1)" in note and "{input: lang}" not in note
    assert "into a field of the messages format's rows with data.transform" in note
    with pytest.raises(DataError, match="does not read"):  # the mapping the note used to advise
        convert(rows, fields={"input": "lang"})
    # GPTeacher's rows give alpaca's input a column already: mapping another column there would leave it out
    rows = [{"instruction": "Act as a pirate.", "input": "Hello", "response": "Ahoy!", "source": "roleplay"}]
    examples, report = convert(rows, fields={"output": "response"})
    assert len(examples) == 1 and "Hello" in examples[0].messages[0]["content"] and len(report.notes) == 1
    assert "{input: source}" not in report.notes[0] and "alpaca format's rows with data.transform" in report.notes[0]


def test_a_preference_pair_that_sft_leaves_unread_is_noted():
    """LLaMA-Factory's dpo_en_demo.json ({conversations, chosen: {from, value}, rejected: {...}}) read by task sft
    trained on the conversations alone: the chosen answers, objects rather than text, were dropped without a word.
    The note names the pairs and the task that reads them, once (not as two columns of text as well)."""
    prompt = [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}, {"from": "human", "value": "Q2"}]
    rows = [
        {
            "conversations": prompt,
            "chosen": {"from": "gpt", "value": "Good."},
            "rejected": {"from": "gpt", "value": "Bad"},
        },
        {"conversations": prompt[:2], "chosen": "Good.", "rejected": "Bad."},
    ]
    examples, report = convert(rows)
    assert report.notes == [
        "d.jsonl: 2 rows hold a preference pair (columns 'chosen' and 'rejected', e.g. d.jsonl:1) that the sharegpt "
        "format does not read: task sft trains on neither answer; to train on the pairs, set task: dpo (or reward)"
    ]
    mapped = [{"prompt": "Q", "chosen": "Good.", "rejected": "Bad."}]
    (note,) = convert(mapped, fields={"completion": "chosen"})[1].notes  # chosen is read: 'rejected' is text left out
    assert "'rejected' (1 row, e.g. d.jsonl:1)" in note and "preference pair" not in note


def test_a_mapping_the_wrong_way_round_or_misspelt_is_told_the_one_meant():
    """data.fields {response: output} (column first, as a rename reads) and {answr: a} were told only 'maps unknown
    field(s)' and the list of fields; the mapping turned round, or the field meant, is named now."""
    with pytest.raises(ConfigError, match=r"names the field first, then your column: \{output: response\}\?"):
        check_fields({"response": "output"})
    with pytest.raises(ConfigError, match=r"Did you mean 'answer' for 'answr'\?"):
        check_fields({"answr": "a"})


def test_a_mapping_short_of_one_field_or_naming_one_unknown_field_counts_it_in_the_singular():
    """These said 'the record has no column for its other field(s) completion' and 'maps unknown field(s) reply'."""
    with pytest.raises(
        DataError, match=r"no column for its other field completion; .* Map it too \(e\.g\. \{completion: "
    ):
        detect_format({"q": "x", "a": "y"}, {"prompt": "q"})
    with pytest.raises(ConfigError, match=r"maps 1 unknown field \(reply\); the fields you can map"):
        check_fields({"reply": "a"})
    with pytest.raises(ConfigError, match=r"maps 2 unknown fields \(reply, ask\); the fields you can map"):
        check_fields({"reply": "a", "ask": "b"})


def test_the_self_instruct_answers_in_a_list_column_are_noted_through_the_cli(tiny_overrides, capsys, cli_flags):
    """The real self-instruct file read as texts of its instruction: the answers sit in `instances`, a list of
    objects, which no field reads; `tunelab check` says so, naming the column."""
    from pathlib import Path

    from tunelab.cli import main

    path = Path("/work/shared/data/self_instruct/user_oriented_instructions.jsonl")
    if not path.is_file():
        pytest.skip("the shared self-instruct file is not here")
    over = tiny_overrides | {"data.train": [str(path)], "data.fields": '{"text": "instruction"}'}
    assert main(["check", *cli_flags(over), "--data-only"]) == 0
    out = capsys.readouterr().out
    assert f"'instances' (252 rows, e.g. {path}:1)" in out and "row['instances'][0]['input']" in out
