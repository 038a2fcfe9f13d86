"""Rows of the classify task: inputs, labels, the label set, class weights, and the bad input the issue lists."""

import json
from collections import Counter

import pytest
import torch

from tunelab.config import load_config
from tunelab.errors import ConfigError, DataError
from tunelab.tasks.classify import CLASSIFY, UNSEEN


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _cfg(train, **over):
    return load_config(None, {"task": "classify", "data.train": [train], "data.max_length": 64} | over).config


def _build(tokenizer, train, **over):
    return CLASSIFY.build_data(_cfg(train, **over), tokenizer, 0)


def test_labels_are_collected_sorted_and_counted(smollm2_tokenizer, tmp_path):
    rows = [{"text": f"text {i}", "label": ["spam", "ham", "ham"][i % 3]} for i in range(9)]
    data = _build(smollm2_tokenizer, _write(tmp_path / "d.jsonl", rows))
    assert data.facts["labels"] == ["ham", "spam"]
    assert data.facts["label_counts"] == {"ham": 6, "spam": 3}
    assert data.facts["input"] == "text"
    assert [r.label for r in data.train] == [1, 0, 0] * 3
    batch = CLASSIFY.make_batches(data.train, 4, 0, shuffle=False, seed=0, epoch=0)[0]
    assert batch["targets"].tolist() == [1, 0, 0, 1] and CLASSIFY.count(batch) == 4
    assert batch["weights"].tolist() == [1.0] * 4
    assert batch["sources"] == [[f"{tmp_path / 'd.jsonl'}:{n}"] for n in (1, 2, 3, 4)]  # what the guard names
    assert [r.labels for r in data.train[:2]] == [[1], [0]]  # what the resume digest reads


def test_numbers_and_booleans_are_labels_as_written(smollm2_tokenizer, tmp_path):
    rows = [
        {"text": "a", "label": 1},
        {"text": "b", "label": 0},
        {"text": "c", "label": 2.0},
        {"text": "d", "label": True},
    ]
    data = _build(smollm2_tokenizer, _write(tmp_path / "d.jsonl", rows))
    assert data.facts["labels"] == ["0", "1", "2", "true"]


def test_prompt_rows_become_chats_and_fields_map_columns(smollm2_tokenizer, tmp_path):
    rows = [{"q": f"question {i}?", "category": "x" if i % 2 else "y"} for i in range(4)]
    data = _build(
        smollm2_tokenizer,
        _write(tmp_path / "d.csv.jsonl", rows),
        **{"data.fields": {"prompt": "q", "label": "category"}},
    )
    assert data.facts["input"] == "chat"
    text = smollm2_tokenizer.decode(data.train[0].input_ids)
    assert "question 0?" in text and text.endswith("<|im_start|>assistant\n")  # pooled where the answer would start


def test_a_missing_label_names_file_and_line(smollm2_tokenizer, tmp_path):
    path = _write(tmp_path / "d.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}, {"text": "c"}])
    with pytest.raises(DataError, match=r"d\.jsonl:3: field 'label' is missing"):
        _build(smollm2_tokenizer, path)


def test_a_missing_label_suggests_mapping_the_one_column_no_field_reads(smollm2_tokenizer, tmp_path):
    """SNIPS' rows are {text, intent}: the error said to map a column such as 'category', not the row's 'intent'."""
    path = _write(tmp_path / "d.jsonl", [{"text": "play a song", "intent": "PlayMusic", "system": ""}])
    with pytest.raises(DataError, match=r"d\.jsonl:1: field 'label' is missing; .* \(e\.g\. \{label: intent\}\)\.$"):
        _build(smollm2_tokenizer, path)
    path = _write(tmp_path / "d.jsonl", [{"text": "play a song", "intent": "PlayMusic", "domain": "music"}])
    with pytest.raises(DataError, match=r"\(e\.g\. \{label: category\}\)\.$"):  # two columns: no guess
        _build(smollm2_tokenizer, path)


def test_an_empty_label_names_file_and_line(smollm2_tokenizer, tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nhello,x\nworld,\nagain,y\n")
    with pytest.raises(DataError, match=r"d\.csv:3: field 'label' is empty"):
        _build(smollm2_tokenizer, str(path))


def test_a_row_without_input_names_the_fields(smollm2_tokenizer, tmp_path):
    path = _write(tmp_path / "d.jsonl", [{"body": "a", "label": "x"}])
    with pytest.raises(DataError, match=r"d\.jsonl:1: the row has no input.*text, messages"):
        _build(smollm2_tokenizer, path)


def test_a_row_without_input_is_told_the_mapping_its_columns_need(smollm2_tokenizer, tmp_path):
    """A spreadsheet's `Category,Message Text` was told to map {text: message}, a column it does not have; the hint
    now names the row's own columns: the input by its name (else the longest text) and the label where none is."""
    path = tmp_path / "d.csv"
    path.write_text('Category,Message Text\nham,"Ok lar, joking"\nspam,"WINNER! Claim now"\n')
    with pytest.raises(DataError, match=r"d\.csv:2: .* e\.g\. \{text: Message Text, label: Category\}\."):
        _build(smollm2_tokenizer, str(path))
    path = _write(tmp_path / "d.jsonl", [{"id": "7", "body_html": "Where is my parcel?", "label": "shipping"}])
    with pytest.raises(DataError, match=r"e\.g\. \{text: body_html\}\."):
        _build(smollm2_tokenizer, path)


def test_one_class_only_is_an_error(smollm2_tokenizer, tmp_path):
    path = _write(tmp_path / "d.jsonl", [{"text": f"t{i}", "label": "same"} for i in range(5)])
    with pytest.raises(DataError, match="only the label 'same'.*at least two classes"):
        _build(smollm2_tokenizer, path)


def test_eval_labels_training_never_saw_are_counted_not_fatal(smollm2_tokenizer, tmp_path):
    train = _write(tmp_path / "t.jsonl", [{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(6)])
    held = _write(tmp_path / "e.jsonl", [{"text": "e1", "label": "a"}, {"text": "e2", "label": "zzz"}])
    data = _build(smollm2_tokenizer, train, **{"data.eval": held})
    assert len(data.eval) == 1
    skip = data.report.skips[f"{UNSEEN} ('zzz')"]
    assert skip.count == 1 and skip.locations == [f"{held}:2"]


@pytest.mark.parametrize(
    "labels, shown",
    [
        (["spam", "Spam", "ham"], r"'spam' \(.*d.jsonl:1\) and 'Spam' \(.*d.jsonl:2\)"),
        ([1, "1.0", 0], r"'1' \(.*d.jsonl:1\) and '1.0' \(.*d.jsonl:2\)"),  # JSON's 1 and a CSV's "1.0"
        (["no spam", "no  spam", "spam"], r"'no spam' \(.*d.jsonl:1\) and 'no  spam' \(.*d.jsonl:2\)"),
    ],
)
def test_labels_written_two_ways_are_refused_not_split_into_two_classes(smollm2_tokenizer, tmp_path, labels, shown):
    path = _write(tmp_path / "d.jsonl", [{"text": f"t{i}", "label": labels[i % 3]} for i in range(6)])
    with pytest.raises(DataError, match=f"the training labels {shown} differ only in case, spacing or how a number"):
        _build(smollm2_tokenizer, path)


@pytest.mark.parametrize(
    "labels",
    [["01", "1", "2"], ["3.1", "3.10", "3"], ["90071992547409930", "90071992547409931", "0"], ["Maße", "Masse", "x"]],
)
def test_labels_that_only_look_alike_stay_classes_of_their_own(smollm2_tokenizer, tmp_path, labels):
    """Codes with leading zeros, section numbers, ids beyond a float's precision, words that casefold alike."""
    path = _write(tmp_path / "d.jsonl", [{"text": f"t{i}", "label": labels[i % 3]} for i in range(6)])
    assert _build(smollm2_tokenizer, path).facts["labels"] == sorted(labels)


def test_an_eval_label_spelled_otherwise_is_read_as_the_runs_as_tunelab_eval_reads_it(smollm2_tokenizer, tmp_path):
    """An eval row's 'Spam' for the training rows' 'spam' (or a CSV's 1.0 for 1) was skipped from the run's eval
    loss and accuracy, while `tunelab eval` reads it as the run's label: the two scored different rows of one file.
    Training now reads it as `tunelab eval` does, and its data report counts it."""
    train = _write(tmp_path / "t.jsonl", [{"text": f"t{i}", "label": ["spam", "ham"][i % 2]} for i in range(6)])
    rows = [{"text": "e1", "label": "Spam"}, {"text": "e2", "label": "ham"}, {"text": "e3", "label": " SPAM "}]
    held = _write(tmp_path / "e.jsonl", rows)
    data = _build(smollm2_tokenizer, train, **{"data.eval": held})
    assert not data.report.skips and [r.label for r in data.eval] == [1, 0, 1]
    note = next(n for n in data.report.notes if "otherwise than the training rows" in n)
    assert note.startswith(
        f"2 eval rows write their label otherwise than the training rows ('Spam' for 'spam', e.g. {held}:1"
    )


def test_labels_written_two_ways_in_the_training_files_are_refused_whichever_side_of_the_split(
    smollm2_tokenizer, tmp_path
):
    """With data.eval_fraction, whether a 'Spam' row of the training file was refused (drawn into training) or
    skipped (drawn into eval) hung on the seed; the training files' labels are held to one spelling whole."""
    rows = [{"text": f"t{i}", "label": ["spam", "ham"][i % 2]} for i in range(20)] + [{"text": "x", "label": "Spam"}]
    path = _write(tmp_path / "d.jsonl", rows)
    for seed in range(4):
        cfg = _cfg(path, **{"data.eval_fraction": 0.2, "train.seed": seed})
        with pytest.raises(DataError, match="the training labels 'spam'.*and 'Spam'.*differ only in case"):
            CLASSIFY.build_data(cfg, smollm2_tokenizer, seed)


def test_balanced_and_explicit_class_weights(smollm2_tokenizer, tmp_path):
    path = _write(tmp_path / "d.jsonl", [{"text": f"t{i}", "label": "a" if i < 6 else "b"} for i in range(8)])
    data = _build(smollm2_tokenizer, path, **{"classify.class_weights": "balanced"})
    assert data.facts["class_weights"] == {"a": 8 / (2 * 6), "b": 8 / (2 * 2)}
    data = _build(smollm2_tokenizer, path, **{"classify.label_weights": {"b": 5}})
    assert data.facts["class_weights"] == {"a": 1.0, "b": 5.0}
    with pytest.raises(ConfigError, match="names the label 'c'.*labels are a, b"):
        _build(smollm2_tokenizer, path, **{"classify.label_weights": {"c": 2}})
    for bad in ("inf", "nan", -1):  # an infinite weight made every loss of its rows inf, and the run stop
        with pytest.raises(ConfigError, match="the weight of 'b' must be a finite number >= 0"):
            _build(smollm2_tokenizer, path, **{"classify.label_weights": {"b": bad}})


def test_the_eval_accuracy_and_macro_f1_are_tunelab_evals():
    """The metrics logged during training are the ones `tunelab eval` reports (eval/metrics.label_scores), also
    where a class is never predicted or only predicted."""
    from tunelab.eval.metrics import label_scores
    from tunelab.tasks.classify import accuracy_and_macro_f1

    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        expected = torch.randint(0, 5, (30,), generator=gen)
        predicted = torch.where(
            torch.rand(30, generator=gen) < 0.6, expected, torch.randint(0, 7, (30,), generator=gen)
        )
        accuracy, macro_f1 = accuracy_and_macro_f1(expected, predicted)
        want = label_scores(expected.tolist(), predicted.tolist(), sorted(set(expected.tolist() + predicted.tolist())))
        assert accuracy == pytest.approx(want.accuracy, abs=1e-12) and macro_f1 == pytest.approx(
            want.macro_f1, abs=1e-12
        )


def test_weighted_loss_is_the_sum_of_weighted_row_losses():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])

    def model(ids, mask, positions):
        return logits

    batch = {"input_ids": None, "attention_mask": None, "position_ids": None}
    batch |= {"targets": torch.tensor([0, 0, 1]), "weights": torch.tensor([1.0, 3.0, 0.5])}
    loss, metrics = CLASSIFY.loss(model, batch)
    by_hand = [-torch.log_softmax(logits[i], 0)[t] for i, t in enumerate([0, 0, 1])]
    assert loss.item() == pytest.approx(float(by_hand[0] + 3 * by_hand[1] + 0.5 * by_hand[2]), rel=1e-6)
    assert int(metrics["accuracy"]) == 1  # row 0 right; row 1 wrong; row 2 a tie resolved to class 0: wrong


def test_overlong_rows_are_dropped_or_keep_their_end(smollm2_tokenizer, tmp_path):
    long = " ".join(f"w{i}" for i in range(200))
    rows = [{"text": long, "label": "a"}, {"text": "short", "label": "b"}] * 2 + [{"text": "short a", "label": "a"}]
    path = _write(tmp_path / "d.jsonl", rows)
    data = _build(smollm2_tokenizer, path, **{"data.max_length": 16})
    assert Counter(r.label for r in data.train) == {0: 1, 1: 2} and data.report.total_skipped == 2
    data = _build(smollm2_tokenizer, path, **{"data.max_length": 16, "data.overlong": "truncate"})
    assert len(data.train[0].input_ids) == 16
    assert smollm2_tokenizer.decode(data.train[0].input_ids).endswith("w199")  # the end is kept


def test_a_cut_row_keeps_its_system_prompt_and_template_header(smollm2_tokenizer, tmp_path):
    """data.overlong=truncate kept a long row's last max_length tokens: its system prompt and the template's opening
    were cut off, a form the model never read. The start is kept now and the cut taken from the user's text."""
    long = " ".join(f"w{i}" for i in range(200))
    rows = [{"system": "You sort mail.", "prompt": long, "label": "a"}, {"prompt": "short", "label": "b"}] * 2
    data = _build(
        smollm2_tokenizer, _write(tmp_path / "d.jsonl", rows), **{"data.max_length": 40, "data.overlong": "truncate"}
    )
    ids = data.train[0].input_ids
    text = smollm2_tokenizer.decode(ids)
    assert len(ids) == 40 and text.startswith("<|im_start|>system\nYou sort mail.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("w199<|im_end|>\n<|im_start|>assistant\n") and "w0 " not in text
    assert "truncated to max_length: 2" in data.report.summary()
    path = _write(tmp_path / "t.jsonl", [{"text": long, "label": "a"}, {"text": "short", "label": "b"}])
    data = _build(
        smollm2_tokenizer,
        path,
        **{"data.max_length": 16, "data.overlong": "truncate", "classify.prompt_format": "Request: {text}\nDomain:"},
    )
    text = smollm2_tokenizer.decode(data.train[0].input_ids)
    assert text.startswith("Request:") and text.endswith("w199\nDomain:")


def test_a_row_whose_start_fills_max_length_is_skipped_and_counted(smollm2_tokenizer, tmp_path):
    system = " ".join(f"s{i}" for i in range(40))
    rows = [{"system": system, "prompt": "hello " * 30, "label": "a"}] + [
        {"prompt": "hi", "label": "ab"[i % 2]} for i in range(4)
    ]
    path = _write(tmp_path / "d.jsonl", rows)
    data = _build(smollm2_tokenizer, path, **{"data.max_length": 40, "data.overlong": "truncate"})
    (reason,) = data.report.skips
    assert reason.startswith("its start (BOS, system prompt, template header:") and data.report.train.used == 4


def test_balanced_weights_and_label_counts_count_the_rows_training_uses(smollm2_tokenizer, tmp_path):
    """class_weights: balanced and the recorded label counts read the rows before overlong ones were dropped: a
    class whose rows were mostly too long was weighed as if training had them all. They count the rows used now."""
    long = " ".join(f"w{i}" for i in range(200))
    rows = (
        [{"text": "short", "label": "a"}] * 3 + [{"text": "short", "label": "b"}] + [{"text": long, "label": "b"}] * 2
    )
    data = _build(
        smollm2_tokenizer,
        _write(tmp_path / "d.jsonl", rows),
        **{"data.max_length": 16, "classify.class_weights": "balanced"},
    )
    assert data.facts["label_counts"] == {"a": 3, "b": 1}
    assert data.facts["class_weights"] == pytest.approx({"a": 4 / 6, "b": 2.0})
    assert [r.weight for r in data.train] == pytest.approx([4 / 6] * 3 + [2.0])


def test_a_label_whose_every_row_is_too_long_is_refused_by_name(smollm2_tokenizer, tmp_path):
    """Every row of label c was dropped as too long, and c stayed a label of the run with 0 rows, noted only: the
    head had an output no row trained. The run now stops naming the label and a row of it."""
    long = " ".join(f"w{i}" for i in range(200))
    rows = (
        [{"text": "short", "label": "a"}] * 3 + [{"text": "short", "label": "b"}] + [{"text": long, "label": "c"}] * 2
    )
    path = _write(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=rf"1 label \('c'\) has no training row left: .*'c': 2 rows \(e.g. {path}:5\)"):
        _build(smollm2_tokenizer, path, **{"data.max_length": 16})
    assert _build(smollm2_tokenizer, path, **{"data.max_length": 16, "data.overlong": "truncate"}).facts[
        "label_counts"
    ] == {"a": 3, "b": 1, "c": 2}


def test_an_eval_row_without_a_label_is_named_as_an_eval_row(smollm2_tokenizer, tmp_path):
    """A data.eval row without a label was told that 'every training row needs a label', pointing at the wrong file's
    role (and to data.fields, which an eval file may bypass by naming its column 'label')."""
    train = _write(tmp_path / "t.jsonl", [{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(4)])
    held = _write(tmp_path / "e.jsonl", [{"text": "x"}])
    with pytest.raises(DataError, match=r"e\.jsonl:1: field 'label' is missing; every row of the eval file \(data"):
        _build(smollm2_tokenizer, train, **{"data.eval": held})


def test_an_infinite_label_is_named_as_such(smollm2_tokenizer, tmp_path):
    """A label of 1e400 (inf in JSON) was refused as 'a float', though numbers are labels."""
    rows = [{"text": "x", "label": float("inf")}] + [{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(4)]
    with pytest.raises(DataError, match=r"d\.jsonl:1: field 'label' must be a label .*, got inf, a number that names"):
        _build(smollm2_tokenizer, _write(tmp_path / "d.jsonl", rows))


@pytest.mark.parametrize(
    ("command", "options"),
    [("tunelab eval", {"evaluating": True}), ("tunelab predict", {"require_label": False})],
)
def test_an_eval_or_predict_row_without_input_names_the_columns_not_data_fields(tmp_path, command, options):
    """A row of tunelab eval's or predict's file without an input was told to map its column with data.fields, which
    that file cannot change (it is read with the run's); it is told which column names the file may use."""
    from tunelab.data.report import DataReport
    from tunelab.tasks.classify import read_labelled

    path = _write(tmp_path / "test.jsonl", [{"text": "a", "label": "x"}, {"body": "b", "label": "y"}])
    with pytest.raises(DataError) as err:
        read_labelled([path], {"text": "message"}, None, DataReport(), lenient=True, **options)
    msg = str(err.value)
    assert msg.startswith(f"{path}:2: the row has no input to classify: {command} reads each row's input from a column")
    assert "named text, messages, conversations, prompt, question, instruction" in msg
    assert "(or a column the run's data.fields maps one of them to: text -> message)" in msg
    assert f"this row has body, label. Rename the column in {path} to one of those names." in msg
    assert "map it with data.fields" not in msg


def test_eval_of_a_file_whose_rows_are_all_skipped_says_why(tmp_path):
    """tunelab eval of a classify run on a file whose every row was skipped said 'no rows to evaluate', nothing
    more; a reward run's file printed the skips as a Python dict. Both say what was read and skipped, in words."""
    from types import SimpleNamespace

    from tunelab.config import DataConfig
    from tunelab.eval.heads import _classify, _reward

    run = SimpleNamespace(data=DataConfig(), tokenizer=None, template=None, run_dir=tmp_path)
    path = _write(tmp_path / "test.jsonl", [{"text": " ", "label": "x"}, {"text": "", "label": "y"}])
    with pytest.raises(
        DataError, match=rf"no rows to evaluate \(2 rows read, skipped: 2 empty input \(e\.g\. {path}:1\)\)"
    ):
        _classify(run, path, 16)
    pairs = _write(tmp_path / "pairs.jsonl", [{"chosen": "same", "rejected": "same"}])
    with pytest.raises(
        DataError, match=r"no preference pairs to evaluate \(1 row read, skipped: 1 chosen and rejected"
    ):
        _reward(run, pairs, 16)


def test_data_delimiter_is_read_by_the_training_files_of_a_head_run(smollm2_tokenizer, tmp_path):
    """data.delimiter was passed to the sft reader only: a classify (reward, dpo, grpo) run detected each .csv
    file's separator whatever the option said."""
    path = tmp_path / "d.csv"
    path.write_text("text;label\n" + "".join(f"row {i};{'ab'[i % 2]}\n" for i in range(6)))
    assert _build(smollm2_tokenizer, str(path)).facts["labels"] == ["a", "b"]  # detected: ';'
    # as the option says: one column, which its header's ';' would split (it was refused later as a row with no
    # input to classify)
    with pytest.raises(DataError, match=r"d\.csv:1: the header is one column, 'text;label'\. .*not by data\.delimit"):
        _build(smollm2_tokenizer, str(path), **{"data.delimiter": ","})


def test_a_file_without_a_header_line_is_told_so(smollm2_tokenizer, tmp_path):
    """The SMS Spam Collection (label<TAB>text, no header) read as .tsv: its first message became a column name and
    the row was refused as having no input, without a word of the missing header."""
    path = tmp_path / "spam.tsv"
    path.write_text("ham\tGo until jurong point, crazy.. Available only in bugis\nspam\tFree entry in 2 a wkly comp\n")
    with pytest.raises(
        DataError, match=r"spam\.tsv:2: the row has no input .* first line is read as its header, and a"
    ) as err:
        _build(smollm2_tokenizer, str(path))
    assert "map it with data.fields" not in str(err.value)  # {text: Go until jurong point...} maps a message
    path.write_text("label\ttext\nham\tGo until jurong point\nspam\tFree entry\n")  # a header: no such word
    assert _build(smollm2_tokenizer, str(path)).facts["labels"] == ["ham", "spam"]


def test_a_text_labelled_otherwise_by_another_row_is_noted(smollm2_tokenizer, tmp_path):
    """The same text given two labels (a mislabelled copy) trained the head towards both without a word; the report
    counts the rows and names the first pair, also across the training and the eval file. Copies that agree, and an
    eval row that writes the label otherwise ('Spam' for 'spam'), are no conflict."""
    rows = [{"text": f"t{i}", "label": ["spam", "ham"][i % 2]} for i in range(6)]
    rows += [{"text": "t0", "label": "ham"}, {"text": "t2", "label": "spam"}, {"text": "t3", "label": "spam"}]
    path = _write(tmp_path / "d.jsonl", rows)
    data = _build(smollm2_tokenizer, path)
    assert [n for n in data.report.notes if "labels otherwise" in n] == [
        f"4 of the 9 rows give a text that another row labels otherwise, word for word (2 texts; e.g. {path}:1 labels "
        f"it 'spam', {path}:7 'ham', ...): no head can predict both; correct the wrong label or remove the row"
    ]
    assert "note: 4 of the 9 rows give a text that another row labels otherwise" in data.report.summary()
    train = _write(tmp_path / "t.jsonl", rows[:6])
    held = _write(tmp_path / "e.jsonl", [{"text": "t1", "label": "spam"}, {"text": "t0", "label": "Spam"}])
    (note,) = [n for n in _build(smollm2_tokenizer, train, **{"data.eval": held}).report.notes if "labels it" in n]
    assert note.startswith("2 of the 8 rows give a text that another row labels otherwise, word for word (1 text; ")
    assert f"e.g. {train}:2 labels it 'ham', {held}:1 'spam')" in note


def test_texts_repeated_among_the_training_rows_are_noted_with_counts(smollm2_tokenizer, tmp_path):
    """A text given in several training rows (snips' 'find movie times' 13 times) was noted only where a copy fell in
    the eval split, or where its labels differed: each copy trains again, and one held out is scored on a text the
    head trained on. The data report now counts the copies, the texts and the most repeated one; with
    data.eval_fraction the rows of both sides are the training file's."""
    rows = [{"text": f"text {i}", "label": "ab"[i % 2]} for i in range(12)]
    rows += [{"text": "text 1", "label": "b"}, {"text": "text 1", "label": "b"}, {"text": "text 2", "label": "a"}]
    rows.append({"text": "text 3", "label": "a"})  # labelled otherwise: note_conflicting's, not a copy
    path = _write(tmp_path / "d.jsonl", rows)
    for over in ({}, {"data.eval_fraction": 0.2}):
        (note,) = [n for n in _build(smollm2_tokenizer, path, **over).report.notes if "repeat another row" in n]
        assert note.startswith(
            f"3 of the 16 rows of the training files repeat another row word for word, text and label (2 texts given "
            f"more than once, e.g. {path}:13 repeats {path}:2; the most repeated, 'text 1', 3 times)"
        )
    assert not any(
        "repeat the input" in n for n in _build(smollm2_tokenizer, _write(tmp_path / "u.jsonl", rows[:12])).report.notes
    )
