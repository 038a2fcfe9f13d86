"""data/transform.py: loading a user's function file once while it is unchanged, again once edited."""

import os

import pytest

from tunelab.config import load_config
from tunelab.data.report import DataReport, Index, Made, location_path
from tunelab.data.sources import Record
from tunelab.data.transform import apply_transform, load_transform
from tunelab.errors import DataError


def test_an_edit_that_keeps_the_size_and_the_mtime_is_loaded_again(tmp_path):
    script = tmp_path / "rows_edit_same_second.py"
    script.write_text("def clean(row):\n    return {'n': 1}\n")
    stamp = script.stat().st_mtime_ns
    assert load_transform(f"{script}:clean")({}) == {"n": 1}
    script.write_text("def clean(row):\n    return {'n': 2}\n")  # same size, written within the same second
    os.utime(script, ns=(stamp, stamp))
    assert load_transform(f"{script}:clean")({}) == {"n": 2}


def test_an_unchanged_file_runs_its_top_level_code_once(tmp_path):
    script = tmp_path / "rows_run_once.py"
    count = tmp_path / "count"
    script.write_text(f"open({str(count)!r}, 'a').write('x')\n\ndef clean(row):\n    return row\n")
    load_transform(f"{script}:clean")
    load_transform(f"{script}:clean")
    assert count.read_text() == "x"


def test_a_working_directory_module_is_kept_by_its_path_when_the_working_directory_is_on_sys_path(
    tmp_path, monkeypatch
):
    """`python -m tunelab train --data.transform my_rows:clean` puts the working directory on sys.path, so the module
    was found as an importable one and the run's config kept the bare name: `tunelab eval RUN` from another folder
    (or a federated client) could not find it. The file found there is kept by its path, as with `tunelab train`."""
    (tmp_path / "my_rows_on_path.py").write_text("def clean(row):\n    return row\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_config(None, {"data.transform": "my_rows_on_path:clean"}).config
    assert cfg.data.transform == f"{tmp_path / 'my_rows_on_path.py'}:clean"
    assert load_config(None, {"data.transform": "json:loads"}).config.data.transform == "json:loads"


def test_an_exception_without_a_message_is_named_by_its_type_alone(tmp_path):
    """`raise ValueError()` in a transform read 'raised ValueError:  on this row', a colon before nothing."""

    def refuse(row):
        raise ValueError()

    with pytest.raises(DataError, match=r"^t.jsonl:3: data.transform rows:refuse raised ValueError on this row\."):
        apply_transform([Record("t.jsonl", 3, {"a": 1})], refuse, "rows:refuse", DataReport())


def test_a_list_of_rows_makes_one_record_into_several_each_named_and_counted():
    """A transform could return one row or none: a record holding several examples (a conversation tree) could not
    become several rows. A list is now each row's record, named by the record's place and its row, counted in the
    report; an empty list drops the record as None does; an item that is no dict is named."""
    from tunelab.data.report import location

    def split(row):
        return [{"text": t} for t in row["texts"]]

    report = DataReport()
    records = [Record("t.jsonl", 3, {"texts": ["a", "b", "c"]}), Record("t.jsonl", 4, {"texts": []})]
    records.append(Record("t.jsonl", 5, {"texts": ["d"]}))
    out = apply_transform(records, split, "rows:split", report)
    assert [r.row["text"] for r in out] == ["a", "b", "c", "d"]
    assert [location(r.path, r.line) for r in out] == [
        "t.jsonl:3 (data.transform's row 1 of 3)",
        "t.jsonl:3 (data.transform's row 2 of 3)",
        "t.jsonl:3 (data.transform's row 3 of 3)",
        "t.jsonl:5",
    ]
    assert location_path(location("t.jsonl", out[1].line)) == "t.jsonl"
    assert (report.made_from, report.made_rows) == (1, 3)
    assert report.skips["dropped by data.transform rows:split"].locations == ["t.jsonl:4"]
    assert location("t.json", Made(Index(7), 2, 4)) == "t.json[7] (data.transform's row 2 of 4)"
    with pytest.raises(
        DataError, match=r"^t.jsonl:3: data.transform rows:split returned a list of 2 items whose item 2 is a str"
    ):
        apply_transform([Record("t.jsonl", 3, {"texts": []})], lambda row: [{"text": "a"}, "b"], "rows:split", report)


def test_the_rows_of_one_record_are_held_out_together():
    """data.eval_fraction drew examples one at a time: the paths of one conversation tree, which share its first
    turns, fell on both sides, and the eval loss measured recall of the turns trained on. Rows made of one record
    are now held out together; examples of one row each are drawn as before."""
    from tunelab.data.formats import Example
    from tunelab.data.loader import split_eval

    examples = [Example(None, f"t{i}-{k}", "t.jsonl", Made(i, k, 3)) for i in range(1, 11) for k in range(1, 4)]
    for seed in range(5):
        train, held = split_eval(examples, 0.2, seed)
        assert len(held) == 6 and {int(ex.line) for ex in train}.isdisjoint({int(ex.line) for ex in held})
    plain = [Example(None, f"t{i}", "t.jsonl", i) for i in range(1, 31)]
    assert len(split_eval(plain, 0.2, 0)[1]) == 6
    with pytest.raises(DataError, match="held out together"):
        split_eval(examples[:3], 0.2, 0)


def test_every_row_made_of_a_record_is_compared_for_answers_that_disagree():
    """The check of prompts answered otherwise took a record's first row alone (one record, one row, as two sources
    of one file read it): a row data.transform made second was never compared. Each row is now, and two sources
    reading the same record still count it once."""
    from tunelab.data.formats import Example
    from tunelab.data.repeats import note_conflicting

    def chat(answer, question="Q?"):
        return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]

    tree = [Example(chat("first", "Q0?"), None, "t.jsonl", Made(1, 1, 2))]
    tree.append(Example(chat("A"), None, "t.jsonl", Made(1, 2, 2)))
    other = Example(chat("B"), None, "t.jsonl", 2)
    report = DataReport()
    note_conflicting([*tree, other], report)
    assert len(report.notes) == 1 and "2 of the 3 examples ask what another asks" in report.notes[0]
    report = DataReport()
    note_conflicting([tree[1], tree[1], Example(chat("A"), None, "t.jsonl", 3)], report)  # one record read twice
    assert report.notes == []
