"""The one question reader: every row kind, the run's column mapping and system prompt, errors with file and line; and
compare and eval, fed the same answers, giving each the same verdict."""

import json

import pytest

import tunelab.eval.compare as compare_module
import tunelab.eval.evaluate as evaluate_module
from tunelab.api import train
from tunelab.config import DataConfig, DataSource
from tunelab.errors import ConfigError, DataError
from tunelab.eval.compare import compare
from tunelab.eval.evaluate import evaluate_run
from tunelab.eval.questions import Question, read_questions, run_data_config, task_labels
from tunelab.infer.generate import GenerationSettings
from tunelab.infer.run import open_run
from tunelab.run_info import RunInfo
from tunelab.rundir import read_info


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_every_row_kind(tmp_path):
    path = _write(
        tmp_path / "q.jsonl",
        [
            {"question": "Where is the office?", "expected": "Dundee", "kind": "fact"},
            {"question": "Which app?", "expected": "Rootmap", "system": "Be terse."},
            {"question": "freeze my card", "label": "banking"},
            {"question": "What year?", "answer": "Founded in 1997."},
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
            {"question": "Anything?"},
            {"text": "Plain text for the loss."},
        ],
    )
    rows = read_questions(path, DataConfig(system_prompt="You help."))
    assert [q.expected for q in rows] == ["Dundee", "Rootmap", "banking", "Founded in 1997.", "Hello.", None, None]
    assert [q.kind for q in rows] == ["fact", "all", "label", "all", "all", "all", "all"]
    assert [q.is_label for q in rows] == [False, False, True, False, False, False, False]
    # exact match can mean something only where the expected text is a whole answer (or a label)
    assert [q.whole_answer for q in rows] == [False, False, True, True, True, False, False]
    assert rows[0].prompt == [
        {"role": "system", "content": "You help."},
        {"role": "user", "content": "Where is the office?"},
    ]
    assert rows[1].prompt[0] == {"role": "system", "content": "Be terse."} and rows[1].text == "Which app?"
    assert rows[0].example.messages[-1] == {"role": "assistant", "content": "Dundee"}  # the loss is on the expected
    assert rows[5].example is None and rows[6].prompt is None and rows[6].example.text
    assert [q.where for q in rows] == [f"{path}:{i}" for i in range(1, 8)]
    assert task_labels(rows) == {"label": ["banking"]}
    assert Question.ask("Hi?", "You help.").prompt[0]["content"] == "You help."

    mapped = _write(
        tmp_path / "mapped.jsonl", [{"q": "Which app?", "a": "Rootmap."}, {"q": "Where?", "expected": "Dundee"}]
    )
    rows = read_questions(mapped, DataConfig(fields={"question": "q", "answer": "a"}))  # the run's data.fields
    assert [(q.text, q.expected) for q in rows] == [("Which app?", "Rootmap."), ("Where?", "Dundee")]


def test_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "q.jsonl"
    with pytest.raises(DataError, match="question file not found"):
        read_questions(path)
    _write(path, [{"question": "a?", "expected": "a"}, {"question": "b?"}])
    assert read_questions(path)[1].expected is None  # compare asks it unscored
    with pytest.raises(DataError, match=r"q\.jsonl:2: the row has no expected answer"):
        read_questions(path, need_expected=True)  # eval scores every row
    _write(path, [{"prompt": "a?", "chosen": "yes", "rejected": "no"}])  # a dpo run's pair file
    with pytest.raises(DataError, match=r"q\.jsonl:1: a preference pair \(chosen, rejected\) holds no expected answer"):
        read_questions(path, need_expected=True)
    ask = [{"from": "human", "value": "a?"}]  # LLaMA-Factory's pairs: said to lack an expected answer to a question
    _write(
        path,
        [{"conversations": ask, "chosen": {"from": "gpt", "value": "yes"}, "rejected": {"from": "gpt", "value": "no"}}],
    )
    with pytest.raises(DataError, match=r"q\.jsonl:1: a preference pair \(chosen, rejected\) holds no expected answer"):
        read_questions(path, need_expected=True)
    _write(path, [{"expected": "A."}])
    with pytest.raises(DataError, match=r"q\.jsonl:1: .*no question"):
        read_questions(path)
    _write(path, [{"question": "a?", "label": " "}])
    with pytest.raises(DataError, match=r"q\.jsonl:1: field 'label' must be non-empty"):
        read_questions(path)


def test_a_row_that_is_no_question_names_the_columns_not_data_fields(tmp_path):
    """A question row of no known columns was told to map them with data.fields or set data.format, which compare
    and eval read from the run (and data.format not at all); it is told which columns a question file is read from."""
    path = _write(tmp_path / "q.jsonl", [{"q": "a?", "expected": "a"}, {"body": "b?"}])
    with pytest.raises(DataError) as err:
        read_questions(path, DataConfig(fields={"question": "q"}))
    msg = str(err.value)
    assert msg.startswith(f"{path}:2: the row holds no question: give it in a column named question, prompt or")
    assert "(or the columns the run's data.fields maps them to: question -> q). This row has body." in msg
    assert f"Rename its columns in {path}." in msg and "data.format" not in msg and "map them with" not in msg


def test_a_misspelt_column_is_named_not_ignored(tmp_path):
    """{"question": ..., "expect": ...} was asked unscored (compare exited 0 with refusal rates only), and a misspelt
    'kind' scored every row under 'all'. A column spelt like one the reader reads is refused; other columns stay."""
    path = tmp_path / "q.jsonl"
    for row, key, near in (
        ({"question": "Where?", "expect": "Dundee"}, "expect", "expected"),
        ({"question": "Where?", "expected": "Dundee", "kinds": "fact"}, "kinds", "kind"),
        ({"question": "Where?", "expected": "Dundee", "sytem": "Be brief."}, "sytem", "system"),
    ):
        _write(path, [row])
        with pytest.raises(DataError, match=rf"q\.jsonl:1: column '{key}' is not read; did you mean '{near}'\?"):
            read_questions(path)
    _write(path, [{"question": "Where?", "expected": "Dundee", "id": 7, "category": "office", "source": "faq"}])
    assert read_questions(path)[0].expected == "Dundee"
    _write(path, [{"q": "Where?", "expected": "Dundee"}])  # a mapped column is read under its own name
    assert read_questions(path, DataConfig(fields={"question": "q"}))[0].text == "Where?"


def test_labels_written_two_ways_are_refused(tmp_path):
    """Labels 'Spam' and 'spam' were two labels to the scorer, which matches answers whatever their case: every
    answer 'spam' was predicted as 'Spam', and the rows labelled 'spam' all counted wrong (accuracy 0.75 where every
    answer was right)."""
    path = _write(
        tmp_path / "q.jsonl",
        [{"question": "a", "label": "Spam"}, {"question": "b", "label": "ham"}, {"question": "c", "label": "spam"}],
    )
    with pytest.raises(
        DataError, match=r"q\.jsonl:3: the label 'spam' is 'Spam' \(\S*q\.jsonl:1\) written another way"
    ):
        read_questions(path)
    _write(path, [{"question": "a", "label": "Spam", "kind": "x"}, {"question": "c", "label": "spam", "kind": "y"}])
    assert len(read_questions(path)) == 2  # labels of two kinds are two tasks


def test_compare_and_eval_judge_the_same_answers_alike(tiny_run_dir, tmp_path, monkeypatch):
    """Both commands fed the same answers (generation replaced by a table) give every row the same verdict."""
    path = _write(
        tmp_path / "q.jsonl",
        [
            {"question": "Where?", "expected": "Dundee."},  # the final full stop is not required by either
            {"question": "Price?", "expected": "649"},
            {"question": "Lights on", "label": "home"},
            {"question": "Meeting at 3", "label": "work"},
        ],
    )
    answers = {"Where?": "It is in Dundee", "Price?": "£1,649", "Lights on": "homework", "Meeting at 3": "Label: work."}

    def fake(model, tokenizer, template, conversations, settings, progress=None, names=None, generator=None):
        return [answers[c[-1]["content"]] for c in conversations], [False for _ in conversations]

    monkeypatch.setattr(compare_module, "generate_answers", fake)
    monkeypatch.setattr(evaluate_module, "generate_answers", fake)
    run = open_run(tiny_run_dir, device="cpu")
    settings = GenerationSettings(max_new_tokens=2)
    compared = compare(run, read_questions(path), settings)
    evaluated = evaluate_run(run, path, settings, save=False)
    assert [r.tuned_ok for r in compared.rows] == [True, False, False, True]
    assert [r.tuned.correct for r in evaluated.rows] == [True, False, False, True]


def test_a_missing_expected_falls_back_to_the_label(tmp_path):
    """A file with both columns, where a row leaves `expected` empty (null, or NaN as pandas writes it) and gives a
    label, is a label question: the row used to be left unscored, and NaN was read as the expected text 'nan'."""
    path = tmp_path / "q.jsonl"
    path.write_text(
        '{"question": "a", "expected": "Dundee", "label": null}\n'
        '{"question": "b", "expected": null, "label": "spam"}\n'
        '{"question": "c", "expected": NaN, "label": "ham"}\n'
        '{"question": "d", "expected": NaN}\n'
    )
    rows = read_questions(path)
    assert [q.expected for q in rows] == ["Dundee", "spam", "ham", None]
    assert [q.is_label for q in rows] == [False, True, True, False]


def test_numbers_and_flags_are_expected_as_json_writes_them(tmp_path):
    """`"expected": 1000.0` was the text '1000.0', so the answer '1000' scored wrong; labels 1 and 1.0 were two
    classes of one label question; true was 'True'."""
    from tunelab.eval.metrics import correct

    path = tmp_path / "q.jsonl"
    path.write_text(
        '{"question": "a", "expected": 1000.0}\n'
        '{"question": "b", "label": 1}\n'
        '{"question": "c", "label": 1.0}\n'
        '{"question": "d", "expected": true}\n'
        '{"question": "e", "expected": 2.5}\n'
    )
    rows = read_questions(path)
    assert [q.expected for q in rows] == ["1000", "1", "1", "true", "2.5"]
    assert correct("It costs 1000 pounds.", rows[0].expected) and not correct("It costs 100.", rows[0].expected)
    path.write_text('{"question": "f", "expected": Infinity}\n')
    with pytest.raises(DataError, match=r"q\.jsonl:1: field 'expected' is inf"):
        read_questions(path)


def test_a_number_answer_of_a_training_row_and_a_huge_float_are_expected_as_json_writes_them(tmp_path):
    """A question/answer row's answer 1000.0 (its expected text) was '1000.0'; a whole float beyond 2**53 was
    printed as hundreds of digits that are only its rounding."""
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "a", "answer": 1000.0}\n{"question": "b", "expected": 1.5e300}\n')
    assert [q.expected for q in read_questions(path)] == ["1000", "1.5e+300"]


@pytest.mark.parametrize("kind", ["3", "[1, 2]", "true"])
def test_a_kind_that_is_not_text_is_named(tmp_path, kind):
    path = tmp_path / "q.jsonl"
    path.write_text(f'{{"question": "a", "expected": "b", "kind": {kind}}}\n')
    with pytest.raises(DataError, match=r"q\.jsonl:1: field 'kind' must be text"):
        read_questions(path)


def test_a_conversation_of_one_user_turn_is_a_question(tmp_path):
    """A messages row holding only the user's question and an expected answer was refused ("no assistant message
    to learn from"), though a conversation ending with a user turn after an exchange was asked."""
    path = tmp_path / "q.jsonl"
    user = {"role": "user", "content": "What is the fare?"}
    path.write_text(json.dumps({"messages": [user], "expected": "5"}) + "\n")
    (question,) = read_questions(path, need_expected=True)
    assert question.prompt == [user] and question.expected == "5" and question.text == "What is the fare?"


def test_a_blank_system_prompt_is_none_for_every_question_kind(tmp_path):
    """A run's data.system_prompt of spaces only was asked as a system block of spaces before each question of
    `question` + `expected` rows, where training (and the other question rows) add none."""
    path = _write(
        tmp_path / "q.jsonl",
        [
            {"question": "Where?", "expected": "Dundee"},
            {"question": "What year?", "answer": "1997."},
            {"question": "Hm?"},
        ],
    )
    rows = read_questions(path, DataConfig(system_prompt=" \n"))
    assert [q.prompt[0]["role"] for q in rows] == ["user"] * 3
    assert Question.ask("Where?", " ").prompt == [{"role": "user", "content": "Where?"}]


@pytest.mark.parametrize(
    "row",
    [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Fare?"}]},
        {"conversations": [{"from": "human", "value": "Fare?"}]},
    ],
)
def test_a_lone_user_turn_after_a_system_turn_or_in_sharegpt_is_a_question(tmp_path, row):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(row | {"expected": "5"}) + "\n")
    (question,) = read_questions(path, need_expected=True)
    assert question.prompt[-1] == {"role": "user", "content": "Fare?"} and question.expected == "5"


def test_the_system_message_is_read_through_the_runs_fields_or_under_its_own_name(tmp_path):
    """A question row's system message was read from 'system' only: with the run's data.fields {system: sys} (its
    training rows' column), a question file of the same layout was asked with data.system_prompt instead, and a
    training-format row's 'system' was dropped. Both names are read now; a system that is not text is refused."""
    fields = {"system": "sys"}
    path = _write(
        tmp_path / "q.jsonl",
        [
            {"question": "Where?", "expected": "Dundee", "sys": "Be terse."},
            {"question": "Where?", "expected": "Dundee", "system": "Be kind."},
            {"question": "What year?", "answer": "1997.", "system": "Be exact."},
            {"question": "What year?", "answer": "1997.", "sys": "Be short."},
            {"question": "Where?", "expected": "Dundee"},
        ],
    )
    rows = read_questions(path, DataConfig(fields=fields, system_prompt="You help."))
    assert [q.prompt[0]["content"] for q in rows] == ["Be terse.", "Be kind.", "Be exact.", "Be short.", "You help."]
    _write(path, [{"question": "Where?", "expected": "Dundee", "sys": ["Be", "terse."]}])
    with pytest.raises(DataError, match=r"q\.jsonl:1: field 'sys' must be a string, got a list"):
        read_questions(path, DataConfig(fields=fields))


def test_a_dpo_runs_fields_do_not_stop_its_training_format_questions(tmp_path):
    """A dpo run whose data.fields maps chosen and rejected (its pairs' columns) had its eval.questions refused, the
    error saying data.fields mapped unknown fields, as soon as a question row was in a training format."""
    path = _write(tmp_path / "q.jsonl", [{"question": "What year?", "answer": "1997."}])
    (row,) = read_questions(path, DataConfig(fields={"chosen": "better", "rejected": "worse"}))
    assert (row.text, row.expected) == ("What year?", "1997.")


def test_a_question_file_with_canonical_columns_serves_a_run_that_mapped_them(tmp_path):
    """A run trained with data.fields {question: q, answer: a} refused an eval file whose columns are named question
    (and answer): "the row has an expected answer but no question", while classify eval reads `label` when the mapped
    column is absent. A question file falls back to the canonical name the same way."""
    fields = {"question": "q", "answer": "a"}
    path = _write(
        tmp_path / "q.jsonl",
        [
            {"question": "Where?", "expected": "Dundee"},
            {"question": "Which app?", "answer": "Rootmap."},
            {"q": "Who?", "expected": "Ann"},
        ],
    )
    rows = read_questions(path, DataConfig(fields=fields), need_expected=True)
    assert [(q.text, q.expected) for q in rows] == [("Where?", "Dundee"), ("Which app?", "Rootmap."), ("Who?", "Ann")]
    # A column that data.fields gives another field stays that field's: {prompt: question} reads it as the prompt
    (row,) = read_questions(
        _write(tmp_path / "p.jsonl", [{"question": "Why?", "expected": "So."}]),
        DataConfig(fields={"prompt": "question"}),
    )
    assert row.text == "Why?"


def test_a_row_in_the_runs_data_format_is_read_in_it(tmp_path):
    """A run trained with data.format text on rows that also hold prompt and completion read their text; its eval and
    question files detected each row's format on their own, so the same row became a prompt/completion question and
    the eval loss was taken on other tokens than training's. Rows of another format are still detected."""
    doc = {"prompt": "Box 3?", "completion": "Code 1111.", "text": "Box 3 holds code 1111 and a note."}
    path = _write(tmp_path / "q.jsonl", [doc, {"question": "Box 4?", "expected": "1148"}])
    text, asked = read_questions(path, DataConfig(format="text"))
    assert text.prompt is None and text.example.text == doc["text"]
    assert (asked.text, asked.expected) == ("Box 4?", "1148")
    (row,) = read_questions(_write(tmp_path / "p.jsonl", [doc]), DataConfig())
    assert (row.text, row.expected) == ("Box 3?", "Code 1111.")
    mapped = DataConfig(format="question_answer", fields={"question": "q", "answer": "a"})
    (qa,) = read_questions(_write(tmp_path / "m.jsonl", [doc | {"q": "Box 5?", "a": "Code 1185."}]), mapped)
    assert (qa.text, qa.expected) == ("Box 5?", "Code 1185.")


def test_a_csv_file_is_split_by_the_runs_data_delimiter(tmp_path):
    """A run trained on .csv files whose values hold commas set data.delimiter; its question and eval files were
    split at the detected comma instead, and refused ('3 values but the header has 1 columns ... set
    data.delimiter') though the option was set."""
    path = tmp_path / "docs.csv"
    path.write_text("text\nBox 1, the red one, holds 1037 marbles.\n")
    (row,) = read_questions(path, DataConfig(delimiter="tab"))
    assert row.prompt is None and row.example.text == "Box 1, the red one, holds 1037 marbles."


def test_a_transform_module_in_the_working_directory_is_found_by_a_later_command_run_elsewhere(
    tiny_overrides, tmp_path, monkeypatch
):
    """`data.transform: my_rows:upper` found my_rows.py in the working directory of training, but the run's
    config.yaml kept the bare module name: `tunelab eval RUN` from another folder failed to import it. The file is
    kept by its path now, as data.train's files are."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    (work / "my_rows.py").write_text("def upper(row):\n    return row | {'question': row['question'].upper()}\n")
    monkeypatch.chdir(work)
    run = train(None, tiny_overrides | {"data.transform": "my_rows:upper", "train.max_steps": 1}).run_dir
    monkeypatch.chdir(elsewhere)
    held = _write(tmp_path / "q.jsonl", [{"question": "Where?", "expected": "Here"}])
    data = run_data_config(run, read_info(run))
    assert data.transform == f"{work / 'my_rows.py'}:upper"
    assert read_questions(held, data)[0].text == "WHERE?"


def test_a_transform_module_a_later_command_cannot_find_names_the_runs_config(tmp_path, monkeypatch):
    """An older run's config.yaml that names a module of training's working directory failed, from another folder,
    with "option 'data.transform': importing ... failed", not saying that the option is the run's nor how to fix it."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model:\n  name: tiny\ndata:\n  train: [t.jsonl]\n  transform: my_rows:upper\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        run_data_config(run, RunInfo("tiny", "lora"))
    message = str(caught.value)
    assert f"{run / 'config.yaml'}: option 'data.transform'" in message
    assert "Run from the folder that holds it, or name the file by its path (my_rows.py:upper" in message


def test_a_copied_run_whose_transform_file_is_not_at_its_path_says_so_and_how_to_fix_it(tmp_path):
    """A run directory copied to another folder or host keeps its transform's file by the old absolute path; eval
    said the path was 'not found (a path in a YAML config is relative to its folder ...)', wrong advice for a path
    that is absolute. It says now that the file must be there and how to name it where it is; a path relative to the
    run's config.yaml is read from the run directory."""
    run = tmp_path / "copied-run"
    run.mkdir()
    config = "model:\n  name: tiny\ndata:\n  train: [t.jsonl]\n  transform: {}\n"
    (run / "config.yaml").write_text(config.format("/elsewhere/host/rows.py:shape"))
    with pytest.raises(ConfigError) as caught:
        run_data_config(run, RunInfo("tiny", "lora"))
    message = str(caught.value)
    assert f"{run / 'config.yaml'}: option 'data.transform': /elsewhere/host/rows.py not found" in message
    assert "Copy the file there, or set the option to where the file is now (e.g. rows.py:shape" in message
    (run / "rows.py").write_text("def shape(row):\n    return row | {'question': row['question'].upper()}\n")
    (run / "config.yaml").write_text(config.format("rows.py:shape"))
    held = _write(tmp_path / "q.jsonl", [{"question": "Where?", "expected": "Here"}])
    assert read_questions(held, run_data_config(run, RunInfo("tiny", "lora")))[0].text == "WHERE?"


def test_a_file_two_mixture_sources_read_with_different_options_is_refused_naming_both(tmp_path):
    """The same file named in two sources of a mixture, each with its own system prompt, was read for eval and
    compare with the first source's options alone, so the rows the second source trained were asked otherwise. Which
    source a row belongs to cannot be told, so the file is refused naming both; sources that read it alike are fine."""
    shared = _write(tmp_path / "shared.jsonl", [{"question": "Where?", "answer": "Here."}])
    sources = [DataSource(path=str(shared), system_prompt="Be brief."), DataSource(path=str(tmp_path / "b.jsonl"))]
    sources.append(DataSource(path=str(shared), system_prompt="Be long.", name="long"))
    with pytest.raises(ConfigError) as caught:
        read_questions(shared, DataConfig(train=sources))
    message = str(caught.value)
    assert (
        f"{shared} is read by two sources of the run's data.train, entries 1 and 3 (shared.jsonl, long), with different system_prompt"
        in message
    )
    sources[2].system_prompt = "Be brief."  # read alike (only its name differs): no doubt how
    (row,) = read_questions(shared, DataConfig(train=sources))
    assert row.prompt[0] == {"role": "system", "content": "Be brief."}


def test_columns_in_other_case_are_read_where_unambiguous(tmp_path, capsys):
    """A spreadsheet's 'Question' and 'Expected' columns were refused with only 'rename its columns'."""
    path = tmp_path / "q.csv"
    path.write_text("Question,EXPECTED,Kind\nWhere is the office?,Dundee,fact\n")
    (q,) = read_questions(path, need_expected=True)
    assert (q.text, q.expected, q.kind) == ("Where is the office?", "Dundee", "fact")
    err = capsys.readouterr().err
    assert f"{path}: columns read whatever their case: 'Question' as 'question', 'EXPECTED' as 'expected'" in err
    # ambiguous: two spellings of one name, which training refuses alike (`data.case`)
    path.write_text("Question,QUESTION,expected\nA?,B?,x\n")
    with pytest.raises(DataError, match=r"q\.csv:2: the columns 'Question' and 'QUESTION' differ only by case"):
        read_questions(path)
