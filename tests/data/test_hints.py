"""The mappings and roles suggested for data whose names are not tunelab's (data/hints.py), as the errors say them."""

import pytest

from tunelab.data.formats import to_examples
from tunelab.data.report import DataReport
from tunelab.data.sources import Record
from tunelab.errors import DataError


def convert(rows, fields=None):
    records = [Record("d.jsonl", i + 1, row) for i, row in enumerate(rows)]
    return to_examples(records, "auto", fields or {}, None, DataReport()), None


def test_a_spreadsheet_header_or_extra_columns_still_get_the_mapping_they_need():
    """A CSV whose header names the fields inside longer names (`Task Instruction`, `Model Output`) and GPTeacher's
    rows with two columns of bookkeeping beside them (`source`, `id`) were told the mapping of other rows,
    {prompt: question, completion: answer}; the mapping that reads them is named now."""
    header = {"Task Instruction": "Add 2 and 2.", "Extra Input": "", "Model Output": "4"}
    with pytest.raises(DataError) as err:
        convert([header])
    assert "(e.g. {instruction: Task Instruction, output: Model Output, input: Extra Input})" in str(err.value)
    extra = {"instruction": "Add 2 and 2.", "input": "", "response": "4", "source": "gpteacher", "id": 7}
    with pytest.raises(DataError, match=r"data.fields \(e.g. \{output: response\}\)"):
        convert([extra])
    with pytest.raises(DataError, match=r"data.fields \(e.g. \{prompt: query, completion: response\}\)"):
        convert([{"query": "Q", "response": "A", "lang": "en"}])
    with pytest.raises(DataError, match=r"data.fields \(e.g. \{question: \"Question: asked\"\}\)"):
        convert([{"Question: asked": "Q", "Answer": "A", "note": "x"}])  # Answer is read as answer
    # the hinted mapping reads the rows
    examples, _ = convert([header], fields={"instruction": "Task Instruction", "output": "Model Output"})
    assert len(examples) == 1


@pytest.mark.parametrize(
    ("turn", "said"),
    [
        ({"role": "human", "content": "hi"}, "'human' is how other tools write a user turn: write it as 'user'"),
        ({"role": "User", "content": "hi"}, "'User' is how other tools write a user turn: write it as 'user'"),
        ({"role": "model", "content": "hi"}, "'model' is how other tools write an assistant turn"),
        ({"from": "Human", "value": "hi"}, "'Human' is how other tools write a user turn: write it as 'human'"),
    ],
)
def test_a_role_spelt_as_another_tool_spells_it_is_told_ours(turn, said):
    """A messages row with role 'human' (the sharegpt spelling) or 'User' was refused as an unknown role followed by
    "Tool and function turns are not supported", advice about tools for a turn that is a user's; the error now names
    the role to write. A tool's turn keeps the advice about tools."""
    field = "messages" if "role" in turn else "conversations"
    with pytest.raises(DataError) as err:
        convert(
            [
                {
                    field: [
                        turn,
                        {"role": "assistant", "content": "A"} if "role" in turn else {"from": "gpt", "value": "A"},
                    ]
                }
            ]
        )
    assert (
        "has the unknown role" in str(err.value)
        and said in str(err.value)
        and "Tool and function" not in str(err.value)
    )


def test_fields_inside_a_column_of_objects_are_told_the_transform_that_makes_rows_of_them():
    """self-instruct's seed tasks give `instruction` and `instances: [{input, output}]`: the error told the mapping
    of other rows ({prompt: question, completion: answer}), which no mapping of this row can be."""
    from tunelab.data.transform import apply_transform

    row = {"id": "t1", "instruction": "Add them.", "instances": [{"input": "2 and 2", "output": "4"}], "flag": False}
    with pytest.raises(DataError) as err:
        convert([row])
    hint = "return [{**row, 'input': item['input'], 'output': item['output']} for item in row.pop('instances')]"
    assert "The column 'instances' holds objects with the fields input, output, which no format reads" in str(err.value)
    assert hint in str(err.value)
    made = hint.removeprefix("return ")  # the hinted function's body, run as data.transform runs one
    records = apply_transform([Record("d.jsonl", 1, row)], lambda row: eval(made, {"row": row}), "t", DataReport())
    examples = to_examples(records, "auto", {}, None, DataReport())
    assert [m["content"] for m in examples[0].messages] == ["Add them.\n\n2 and 2", "4"]
