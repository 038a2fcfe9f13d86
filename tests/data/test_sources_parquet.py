"""Parquet files: read in part, gzipped or not, columns named twice or with nulls, and without pyarrow installed."""

import gzip

import pytest

from tunelab.data.report import DataReport
from tunelab.data.sources import iter_records, read_records
from tunelab.errors import DataError

from .source_files import write


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"question": ["q1", "q2"], "answer": ["a1", "a2"]}), p)
    assert [(r.line, r.row) for r in read_records([str(p)])] == [
        (0, {"question": "q1", "answer": "a1"}),
        (1, {"question": "q2", "answer": "a2"}),
    ]


def test_the_first_rows_of_a_parquet_file_are_read_without_the_rest(tmp_path, monkeypatch):
    """A parquet file was read whole (every row group decoded into one table) for a source's `take: 5` or the first
    rows a self-check needs. Rows come a batch at a time now: a damaged last row group stops only a reader that gets
    there, and a column of whole numbers with a null in a later batch is read as integers in every batch."""
    pa = pytest.importorskip("pyarrow")
    import itertools

    import pyarrow.parquet as pq

    from tunelab.data import sources

    monkeypatch.setattr(sources, "PARQUET_BATCH", 4)
    p = tmp_path / "a.parquet"
    n = 12
    answers = [float(i) for i in range(n - 1)] + [None]  # pandas' form of integers with a missing value
    table = pa.table({"question": [f"q{i}" for i in range(n)], "answer": answers})
    pq.write_table(table, p, row_group_size=4)
    assert [r.row["answer"] for r in itertools.islice(iter_records([str(p)]), 2)] == [0, 1]
    assert type(next(iter_records([str(p)])).row["answer"]) is int
    last = pq.ParquetFile(p).metadata.row_group(2).column(0)  # damage the last row group's question column
    data = bytearray(p.read_bytes())
    data[last.data_page_offset : last.data_page_offset + 8] = b"\xff" * 8  # its page header
    p.write_bytes(bytes(data))
    assert [r.row["question"] for r in itertools.islice(iter_records([str(p)]), 5)] == [f"q{i}" for i in range(5)]
    with pytest.raises(DataError, match=r"a\.parquet: cannot read the parquet file"):
        read_records([str(p)])


def test_a_gzipped_parquet_file_is_read_as_the_other_gzipped_types_are(tmp_path):
    """tunelab reads every type it reads as .gz too, but pyarrow took a .parquet.gz file for a damaged one ('Parquet
    magic bytes not found in footer. Either the file is corrupted or this is not a parquet file')."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    plain = tmp_path / "a.parquet"
    pq.write_table(pa.table({"question": ["q1", "q2"], "answer": [10.0, None]}), plain)
    packed = tmp_path / "b.parquet.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert [r.row for r in read_records([str(packed)])] == [r.row for r in read_records([str(plain)])]
    assert read_records([str(packed)])[0].row == {"question": "q1", "answer": 10}


def test_a_parquet_column_named_twice_is_refused_naming_it(tmp_path):
    """pyarrow's read_table stopped with 'Multiple matches for FieldRef.Name(answer) in question: string ...'."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    p = tmp_path / "a.parquet"
    table = pa.Table.from_arrays(
        [pa.array(["q"]), pa.array(["a1"]), pa.array(["a2"])], ["question", "answer", "answer"]
    )
    pq.write_table(table, p)
    with pytest.raises(
        DataError, match=r"a\.parquet: the file names the column 'answer' more than once \(columns 2, 3\)"
    ):
        read_records([str(p)])


def test_a_parquet_integer_column_with_nulls_renders_its_numbers_as_integers(tmp_path):
    """pandas writes an integer column with a missing value as float64 (10 -> 10.0): its answers were trained as
    "10.0". A null stays a missing value (an empty answer, skipped); a float column keeps its floats."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from tunelab.data.formats import to_examples

    p = tmp_path / "a.parquet"
    table = pa.table(
        {
            "question": ["q1", "q2", "q3"],
            "answer": pa.array([10.0, None, -3.0]),  # pandas' form of [10, <NA>, -3]
            "count": pa.array([10, None, 3], pa.int64()),  # pyarrow's and polars' form: ints already
            "score": pa.array([0.5, None, 2.0]),  # a fraction: a float column
            "weight": pa.array([1.0, 2.0, 3.0]),  # no null: pandas kept ints as int64, so these are floats
            "ratio": pa.array([1.0, float("nan"), None]),  # NaN is not a whole number
        }
    )
    pq.write_table(table, p)
    rows = [r.row for r in read_records([str(p)])]
    assert [row["answer"] for row in rows] == [10, None, -3] and type(rows[0]["answer"]) is int
    assert [row["count"] for row in rows] == [10, None, 3]
    assert [row["score"] for row in rows] == [0.5, None, 2.0]
    assert [row["weight"] for row in rows] == [1.0, 2.0, 3.0] and type(rows[0]["weight"]) is float
    assert rows[0]["ratio"] == 1.0 and type(rows[0]["ratio"]) is float
    report = DataReport()
    examples = to_examples(read_records([str(p)]), "question_answer", {}, None, report)
    assert [e.messages[-1]["content"] for e in examples] == ["10", "-3"]
    assert report.total_skipped == 1


def test_parquet_without_pyarrow_says_how_to_install(tmp_path, monkeypatch):
    import sys

    p = write(tmp_path / "a.parquet", "")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow...` raise ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(
        DataError, match=r"a\.parquet: reading \.parquet files needs pyarrow; install it with: pip install"
    ):
        read_records([p])


def test_a_parquet_chat_whose_turns_are_weighted_in_part_reads_the_others_as_unweighted(tmp_path):
    """Arrow gives every turn of a column the keys of all of them: a turn without OpenAI's "weight" reads back with
    "weight": None, and such a file was refused ("messages[0] has weight None"). A null weight is no weight."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from tunelab.data.formats import to_examples

    turns = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Skip me", "weight": 0},
        {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "Learn me"},
    ]
    p = tmp_path / "chats.parquet"
    pq.write_table(pa.Table.from_pylist([{"messages": turns}, {"messages": [turns[0], turns[3]]}]), p)
    records = read_records([str(p)])
    assert records[1].row["messages"][0]["weight"] is None
    first, second = to_examples(records, "auto", {}, None, DataReport())
    assert first.messages == [{k: v for k, v in t.items() if k != "weight" or v == 0} for t in turns]
    assert second.messages == [turns[0], turns[3]]
