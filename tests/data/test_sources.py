"""Readers for every file type, folders, and the errors for input that cannot be read."""

import gzip
import json
import re
from pathlib import Path

import pytest

from tunelab.data.report import DataReport
from tunelab.data.sources import iter_records, read_records
from tunelab.errors import DataError

from .source_files import write

OASST_PROMPTS = Path("/work/shared/data/oasst_en_100_trees/en_100_text.jsonl")


def test_jsonl_lines_are_one_based_and_blank_lines_skipped(tmp_path):
    p = write(tmp_path / "a.jsonl", '{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", "completion": "d"}\n')
    records = read_records([p])
    assert [(r.line, r.row["prompt"]) for r in records] == [(1, "a"), (3, "c")]
    assert records[0].path == p


def test_json_array_uses_item_index(tmp_path):
    p = write(tmp_path / "a.json", json.dumps([{"text": "x"}, {"text": "y"}], indent=2))
    assert [(r.line, r.row) for r in read_records([p])] == [(0, {"text": "x"}), (1, {"text": "y"})]


def test_json_file_holding_json_lines_is_read_as_jsonl(tmp_path):
    p = write(tmp_path / "a.json", '{"text": "x"}\n{"text": "y"}\n')
    assert [(r.line, r.row["text"]) for r in read_records([p])] == [(1, "x"), (2, "y")]


def test_a_json_file_of_json_lines_names_its_rows_by_line_not_by_item_index(tmp_path):
    """A .json file holding JSON lines is read as the datasets library reads it, but its rows were named `file[N]`, N
    being the line: to a reader the item index, one off. They are `file:line`; an array's items keep `file[index]`."""
    from tunelab.data.formats import to_examples
    from tunelab.data.report import DataReport, location

    p = write(
        tmp_path / "a.json",
        '{"prompt": "q1", "completion": "a1"}\n\n{"prompt": "q2", "completion": ""}\n{"prompt": "q3", "completion": [1]}\n',
    )
    records = read_records([p])
    assert [location(r.path, r.line) for r in records] == [f"{p}:1", f"{p}:3", f"{p}:4"]
    report = DataReport()
    examples = to_examples(records[:2], "auto", {}, None, report)
    assert [location(e.path, e.line) for e in examples] == [f"{p}:1"]
    assert f"empty answer ({p}:3)" in report.summary()
    with pytest.raises(DataError, match=re.escape(f"{p}:4: field 'completion' must be a string")):
        to_examples(records, "auto", {}, None, DataReport())
    array = write(tmp_path / "b.json", json.dumps([{"text": "x"}, {"text": "y"}]))
    assert [location(r.path, r.line) for r in read_records([array])] == [f"{array}[0]", f"{array}[1]"]
    # a file named in capitals is read as .json, and its first item was named as line 0 (B.JSON:0)
    upper = write(tmp_path / "B.JSON", json.dumps([{"text": "x"}, {"text": "y"}]))
    assert [location(r.path, r.line) for r in read_records([upper])] == [f"{upper}[0]", f"{upper}[1]"]


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"text": "x"}\n[1, 2]\n', ":2: expected a JSON object like"),
        ('{"text": "x"}\n{"text": "y" "z"}\n', ":2: not valid JSON (Expecting ',' delimiter at column 14)"),
        ('{"text": "x",\n "label": "a"}\n{"text": "y"}\n', ":1: not valid JSON"),  # one object over two lines
    ],
)
def test_a_bad_row_of_a_json_file_of_json_lines_names_the_line_and_why_it_is_read_so(tmp_path, text, message):
    """The error named the file as `.jsonl` (or the row as `file[N]`): it says the .json file is read as JSON lines."""
    p = write(tmp_path / "a.json", text)
    with pytest.raises(DataError) as err:
        read_records([p])
    assert str(err.value).startswith(f"{p}{message}")
    assert "holds more than one JSON value, so it is read as JSON lines" in str(err.value)


def test_tsv_and_gzip(tmp_path):
    p = tmp_path / "a.tsv.gz"
    with gzip.open(p, "wt") as f:
        f.write("prompt\tcompletion\nhi\tthere\n")
    assert read_records([str(p)])[0].row == {"prompt": "hi", "completion": "there"}


def test_txt_file_is_one_text_record(tmp_path):
    p = write(tmp_path / "book.txt", "Chapter one.\n\nIt begins.\n")
    (record,) = read_records([p])
    assert record.row == {"text": "Chapter one.\n\nIt begins.\n"} and record.line == 1


def test_folder_is_read_recursively_in_sorted_order_ignoring_other_files(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "b.jsonl", '{"text": "b"}\n')
    write(tmp_path / "sub" / "a.txt", "a")
    write(tmp_path / "README.md", "not data")
    assert [r.row["text"] for r in read_records([str(tmp_path)])] == ["b", "a"]


def test_hidden_folders_are_not_read(tmp_path):
    write(tmp_path / "a.jsonl", '{"text": "a"}\n')
    write(tmp_path / ".hidden.jsonl", '{"text": "hidden"}\n')
    (tmp_path / ".ipynb_checkpoints").mkdir()
    write(tmp_path / ".ipynb_checkpoints" / "a-checkpoint.jsonl", '{"text": "a copy"}\n')
    assert [r.row["text"] for r in read_records([str(tmp_path)])] == ["a"]


def test_jsonl_lines_end_at_newlines_only(tmp_path):
    """U+2028, U+2029 and U+0085 may stand unescaped inside a JSON string; str.splitlines would cut the line there."""
    rows = [{"question": "line\u2028sep\u2029para\u0085next?", "answer": "B"}, {"question": "q", "answer": "A"}]
    p = write(tmp_path / "a.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows))
    assert [(r.line, r.row) for r in read_records([p])] == [(1, rows[0]), (2, rows[1])]


def test_text_after_a_json_array_is_named_at_its_line(tmp_path):
    p = write(
        tmp_path / "a.json", json.dumps([{"text": "x"}, {"text": "y"}], indent=2) + "\n]\n"
    )  # a stray ] on line 9
    with pytest.raises(DataError, match=r"a\.json:9: text after the end of the JSON array"):
        read_records([p])


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        read_records([str(tmp_path / "nope.jsonl")])


def test_unknown_extension(tmp_path):
    p = write(tmp_path / "data.xlsx", "")
    with pytest.raises(DataError, match=r"data\.xlsx: unknown file type '\.xlsx'.*\.jsonl"):
        read_records([p])


def test_empty_folder(tmp_path):
    with pytest.raises(DataError, match="holds no data files"):
        read_records([str(tmp_path)])


def test_invalid_json_line_names_line_and_json_error(tmp_path):
    p = write(tmp_path / "a.jsonl", '{"text": "ok"}\n{"text": "broken"\n')
    with pytest.raises(DataError) as err:
        read_records([p])
    msg = str(err.value)
    assert f"{p}:2: not valid JSON" in msg and "Expecting ',' delimiter" in msg and "\n" not in msg


def test_row_that_is_not_an_object_real_file():
    """The OASST prompt file holds one JSON string a line: readable JSON, but not records."""
    with pytest.raises(DataError, match=rf"{OASST_PROMPTS}:1: expected a JSON object .* got a str"):
        read_records([str(OASST_PROMPTS)])


def test_json_that_is_not_an_array(tmp_path):
    p = write(tmp_path / "a.json", '{"test": [], "train": []}')
    with pytest.raises(DataError, match=r"a\.json: a \.json data file must hold an array.*keys hold the arrays"):
        read_records([p])


def test_json_of_splits_one_row_or_rows_under_a_key_is_told_what_it_holds(tmp_path):
    """CLINC150's data_full.json ({train: [[text, intent], ...], val: ...}), SQuAD's {data: [...]} and a file of one
    object were all told only 'extract the array of examples', naming no key and not that the items are no rows."""
    p = write(tmp_path / "a.json", json.dumps({"val": [["hi", "greet"]], "train": [["hey", "greet"], ["bye", "end"]]}))
    with pytest.raises(DataError) as err:
        read_records([p])
    said = str(err.value)
    assert "got an object whose keys hold the arrays: 'val' (1 item), 'train' (2 items)" in said
    assert f"json.dump(json.load(open('{p}'))['train'], open('train.json', 'w'))" in said
    assert 'Its items are lists (["hey", "greet"]), not objects naming their fields' in said
    p = write(tmp_path / "b.json", json.dumps({"data": [{"question": "q", "answer": "a"}]}))
    with pytest.raises(DataError) as err:
        read_records([p])
    assert "'data' (1 item)" in str(err.value) and "not objects" not in str(err.value)
    p = write(tmp_path / "c.json", json.dumps({"question": "q", "answer": "a"}))
    with pytest.raises(DataError, match=r"got one object \(keys question, answer\): a file of one row holds it in an"):
        read_records([p])


def test_non_utf8_file(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"a\.jsonl:2: the file is not UTF-8"):
        read_records([str(p)])


def test_a_nul_byte_is_refused_and_a_utf16_file_without_a_byte_order_mark_named(tmp_path):
    """UTF-16 without a byte order mark is valid UTF-8 (a NUL after every ASCII letter): a .csv was read with NULs in
    its header and refused as a row of the wrong shape, its message full of NULs, and a NUL inside a value was
    trained on. Each is refused naming the line."""
    for name in ("a.csv", "a.jsonl", "a.json", "a.txt"):
        p = tmp_path / name
        p.write_bytes('{"question": "q", "answer": "a"}\n'.encode("utf-16-le"))
        with pytest.raises(DataError, match=rf"{name}:1: the line holds NUL bytes .*UTF-16 text without a byte order"):
            read_records([str(p)])
    p = write(tmp_path / "b.csv", "question,answer\nq1,a1\nq2,a\x002\n")
    with pytest.raises(DataError, match=r"b\.csv:3: the line holds NUL bytes \(character 0\): a text file holds none"):
        read_records([p])
    p = write(tmp_path / "b.txt", "line one\nline\x00 two\n")
    with pytest.raises(DataError, match=r"b\.txt:2: the line holds NUL bytes"):
        read_records([p])


def test_jsonl_files_joined_with_a_byte_order_mark_between_them_are_read(tmp_path):
    """`cat a.jsonl b.jsonl` where b.jsonl was saved with a byte order mark (Notepad, PowerShell) put one at the
    start of a line in the middle, which stopped the run with json's "Unexpected UTF-8 BOM (decode using
    utf-8-sig)"; it is read as the start of the file it was."""
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'{"text": "one"}\n' + "\ufeff".encode() + b'{"text": "two"}\r\n')
    assert [r.row["text"] for r in read_records([str(p)])] == ["one", "two"]


def test_a_json_array_named_jsonl_is_told_to_be_named_json(tmp_path):
    """A JSON array (or indented objects) saved as .jsonl was refused as 'not valid JSON (Expecting value at column
    2)' on line 1, which did not say that the file is one value over many lines; now it does, and says what to do."""
    rows = [{"question": "q", "answer": "a"}] * 2
    for text in (json.dumps(rows, indent=2), json.dumps(rows[0], indent=2) + "\n" + json.dumps(rows[1], indent=2)):
        p = write(tmp_path / "a.jsonl", text)
        with pytest.raises(DataError, match=r"a\.jsonl:1: not valid JSON .*one JSON value written over several line"):
            read_records([p])
    with pytest.raises(
        DataError, match=r"a\.jsonl:1: expected a JSON object .*array of objects.* name the file \.json"
    ):
        read_records([write(tmp_path / "a.jsonl", json.dumps(rows))])
    with pytest.raises(DataError) as err:  # rows written as lists: no word of .json
        read_records([write(tmp_path / "a.jsonl", '["hi", "greet"]\n')])
    assert ".json" not in str(err.value).replace(".jsonl", "")


def test_a_windows_1252_file_shows_the_text_at_fault(tmp_path):
    """A CSV saved by Excel in Windows-1252 was refused with only a byte offset ('invalid start byte at byte 38'),
    which told neither which text nor which encoding; the text around it is now shown as that encoding reads it."""
    p = tmp_path / "a.csv"
    p.write_bytes("instruction,output\r\nPrice?,It costs 5 \u20ac \u2013 caf\xe9\r\n".encode("cp1252"))
    with pytest.raises(DataError) as err:
        read_records([str(p)])
    assert "a.csv:2: the file is not UTF-8 text" in str(err.value)
    with pytest.raises(DataError) as named:  # read with another separator named: the encoding is the fault
        read_records([str(p)], delimiter=";")
    assert str(named.value) == str(err.value)
    assert "as Windows-1252 or Latin-1" in str(err.value) and "'Price?,It costs 5 \u20ac \u2013 caf\xe9'" in str(
        err.value
    )
    assert str(err.value).count("re-save") == 1  # said once: how to re-save it from Windows-1252
    assert "at byte 38 of the file)" in str(err.value) and str(err.value).endswith("with encoding='utf-8'.")


def test_a_utf16_file_is_named_so(tmp_path):
    """Excel's "Unicode Text" export and PowerShell's redirection write UTF-16; the error said 'invalid start byte at
    byte 0' on line 1, which told nothing of why."""
    p = tmp_path / "a.tsv"
    p.write_bytes("question\tanswer\nWhat?\tThat.\n".encode("utf-16"))
    with pytest.raises(DataError, match=r"a\.tsv: the file is UTF-16 text \(it starts with a UTF-16 byte order mark\)"):
        read_records([str(p)])


def test_json_error_position_reads_once(tmp_path):
    p = write(tmp_path / "a.jsonl", '{"question": "unterminated}\n')
    with pytest.raises(DataError) as err:
        read_records([p])
    assert "Unterminated string starting at column 14" in str(err.value) and "at at" not in str(err.value)


def test_a_long_csv_value_a_crlf_text_and_a_json_key_given_twice(tmp_path):
    """A CSV value over 131,072 characters ended in a traceback; a Windows .txt file trained its \\r; a JSON object
    giving a field twice kept the last value silently."""
    long = "word " * 40_000
    p = write(tmp_path / "a.csv", f"question,answer\nq,{long}\n")
    assert read_records([p])[0].row["answer"] == long
    p = tmp_path / "w.txt"
    p.write_bytes(b"Line one.\r\nLine two.\r\n")
    assert read_records([str(p)])[0].row["text"] == "Line one.\nLine two.\n"
    p = write(
        tmp_path / "d.jsonl", '{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": "b", "prompt": "c"}\n'
    )
    with pytest.raises(DataError, match=r"d\.jsonl:2: the object gives the field 'prompt' twice"):
        read_records([p])
    p = write(tmp_path / "e.json", json.dumps([{"text": "x"}]).replace('"x"', '"x", "text": "y"'))
    with pytest.raises(DataError, match=r"e\.json\[0\]: the object gives the field 'text' twice"):  # the item named
        read_records([p])


def test_a_file_given_twice_is_refused_naming_both_entries(tmp_path):
    """It would be read, and trained on, twice without a word: listed twice under other spellings, or listed beside
    the folder that holds it."""
    p = write(tmp_path / "qa.jsonl", '{"text": "a"}\n')
    (tmp_path / "sub").mkdir()
    again = str(tmp_path / "sub" / ".." / "qa.jsonl")
    with pytest.raises(
        DataError,
        match=r"qa\.jsonl: the file is given twice \(entry 1 as '.*qa\.jsonl' and entry 2 as '.*/sub/\.\./qa\.jsonl'\)",
    ):
        read_records([p, again])
    with pytest.raises(DataError, match=r"given twice \(entry 1 as '.*' and entry 2 as '.*qa\.jsonl'\).*Mixtures"):
        read_records([str(tmp_path), p])
    # A config's paths are made absolute as they are read (./qa.jsonl and qa.jsonl alike): the entries tell them apart
    # one spelling, shown once
    with pytest.raises(
        DataError, match=rf"^{re.escape(p)}: the file is given twice \(entries 2 and 3 both name it; "
    ) as e:
        read_records([write(tmp_path / "sub" / "other.jsonl", '{"text": "b"}\n'), p, p])
    assert str(e.value).count(p) == 1
    assert len(read_records([p])) == 1


def test_a_folders_files_of_other_types_are_noted_in_the_report(tmp_path):
    from tunelab.data.report import DataReport

    write(tmp_path / "a.jsonl", '{"text": "a"}\n')
    write(tmp_path / "more.ndjson", '{"text": "b"}\n')
    write(tmp_path / "a.jsonl.bak", '{"text": "c"}\n')
    report = DataReport()
    assert [r.row["text"] for r in read_records([str(tmp_path)], report=report)] == ["a"]
    (note,) = report.notes
    assert note.startswith(f"{tmp_path}: 2 files of other types not read (a.jsonl.bak, more.ndjson)")
    assert "  note: " + note in report.summary()


def test_a_data_folder_holding_a_run_directory_is_refused_naming_the_run(tmp_path):
    """A run written into the data folder (by a config that named its files, not the folder): a later config naming
    the folder read the run's metrics.jsonl as rows, or stopped on its adapter_config.json as a bad .json file."""
    from tunelab.run_info import RunInfo
    from tunelab.rundir import write_info

    write(tmp_path / "qa.jsonl", json.dumps({"prompt": "a", "response": "b"}) + "\n")
    run = tmp_path / "runs" / "old"
    run.mkdir(parents=True)
    write_info(run, RunInfo(base_model="m", method="lora"))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
    with pytest.raises(DataError, match=re.escape(f"holds the tunelab run directory {run} (it has a run.json)")):
        read_records([str(tmp_path)])
    (run / "run.json").write_text('{"not": "a run"}')  # a file of that name that describes no run: read as before
    assert len(read_records([str(tmp_path / "qa.jsonl")])) == 1


def test_a_json_array_is_read_an_item_at_a_time(tmp_path, monkeypatch):
    """A .json array was read whole into memory (and every item parsed) for a source's `take: 5` or a self-check's
    first rows. It is now read a piece at a time: a damaged item past the first rows stops only a reader that gets
    there, and the items, however the pieces cut them (inside a string, an escape, a number), are those json reads."""
    import itertools

    from tunelab.data import json_rows

    monkeypatch.setattr(json_rows, "PIECE", 16)
    rows = [{"text": f"row {i} \u00e9\u2028", "n": 10**i, "x": -1.5e-3, "ok": i % 2 == 0} for i in range(40)]
    rows[7]["text"] = "long " * 50  # an item of many pieces
    p = tmp_path / "a.json"
    p.write_text("\ufeff" + json.dumps(rows, indent=1) + "\n")
    assert [(r.line, r.row) for r in read_records([str(p)])] == list(enumerate(rows))
    p.write_text(json.dumps(rows, indent=1)[:-40] + "\n  {broken\n]")
    read = []
    real = json_rows.text_pieces

    def counted(path, size):
        for piece in real(path, size):
            read.append(piece)
            yield piece

    monkeypatch.setattr(json_rows, "text_pieces", counted)
    first = [r.row for r in itertools.islice(iter_records([str(p)]), 3)]
    assert first == rows[:3] and len("".join(read)) < len(p.read_text()) / 10  # the damaged item is never reached
    with pytest.raises(DataError, match=r"a\.json:\d+: not valid JSON"):
        read_records([str(p)])
    assert [r.row for r in iter_records([str(write(tmp_path / "e.json", " [ ] "))])] == []


@pytest.mark.parametrize(
    "text",
    [
        '[{"a": 1},\n {"a": 2}\n {"a": 3}]',  # a comma missing
        '[{"a": 1},\n {"a": "two\n"}]',  # a line break inside a string
        '[\n  {"a": 1},\n  {"a": tru}\n]',
        '[{"a": 1}, {"a": 2},]',  # a trailing comma
        '[{"a": 1}, {"a": "unterminated}\n]',
        '[{"a": 1},\n\n   {"a": 1 "b": 2}]',
        '[{"a": 1}, {"a": 2}',  # never closed
        '[{"a": 1}] [',  # text after the array
    ],
)
def test_a_broken_json_array_is_named_at_the_line_and_column_json_names(tmp_path, monkeypatch, text):
    """Read a piece at a time (pieces of 8 characters here), a broken array is named where json.loads names it."""
    from tunelab.data import json_rows

    monkeypatch.setattr(json_rows, "PIECE", 8)
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        line, column = exc.lineno, exc.colno
    p = write(tmp_path / "b.json", text)
    with pytest.raises(DataError, match=rf"b\.json:{line}: (not valid JSON|text after the end).* column {column}\b"):
        read_records([p])


@pytest.mark.parametrize("name", ["guide.md", "guide.markdown", "guide.md.gz"])
def test_markdown_is_read_as_one_text_document_as_written(tmp_path, name):
    text = "# Install\n\nRun `pip install x`.\n"
    path = tmp_path / name
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    (record,) = read_records([str(path)])
    assert record.row == {"text": text}
    assert [r.row for r in read_records([str(tmp_path)])] == [{"text": text}]  # a folder of docs
    write(tmp_path / "notes.txt", "plain")
    assert len(read_records([str(tmp_path)])) == 2  # beside .txt documents too


def test_a_folder_of_rows_skips_its_readme_and_notes_it(tmp_path):
    write(tmp_path / "rows.jsonl", '{"text": "a"}\n')
    write(tmp_path / "README.md", "# The dataset card")
    report = DataReport()
    assert [r.row["text"] for r in read_records([str(tmp_path)], report=report)] == ["a"]
    (note,) = [note for note in report.notes if "README.md" in note]
    assert note.startswith(f"{tmp_path}: 1 file that describes the folder not read (README.md)")


def test_a_folder_of_documents_skips_the_files_that_describe_it_and_notes_them(tmp_path):
    """A folder of .txt/.md documents trained on its README.md, LICENSE.txt and SOURCE.md as documents (a folder of
    rows skipped its README.md only, and read a LICENSE.txt as a text row)."""
    for sub in ("sub", "rows", "card"):
        (tmp_path / sub).mkdir()
    write(tmp_path / "a.txt", "Doc one.")
    write(tmp_path / "sub" / "b.md", "# Doc two")
    for name in ("README.md", "LICENSE.txt", "sub/SOURCE.md", "readme_fr.md"):
        write(tmp_path / name, f"about the folder: {name}")
    report = DataReport()
    assert [r.row["text"] for r in read_records([str(tmp_path)], report=report)] == ["Doc one.", "# Doc two"]
    (note,) = report.notes
    assert note.startswith(
        f"{tmp_path}: 4 files that describe the folder not read (LICENSE.txt, README.md, readme_fr.md, sub/SOURCE.md)"
    )
    assert "name the file itself in data.train" in note
    report = DataReport()  # named itself, it is read, and no longer noted
    records = read_records([str(tmp_path), str(tmp_path / "README.md")], report=report)
    assert [r.row["text"] for r in records][-1] == "about the folder: README.md"
    assert "(LICENSE.txt, readme_fr.md, sub/SOURCE.md)" in report.notes[0]
    write(tmp_path / "rows" / "r.jsonl", '{"text": "row"}\n')
    write(tmp_path / "rows" / "LICENSE.txt", "MIT License")
    write(tmp_path / "rows" / "COPYING", "GPL")  # of no type read: noted with the others, not as of another type
    report = DataReport()
    assert [r.row["text"] for r in read_records([str(tmp_path / "rows")], report=report)] == ["row"]
    assert report.notes == [
        f"{tmp_path / 'rows'}: 2 files that describe the folder not read (COPYING, LICENSE.txt): a folder's README, "
        "LICENSE, COPYING, NOTICE, CITATION and SOURCE files are about its data, not part of it; to train on one, "
        "name the file itself in data.train beside the folder"
    ]
    write(tmp_path / "card" / "README.md", "# a card")
    with pytest.raises(DataError, match=r"card: the folder holds no data files \(README\.md describes the folder"):
        read_records([str(tmp_path / "card")])
