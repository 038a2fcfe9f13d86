"""Column names matched whatever their case, in every row format and task, as question files matched them."""

import json

import pytest

from tunelab.config import load_config
from tunelab.data.case import CaseMatch
from tunelab.data.loader import build_datasets
from tunelab.data.sources import Record
from tunelab.errors import DataError
from tunelab.tasks.classify import CLASSIFY
from tunelab.tasks.prompt_data import build_prompts


def _data(path, **over):
    return load_config(None, {"data.train": [str(path)], "data.eval_fraction": 0.0} | over).config


def _parquet(path, rows):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "json", "parquet"])
def test_sft_rows_whose_columns_name_the_fields_in_other_case_are_read_and_noted(suffix, smollm2_tokenizer, tmp_path):
    """A spreadsheet's `Question,Answer` was refused ("cannot tell the data format") where a question file of the
    same columns was read."""
    rows = [{"Question": f"What is {i} + {i}?", "ANSWER": f"{2 * i}."} for i in range(3)]
    path = tmp_path / f"d.{suffix}"
    if suffix == "csv":
        path.write_text("Question,ANSWER\n" + "".join(f'"{r["Question"]}",{r["ANSWER"]}\n' for r in rows))
    elif suffix == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == "json":
        path.write_text(json.dumps(rows))
    else:
        _parquet(path, rows)
    data = build_datasets(_data(path).data, smollm2_tokenizer, 0)
    assert [m["content"] for m in data.examples[1].messages] == ["What is 1 + 1?", "2."]
    said = f"{path}: columns read whatever their case: 'Question' as 'question', 'ANSWER' as 'answer'"
    assert said in data.report.notes


def test_a_mapped_column_and_a_task_field_are_matched_whatever_their_case(smollm2_tokenizer, tmp_path):
    rows = [{"Text": f"message {i}", "category": "ab"[i % 2]} for i in range(4)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _data(path, task="classify", **{"data.fields": {"label": "Category"}})
    data = CLASSIFY.build_data(cfg, smollm2_tokenizer, 0)
    assert data.facts["labels"] == ["a", "b"]
    assert f"{path}: columns read whatever their case: 'Text' as 'text', 'category' as 'Category'" in data.report.notes


def test_grpo_prompts_and_the_rewards_expected_column_are_matched_whatever_their_case(smollm2_tokenizer, tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("Prompt,Expected\nWhat is 2 + 2?,4\nWhat is 3 + 3?,6\n")
    data = build_prompts(_data(path, task="grpo"), smollm2_tokenizer, 0, ["expected"])
    assert [row.row["expected"] for row in data.train] == ["4", "6"]
    assert [row.prompt for row in data.train] == ["What is 2 + 2?", "What is 3 + 3?"]


@pytest.mark.parametrize("task", ["sft", "classify"])
def test_two_columns_that_differ_only_by_case_are_refused_naming_both(task, smollm2_tokenizer, tmp_path):
    row = {"text": "a", "Text": "b", "label": "x"}
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps(row | {"label": "y"}) + "\n")
    cfg = _data(path, task=task)
    with pytest.raises(DataError, match=r"d\.jsonl:1: the columns 'text' and 'Text' differ only by case"):
        if task == "sft":
            build_datasets(cfg.data, smollm2_tokenizer, 0)
        else:
            CLASSIFY.build_data(cfg, smollm2_tokenizer, 0)


def test_a_column_that_two_names_could_mean_and_columns_no_reader_reads_are_left_as_written():
    case = CaseMatch(["question", "Question", "answer"])
    record = Record("d.jsonl", 1, {"QUESTION": "q", "Id": 1, "ID": 2, "Answer": "a"})
    assert case.match(record).row == {"QUESTION": "q", "Id": 1, "ID": 2, "answer": "a"}
    assert case.notes() == ["d.jsonl: columns read whatever their case: 'Answer' as 'answer'"]


def test_two_such_columns_are_read_as_data_fields_names_one():
    """data.fields naming one of `text` and `Text` says which one is meant: the row is read, nothing renamed."""
    case = CaseMatch(["text", "label"], ["Text"])
    record = Record("d.jsonl", 1, {"text": "a", "Text": "b", "label": "x"})
    assert case.match(record) is record
    with pytest.raises(DataError, match="'text' and 'Text' differ only by case"):
        CaseMatch(["text", "label"]).match(record)
