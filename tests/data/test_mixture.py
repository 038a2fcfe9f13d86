"""Mixtures: each epoch draws the sources in their weights' proportions (of examples or of tokens), seeded by
(seed, epoch); temperature flattens the shares; the report and the eval sets are per source; group_by_length."""

import collections
import json

import pytest

from tunelab.config import DataConfig, DataSource, load_config
from tunelab.data.batches import make_batches
from tunelab.data.loader import build_datasets, epoch_rows
from tunelab.data.mixture import SourceSpan, plan_mixture, shares
from tunelab.data.render import Rendered
from tunelab.errors import ConfigError, DataError

from ..smollm2_vocab import smollm2_tiny_model_dir, smollm2_tiny_tokenizer  # noqa: F401 (SmolLM2's vocabulary)


def _rows(sizes, lengths):
    """Rows of sources side by side; source i's rows have lengths[i] tokens and path f"s{i}"."""
    rows, spans = [], []
    for i, (n, length) in enumerate(zip(sizes, lengths)):
        spans.append(SourceSpan(f"s{i}", len(rows), n, n * length, None))
        rows += [Rendered([1] * length, [1] * length, f"s{i}", j) for j in range(n)]
    return rows, spans


def _count(drawn, what="rows"):
    counts = collections.Counter()
    for row in drawn:
        counts[row.path] += 1 if what == "rows" else len(row.input_ids)
    return counts


@pytest.mark.parametrize("weights", [(1.0, 1.0, 2.0), (5.0, 0.5, 1.0)])
def test_an_epoch_draws_each_source_in_its_weights_proportion(weights):
    rows, spans = _rows([10, 40, 100], [5, 5, 5])
    for span, w in zip(spans, weights):
        span.weight = w
    mixture = plan_mixture(spans, "examples", 1.0, None)
    for epoch in range(3):
        drawn = mixture.draw(rows, seed=7, epoch=epoch)
        counts = _count(drawn)
        assert len(drawn) == 150  # an epoch has as many rows as the sources together
        for i, w in enumerate(weights):
            assert abs(counts[f"s{i}"] / 150 - w / sum(weights)) <= 1 / 150  # exact up to rounding
    assert mixture.draw(rows, 7, 1) == mixture.draw(rows, 7, 1)  # a pure function of (seed, epoch)


def test_weighed_down_sources_show_another_subset_each_epoch_and_weighed_up_ones_repeat():
    rows, spans = _rows([10, 100], [5, 5])
    spans[0].weight, spans[1].weight = 3.0, 1.0  # 110 rows: 82.5 and 27.5, the tie going to the first source
    mixture = plan_mixture(spans, "examples", 1.0, None)
    assert mixture.drawn == [83, 27]
    seen = [{r.line for r in mixture.draw(rows, 1, e) if r.path == "s1"} for e in range(2)]
    assert len(seen[0]) == 27 and seen[0] != seen[1]
    repeats = collections.Counter(r.line for r in mixture.draw(rows, 1, 0) if r.path == "s0")
    assert sorted(repeats.values()) == [8] * 7 + [9] * 3  # 83 = 8 full passes + 3 more


def test_weights_that_count_tokens():
    rows, spans = _rows([50, 50], [4, 40])  # the second source's rows are 10x longer
    spans[0].weight = spans[1].weight = 1.0
    drawn = plan_mixture(spans, "tokens", 1.0, None).draw(rows, 3, 0)
    tokens = _count(drawn, "tokens")
    assert abs(tokens["s0"] / (tokens["s0"] + tokens["s1"]) - 0.5) < 0.02
    rows_drawn = _count(drawn)
    assert rows_drawn["s0"] > 5 * rows_drawn["s1"]


def test_temperature_flattens_natural_shares():
    rows, spans = _rows([10, 90], [5, 5])
    plain = plan_mixture(spans, "examples", 1.0, None)
    assert plain.drawn == [10, 90]  # no weights, T = 1: the concatenation, every row once
    assert sorted(r.line for r in plain.draw(rows, 0, 0) if r.path == "s1") == list(range(90))
    flat = plan_mixture(spans, "examples", 2.0, None)  # p ~ sqrt(n): sqrt(10) : sqrt(90) = 1 : 3
    assert flat.shares == pytest.approx([0.25, 0.75])
    assert flat.drawn == [25, 75]


def test_shares_at_a_low_temperature_neither_overflow_nor_vanish():
    """w^(1/T) at T 0.01: 100000^100 overflows a float and 0.0001^100 is 0 for both sources; the shares are still
    the limit they tend to (all to the heaviest source) or equal."""
    _, spans = _rows([10, 10], [5, 5])
    spans[0].weight, spans[1].weight = 100000.0, 1.0
    assert shares(spans, "examples", 0.01) == pytest.approx([1.0, 0.0])
    spans[0].weight = spans[1].weight = 0.0001
    assert shares(spans, "examples", 0.01) == [0.5, 0.5]
    _, spans = _rows([1200, 1300], [5, 5])  # no weights: the sizes, 1300^100 overflows too
    ratio = (1200 / 1300) ** 100  # 3.4e-4
    assert shares(spans, "examples", 0.01) == pytest.approx([ratio / (1 + ratio), 1 / (1 + ratio)])


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_a_packed_mixture_reports_the_rows_an_epoch_trains_on(tmp_path, tiny_tokenizer):
    """The train line counts rows before the draw; packed, an epoch is far fewer rows, which the report did not say
    (a plain file's report counts its packed rows)."""
    a = _write(tmp_path / "a.jsonl", [{"question": f"Qa {i}?", "answer": f"Aa {i}."} for i in range(20)])
    b = _write(tmp_path / "b.jsonl", [{"question": f"Qb {i}?", "answer": f"Ab {i}."} for i in range(6)])
    cfg = DataConfig(
        train=[DataSource(path=a, weight=3.0), DataSource(path=b, weight=1.0)], max_length=128, packing=True
    )
    data = build_datasets(cfg, tiny_tokenizer, seed=1)
    packed = len(epoch_rows(data, 1, 0))
    assert packed < data.report.train.rows and data.report.packed_epoch_rows == packed
    assert f"epoch 0 trains on {packed} packed rows" in data.report.summary()


def test_sources_are_read_split_and_reported_on_their_own(tmp_path, tiny_tokenizer):
    a = _write(tmp_path / "a.jsonl", [{"question": f"Qa {i}?", "answer": f"Aa {i}."} for i in range(20)])
    b = _write(tmp_path / "b.jsonl", [{"q": f"Qb {i}?", "a": f"Ab {i}."} for i in range(10)])
    cfg = DataConfig(
        train=[
            DataSource(path=a, weight=1.0),
            DataSource(
                path=b, weight=3.0, fields={"question": "q", "answer": "a"}, system_prompt="Be brief.", name="bee"
            ),
        ],
        eval_fraction=0.2,
        max_length=64,
    )
    data = build_datasets(cfg, tiny_tokenizer, seed=1)
    report = data.report
    assert list(report.sources) == ["a.jsonl", "bee"]
    assert report.sources["a.jsonl"].examples == 16 and report.sources["bee"].examples == 8
    assert report.sources["bee"].share == pytest.approx(0.75) and report.sources["bee"].drawn_rows == 18
    assert {k: len(v) for k, v in data.eval_sets.items()} == {"a.jsonl": 4, "bee": 2}
    assert len(data.eval) == 6 and "mixture (examples)" in report.summary()
    assert "Be brief." in tiny_tokenizer.decode(data.eval_sets["bee"][0].input_ids)
    drawn = epoch_rows(data, 1, 0)
    assert sum(r.path == b for r in drawn) == 18 and len(drawn) == 24


def test_a_split_or_config_of_a_file_source_is_refused(tmp_path, tiny_tokenizer):
    """{path: qa.jsonl, split: validation} trained on all the file's rows, the split option ignored without a word."""
    a = _write(tmp_path / "a.jsonl", [{"question": f"Qa {i}?", "answer": f"Aa {i}."} for i in range(4)])
    for option, said in (({"split": "validation"}, "split 'validation'"), ({"config": "en"}, "config 'en'")):
        cfg = DataConfig(train=[DataSource(path=a, **option)], max_length=64)
        with pytest.raises(ConfigError, match=rf"entry 1 \(.*a\.jsonl\): {said} is read from a hub dataset or"):
            build_datasets(cfg, tiny_tokenizer, seed=1)


def test_plain_paths_are_one_source_read_as_before(tmp_path, tiny_tokenizer):
    a = _write(tmp_path / "a.jsonl", [{"question": f"Qa {i}?", "answer": f"Aa {i}."} for i in range(8)])
    b = _write(tmp_path / "b.jsonl", [{"question": f"Qb {i}?", "answer": f"Ab {i}."} for i in range(8)])
    data = build_datasets(DataConfig(train=[a, b], max_length=64), tiny_tokenizer, seed=1)
    assert data.mixture is None and epoch_rows(data, 1, 0) is data.train and not data.report.sources


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"path": "a.jsonl", "weight": 0}, "weight is 0.0; a weight is a positive number"),
        ({"path": "a.jsonl", "weight": -2}, "weight is -2.0"),
        ({"path": "a.jsonl", "weight": "heavy"}, r"data.train', entry 2, key 'weight' must be float, got 'heavy'"),
        ({"path": "a.jsonl", "hub": "org/x"}, "give exactly one of 'path'"),
        ({"path": "a.jsonl", "wieght": 2}, "unknown key 'wieght'. Did you mean weight?"),
        ({"path": "a.jsonl", "format": "csv"}, "format is 'csv'; allowed values"),
        ({"path": "a.csv", "delimiter": ":"}, "entry 2: delimiter is ':'; allowed values: auto, ,, ;, tab, |"),
        ({"hub": "org/x", "delimiter": ";"}, r"entry 2 \(org/x\): delimiter separates the values of \.csv files"),
    ],
)
def test_bad_sources_are_refused_naming_the_entry(entry, message, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"data": {"train": ["b.jsonl", entry]}}))
    with pytest.raises(ConfigError, match=message):
        load_config(config)


def test_each_source_may_name_its_own_csv_delimiter(tmp_path, tiny_tokenizer):
    """data.delimiter split every .csv file of the run: a mixture of a comma file and a semicolon file (whose values
    hold commas) could not be described. A source's own delimiter now reads its files and its eval file; the others
    keep data.delimiter."""
    (tmp_path / "comma.csv").write_text("question,answer\n" + "".join(f"Qc {i}?,Ac {i}.\n" for i in range(6)))
    semicolon = "question;answer\n" + "".join(f"Price {i},5?;It is {i},50 euros.\n" for i in range(6))
    (tmp_path / "semi.csv").write_text(semicolon)
    (tmp_path / "semi_eval.csv").write_text("question;answer\nPrice 9,5?;It is 9,50 euros.\n")
    config = tmp_path / "run.yaml"
    config.write_text(
        "data:\n  delimiter: ','\n  max_length: 64\n  train:\n    - {path: comma.csv}\n"
        "    - {path: semi.csv, delimiter: ';', eval: semi_eval.csv}\n"
    )
    cfg = load_config(config).config.data
    data = build_datasets(cfg, tiny_tokenizer, seed=1)
    assert {n: s.examples for n, s in data.report.sources.items()} == {"comma.csv": 6, "semi.csv": 6}
    text = tiny_tokenizer.decode(data.eval_sets["semi.csv"][0].input_ids)
    assert "Price 9,5?" in text and "It is 9,50 euros." in text
    cfg.train[1].delimiter = None  # data.delimiter ',' splits the semicolon file: refused, saying what to set
    with pytest.raises(DataError, match=r"semi\.csv:2: .*split by ';', not by data\.delimiter ','.*its own delimiter"):
        build_datasets(cfg, tiny_tokenizer, seed=1)
    cfg.train[1].delimiter, cfg.train[0].delimiter = ";", ";"
    with pytest.raises(
        DataError,
        match=r"comma\.csv:1: the header is one column, 'question,answer'.*not by option 'data\.train', entry 1: delimiter ';'",
    ):
        build_datasets(cfg, tiny_tokenizer, seed=1)


def test_sources_of_files_of_one_name_are_named_by_their_folders(tmp_path, tiny_tokenizer):
    """Two datasets laid out alike (snips/train.jsonl, faq/train.jsonl) took the same source name, and the mixture
    was refused until each entry was given a name; they are now named by their folders."""
    for folder in ("snips", "faq", "more/faq"):
        (tmp_path / folder).mkdir(parents=True)
        _write(
            tmp_path / folder / "train.jsonl", [{"question": f"{folder} {i}?", "answer": f"A {i}."} for i in range(4)]
        )
    paths = [str(tmp_path / folder / "train.jsonl") for folder in ("snips", "faq", "more/faq")]
    cfg = DataConfig(train=[DataSource(path=p) for p in paths], eval_fraction=0.25, max_length=64)
    data = build_datasets(cfg, tiny_tokenizer, seed=1)
    names = ["snips/train.jsonl", f"{tmp_path.name}/faq/train.jsonl", "more/faq/train.jsonl"]
    assert list(data.report.sources) == names and list(data.eval_sets) == names


def test_group_by_length_keeps_the_rows_seeded_and_pads_less():
    rows = [Rendered([1] * n, [1] * n, "f", i) for i, n in enumerate([3, 40, 5, 38, 7, 36, 9, 34] * 8)]

    def padding(batches):
        return sum(int((b["attention_mask"] == 0).sum()) for b in batches)

    def lines(batches):
        return sorted(int(s.rsplit(":", 1)[1]) for b in batches for row in b["sources"] for s in row)

    plain = make_batches(rows, 4, 0, shuffle=True, seed=3, epoch=0)
    grouped = make_batches(rows, 4, 0, shuffle=True, seed=3, epoch=0, group_by_length=True)
    assert lines(grouped) == lines(plain) == list(range(64))  # every row once
    assert padding(grouped) < padding(plain) / 4
    again = make_batches(rows, 4, 0, shuffle=True, seed=3, epoch=0, group_by_length=True)
    assert [b["sources"] for b in again] == [b["sources"] for b in grouped]
    other = make_batches(rows, 4, 0, shuffle=True, seed=3, epoch=1, group_by_length=True)
    assert [b["sources"] for b in other] != [b["sources"] for b in grouped]


def test_a_packed_mixture_packs_each_epochs_draw():
    rows, spans = _rows([6, 6], [10, 30])
    spans[0].weight, spans[1].weight = 2.0, 1.0
    drawn = plan_mixture(spans, "examples", 1.0, 64).draw(rows, 0, 0)
    assert all(sum(r.doc_lengths) == len(r.input_ids) <= 64 for r in drawn)
    lengths = sorted(n for r in drawn for n in r.doc_lengths)
    assert lengths == [10] * 8 + [30] * 4  # 12 rows drawn, 2 : 1


def test_a_repeated_draw_is_packed_once_and_equals_a_fresh_one(monkeypatch):
    """The checks, the planner and the step count each ask for epoch 0: the draw is made (and packed) once, and a
    caller changing its list does not change the next one's."""
    import tunelab.data.mixture as mixture_module

    rows, spans = _rows([6, 6], [10, 30])
    spans[0].weight, spans[1].weight = 2.0, 1.0
    packs = []
    real = mixture_module.pack
    monkeypatch.setattr(mixture_module, "pack", lambda r, n: packs.append(n) or real(r, n))
    fresh = plan_mixture(spans, "examples", 1.0, 64).draw(rows, 0, 0)
    mixture = plan_mixture(spans, "examples", 1.0, 64)
    first = mixture.draw(rows, 0, 0)
    first.clear()
    again = mixture.draw(rows, 0, 0)
    assert len(packs) == 2 and again == fresh
    assert mixture.draw(rows, 0, 1) != again and len(packs) == 3  # another epoch is another draw
    assert mixture.draw(list(rows), 0, 1) and len(packs) == 4  # other rows: drawn anew


def test_a_sources_own_fields_are_named_by_its_entry_not_as_data_fields(tmp_path, tiny_tokenizer):
    """A mapping given in a source's `fields` was refused as "option 'data.fields' maps ...", an option the config
    did not set; the message names the entry of data.train that holds the mapping."""
    from tunelab.errors import DataError

    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"question": f"Q{i}?", "answer": f"A{i}."}) + "\n" for i in range(4)))
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"text": f"t{i}", "label": "x"}) + "\n" for i in range(4)))
    cases = [
        ({"prompt": "q", "completion": "label"}, DataError, "maps prompt -> 'q', but the record has no such column"),
        ({"prompt": "text", "completion": "label", "system": "sys"}, DataError, "maps system -> 'sys', but no record"),
        ({"promt": "text"}, ConfigError, "maps 1 unknown field (promt)"),
    ]
    for fields, error, says in cases:
        sources = [DataSource(path=str(qa)), DataSource(path=str(labels), fields=fields)]
        with pytest.raises(error) as err:
            build_datasets(DataConfig(train=sources, max_length=64), tiny_tokenizer, seed=0)
        assert f"option 'data.train', entry 2, fields {says}" in str(err.value) and "data.fields" not in str(err.value)


def test_a_mixtures_shared_eval_file_is_read_with_the_top_level_fields(tmp_path, tiny_tokenizer):
    """A mixture's data.eval is a file of no source: it is read with data.fields, not a source's own mapping. A file
    written in a source's columns was refused as if it had no format at all ("map them with data.fields"), with no
    word that the source's mapping does not reach it; the message says so now, and where a source's eval file goes."""
    from tunelab.errors import DataError

    def write(name, keys, n):
        (tmp_path / name).write_text("".join(json.dumps({keys[0]: f"Q{i}?", keys[1]: f"A{i}."}) + "\n" for i in range(n)))  # fmt: skip
        return str(tmp_path / name)

    qa, own = write("qa.jsonl", ("question", "answer"), 4), write("own.jsonl", ("q", "a"), 4)
    shared = write("eval.jsonl", ("q", "a"), 2)
    sources = [DataSource(path=qa, fields={}), DataSource(path=own, fields={"prompt": "q", "completion": "a"})]
    with pytest.raises(DataError) as err:
        build_datasets(DataConfig(train=sources, eval=shared, max_length=64), tiny_tokenizer, seed=0)
    says = str(err.value)
    assert "eval.jsonl:1: cannot tell the data format" in says
    assert "data.eval of a mixture is a file of its own, read with the top-level data.format and data.fields" in says
    assert "option 'data.train', entry 2: set them for it, or give the file to that source as its `eval`" in says
    fields = {"prompt": "q", "completion": "a"}
    data = build_datasets(DataConfig(train=sources, eval=shared, fields=fields, max_length=64), tiny_tokenizer, seed=0)
    assert len(data.eval) == 2
    sources[1].eval = shared  # the source's own eval file is read with its mapping
    data = build_datasets(DataConfig(train=sources, max_length=64), tiny_tokenizer, seed=0)
    assert len(data.eval_sets["own.jsonl"]) == 2


def test_a_mixture_of_an_eval_file_and_a_held_out_fraction_says_both(tmp_path, tiny_tokenizer):
    """One source with its own eval file, another split by data.eval_fraction: the data report said `eval (file,
    split seed 3)`, a file named with a seed that drew none of it; it says both kinds now."""
    a = _write(tmp_path / "a.jsonl", [{"question": f"Qa {i}?", "answer": f"Aa {i}."} for i in range(8)])
    b = _write(tmp_path / "b.jsonl", [{"question": f"Qb {i}?", "answer": f"Ab {i}."} for i in range(8)])
    held = _write(tmp_path / "held.jsonl", [{"question": "Qh?", "answer": "Ah."}])
    sources = [DataSource(path=a, eval=held), DataSource(path=b)]
    cfg = DataConfig(train=sources, eval_fraction=0.25, split_seed=3, max_length=64)
    report = build_datasets(cfg, tiny_tokenizer, seed=1).report
    assert report.eval_source == "file and fraction" and "eval (file and fraction, split seed 3)" in report.summary()
    cfg.eval_fraction = 0.0
    report = build_datasets(cfg, tiny_tokenizer, seed=1).report
    assert report.eval_source == "file" and "eval (file):" in report.summary()


def test_a_small_text_source_drawn_many_times_says_how_often(tmp_path, tiny_tokenizer):
    """A few text blocks weighed like a file of 40 examples (mix_by: examples) were drawn 22 times in all an epoch,
    and the report said only "drawn 22 rows": it now says how often each row repeats, with a note past 4 times."""
    qa = _write(tmp_path / "qa.jsonl", [{"question": f"Q {i}?", "answer": f"A {i}."} for i in range(40)])
    docs = tmp_path / "docs.txt"
    docs.write_text(" ".join(f"word{i}" for i in range(60)))
    cfg = DataConfig(
        train=[DataSource(path=str(docs), weight=1.0), DataSource(path=qa, weight=1.0)],
        max_length=48,
        mix_by="examples",
    )
    report = build_datasets(cfg, tiny_tokenizer, seed=1).report
    text = report.sources["docs.txt"]
    assert text.rows == 4 and text.drawn_rows == 22 and text.repeats == 5.5
    summary = report.summary()
    assert "drawn 22 rows (each 5.5 times)" in summary
    assert "note: mixture source 'docs.txt' is repeated 5.5 times an epoch" in summary
    assert "draws 22 rows from its 4" in summary and "data.mix_by: tokens" in summary
    assert "qa.jsonl' is repeated" not in summary and "drawn 22 rows, " in summary  # qa: 22 of its 40, no repeat


def test_a_source_of_one_document_left_without_eval_rows_is_noted(tmp_path, tiny_tokenizer):
    """data.eval_fraction does not split a source of one example (a .txt file): it trained whole, and nothing said
    that this source had no eval rows while the others had."""
    doc = tmp_path / "manual.txt"
    doc.write_text("The manual says boxes open with a code. " * 30)
    qa = _write(tmp_path / "qa.jsonl", [{"question": f"Q {i}?", "answer": f"A {i}."} for i in range(10)])
    cfg = DataConfig(train=[DataSource(path=str(doc)), DataSource(path=qa)], eval_fraction=0.2, max_length=64)
    data = build_datasets(cfg, tiny_tokenizer, seed=0)
    assert "manual.txt" not in data.eval_sets and len(data.eval_sets["qa.jsonl"]) == 2
    note = next(n for n in data.report.notes if "no eval rows" in n)
    assert (
        note.startswith("1 source of one example has no eval rows")
        and "manual.txt (" in note
        and "data.eval_fraction=0.2" in note
    )
    cfg.eval_fraction = 0.0
    assert not any("no eval rows" in n for n in build_datasets(cfg, tiny_tokenizer, seed=0).report.notes)


def test_a_source_line_counts_one_example_and_one_row_in_the_singular(tmp_path, tiny_tokenizer):
    """A mixture source of one short document was reported as '1 examples -> 1 rows', and its eval as 'eval 1 rows'."""
    doc = tmp_path / "manual.txt"
    doc.write_text("The manual says boxes open with a code.")
    qa = _write(tmp_path / "qa.jsonl", [{"question": f"Q {i}?", "answer": f"A {i}."} for i in range(10)])
    cfg = DataConfig(train=[DataSource(path=str(doc)), DataSource(path=qa)], eval_fraction=0.1, max_length=64)
    summary = build_datasets(cfg, tiny_tokenizer, seed=0).report.summary()
    manual = next(line for line in summary.splitlines() if line.strip().startswith("manual.txt:"))
    assert ": 1 example -> 1 row, " in manual and "drawn " in manual
    qa_line = next(line for line in summary.splitlines() if line.strip().startswith("qa.jsonl:"))
    assert ": 9 examples -> 9 rows, " in qa_line and qa_line.endswith(", eval 1 row")


def test_sources_reading_the_same_file_hold_out_the_same_rows(tmp_path, tiny_tokenizer):
    """Two sources of one file (other `take`s) split it each on its own: one trained on rows the other held out for
    eval. A row either holds out is now an eval row of both (or skipped, for a source with its own eval file)."""
    qa = _write(tmp_path / "qa.jsonl", [{"question": f"Q {i}?", "answer": f"A {i}."} for i in range(40)])
    sources = [
        DataSource(path=qa, name="all"),
        DataSource(path=f"{tmp_path}/./qa.jsonl", take=20, name="head"),
    ]
    data = build_datasets(DataConfig(train=sources, eval_fraction=0.2, max_length=64), tiny_tokenizer, seed=0)
    trained = {r.line for r in data.train}
    held = {r.line for rows in data.eval_sets.values() for r in rows}
    assert held and not trained & held
    assert {r.line for r in data.eval_sets["head"]} == held & set(range(1, 21))  # head reads lines 1-20
    assert sum("sources 'all' and 'head' read the same records" in n for n in data.report.notes) == 1
    own = tmp_path / "own.jsonl"
    own.write_text(json.dumps({"question": "Q own?", "answer": "A own."}) + "\n")
    sources[1].eval = str(own)
    data = build_datasets(DataConfig(train=sources, eval_fraction=0.2, max_length=64), tiny_tokenizer, seed=0)
    assert not {r.line for r in data.train} & {r.line for r in data.eval_sets["all"]}
    assert data.report.skips["held out for eval by source 'all', which reads the same file"].count > 0
