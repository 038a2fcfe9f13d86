"""CSV and TSV files: rows keep their file line, the separator is detected or given, headers and quotes are checked."""

import pytest

from tunelab.data.sources import read_records
from tunelab.errors import DataError

from .source_files import write


def test_csv_rows_carry_their_file_line_even_with_multiline_cells(tmp_path):
    p = write(tmp_path / "a.csv", 'question,answer\n"two\nlines",yes\nq2,"a, b"\n')
    records = read_records([p])
    assert [(r.line, r.row) for r in records] == [
        (2, {"question": "two\nlines", "answer": "yes"}),
        (4, {"question": "q2", "answer": "a, b"}),
    ]

    # a file written on Windows: its line breaks inside a quoted value are the platform's too, read as \n as a .txt
    # file's are (they were kept as \r\n, tokens the same text written elsewhere never has)
    p = tmp_path / "b.csv"
    p.write_bytes(b'question,answer\r\n"two\r\nlines",yes\r\n')
    assert read_records([p])[0].row == {"question": "two\nlines", "answer": "yes"}


def test_a_csv_integer_column_with_empty_cells_keeps_its_text(tmp_path):
    """The same shape as CSV: a value is its text as written (10 stays 10), an empty cell an empty answer."""
    p = write(tmp_path / "a.csv", "question,answer\nq1,10\nq2,\nq3,-3\n")
    assert [r.row["answer"] for r in read_records([p])] == ["10", "", "-3"]


def test_csv_row_with_wrong_number_of_values(tmp_path):
    p = write(tmp_path / "a.csv", "question,answer\nq,a,extra\n")
    with pytest.raises(DataError, match=r"a\.csv:2: the row has 3 values but the header has 2 columns"):
        read_records([p])
    one = write(tmp_path / "b.tsv", "question\tanswer\tsource\nq\ta\tweb\nq only\n")  # said in English: 1 value
    with pytest.raises(DataError, match=r"b\.tsv:3: the row has 1 value but the header has 3 columns"):
        read_records([one])
    with pytest.raises(DataError, match=r"c\.csv:2: the row has 2 values but the header has 1 column \("):
        read_records([write(tmp_path / "c.csv", "text\nhello,world\n")])


def test_csv_duplicate_header_names_are_refused_with_the_column(tmp_path):
    p = write(tmp_path / "a.csv", "question,answer,answer\nq,a1,a2\n")
    with pytest.raises(
        DataError, match=r"a\.csv:1: the header names the column 'answer' more than once \(columns 2, 3\)"
    ):
        read_records([p])
    # a spreadsheet's empty columns beside the data were named "the column '' more than once"
    empty = write(tmp_path / "b.csv", "question,answer,,\nq,a,,\n")
    with pytest.raises(DataError, match=r"b\.csv:1: the header leaves columns 3, 4 unnamed \(empty names, as a sp"):
        read_records([empty])


def test_csv_header_names_padded_with_spaces_are_read_without_them(tmp_path):
    """A header written "prompt, completion, system" named the columns ' completion' and ' system': an sft run then
    left every row's system message out without a word (a column no format reads), and a classify run could not
    find ' label'. The names are read without the spaces around them; two that become one name are refused."""
    p = write(tmp_path / "a.csv", "prompt, completion , system\nQ,A,Be brief.\n")
    assert read_records([p])[0].row == {"prompt": "Q", "completion": "A", "system": "Be brief."}
    t = write(tmp_path / "a.tsv", "text\t label\nhello\tx\n")
    assert read_records([t])[0].row == {"text": "hello", "label": "x"}
    with pytest.raises(DataError, match=r"b\.csv:1: the header names the column 'answer' more than once"):
        read_records([write(tmp_path / "b.csv", "question,answer, answer\nq,a1,a2\n")])


def test_csv_separator_is_detected_or_given(tmp_path):
    p = write(tmp_path / "a.csv", 'question;answer\n"a, b";c\nd;e\n')
    assert [r.row for r in read_records([p])] == [{"question": "a, b", "answer": "c"}, {"question": "d", "answer": "e"}]
    p2 = write(tmp_path / "b.csv", "question|answer\nq|a\n")
    assert read_records([p2], delimiter="|")[0].row == {"question": "q", "answer": "a"}
    with pytest.raises(DataError, match=r"separated by ','.*data\.delimiter"):
        read_records([write(tmp_path / "c.csv", "q,a\n1,2,3\n")], delimiter=",")
    # read as one column 'question|answer', every row was refused later as a format it is not
    with pytest.raises(DataError, match=r"b\.csv:1: the header is one column, 'question\|answer'\. .*split by '\|'"):
        read_records([p2], delimiter=",")


def test_a_file_another_separator_than_data_delimiter_splits_is_told_so(tmp_path):
    """data.delimiter ';' (set for the training file) split a comma-separated eval file too, which stopped with 'a
    quoted value is followed by more text before the separator', advice about quotes; the error now says that the
    header line is split by ',' and that data.delimiter applies to every file."""
    p = write(tmp_path / "e.csv", 'prompt,completion\n"Add 2, 2",4\n')
    with pytest.raises(DataError) as caught:
        read_records([p], delimiter=";")
    message = str(caught.value)
    assert message.startswith(f"{p}:2: a quoted value is followed by more text")
    assert "header line is split by ',', not by data.delimiter ';'" in message and "data.delimiter: auto" in message


def test_an_unclosed_csv_quote_is_refused_not_read_as_one_value(tmp_path):
    """Read leniently, one unclosed quote (row 5 of 100) took the 95 rows after it into one answer: the report said
    5 records and tunelab check passed. Text after a closing quote lost the quotes without a word."""
    rows = [f"q{i},a{i}" for i in range(100)]
    rows[4] = 'q4,"Yes, of course'
    p = write(tmp_path / "a.csv", "question,answer\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"a\.csv:6: a quoted value starts in this row and is never closed"):
        read_records([p])
    p = write(tmp_path / "b.csv", 'question,answer\nq1,"Yes" he said\nq2,b\n')
    with pytest.raises(DataError, match=r"b\.csv:2: a quoted value is followed by more text"):
        read_records([p])
    p = write(tmp_path / "c.csv", 'question,answer\nq1,He said "hi"\nq2,"a ""quoted"" word"\n')
    assert [r.row["answer"] for r in read_records([p])] == ['He said "hi"', 'a "quoted" word']


def test_tsv_quotes_are_characters_as_in_the_sms_spam_file(tmp_path):
    """The SMS Spam Collection is tab-separated without quoting; read with CSV's quotes, a message starting with a
    quote took the next two messages into it, and about 50 others lost their quote marks."""
    lines = ['ham\t"Happy valentines day" I know its early', 'spam\t"Hi ...', "ham\tYeah, give me a call", 'ham\tok"']
    p = write(tmp_path / "sms.tsv", "label\ttext\n" + "\n".join(lines) + "\n")
    records = read_records([p])
    assert [r.row["text"] for r in records] == [line.split("\t")[1] for line in lines]
    assert [r.line for r in records] == [2, 3, 4, 5]


def test_a_tsv_written_with_csv_quoting_is_refused_saying_to_name_it_csv(tmp_path):
    """pandas' to_csv(sep="\\t") quotes a value holding a quote or a line break: read as a .tsv (no quoting), the
    first trained the value with its quotes in and doubled, without a word, and the second stopped with advice to
    quote the value and set data.delimiter, neither of which a .tsv file reads. Named .csv, both are read."""
    said = 'prompt\tcompletion\nGreet\t"He said ""hi"""\n'
    with pytest.raises(
        DataError, match=r"a\.tsv:2: the value of column 'completion' is in quotes .* rename the file \.csv"
    ):
        read_records([write(tmp_path / "a.tsv", said)])
    broken = 'prompt\tcompletion\nTwo lines\t"one\ntwo"\n'
    with pytest.raises(
        DataError, match=r"b\.tsv:3: the row has 1 value but .* if it was written with CSV quoting, rename"
    ):
        read_records([write(tmp_path / "b.tsv", broken)])
    rows = [r.row["completion"] for r in read_records([write(tmp_path / "c.csv", said + broken.split("\n", 1)[1])])]
    assert rows == ['He said "hi"', "one\ntwo"]


def test_a_csv_with_old_mac_line_ends_is_read_with_its_separator_detected(tmp_path):
    """A CSV whose lines end with a lone CR: the header was taken to run to the end of the file, and detecting the
    separator crashed in the csv module."""
    p = tmp_path / "mac.csv"
    p.write_bytes(b'question;answer\r"a, b";c\rd;e\r')
    records = read_records([str(p)])
    assert [r.row for r in records] == [{"question": "a, b", "answer": "c"}, {"question": "d", "answer": "e"}]
    assert [r.line for r in records] == [2, 3]
