"""build_datasets end to end (eval split, packing, report) and make_batches (padding, determinism per epoch)."""

import json

import pytest
import torch

from tunelab.config import DataConfig, DataSource
from tunelab.data.batches import make_batches
from tunelab.data.loader import build_datasets
from tunelab.data.packing import Packed
from tunelab.data.render import Rendered
from tunelab.errors import ConfigError, DataError


def qa_file(tmp_path, n, name="qa.jsonl", start=0):
    path = tmp_path / name
    path.write_text(
        "".join(json.dumps({"question": f"What is {i} + {i}?", "answer": f"{2 * i}."}) + "\n" for i in range(start, n))
    )
    return str(path)


def answers(tokenizer, rows):
    return [tokenizer.decode([t for t, label in zip(r.input_ids, r.labels) if label != -100]) for r in rows]


@pytest.mark.parametrize("n, fraction, held", [(10, 0.2, 2), (10, 0.01, 1), (7, 0.5, 4)])
def test_eval_fraction_sizes(tmp_path, smollm2_tokenizer, n, fraction, held):
    data = build_datasets(DataConfig(train=[qa_file(tmp_path, n)], eval_fraction=fraction), smollm2_tokenizer, seed=0)
    assert (len(data.train), len(data.eval)) == (n - held, held)
    assert data.report.eval_source == "fraction" and data.report.eval.examples == held
    assert not set(answers(smollm2_tokenizer, data.train)) & set(answers(smollm2_tokenizer, data.eval))


def test_eval_split_is_seeded(tmp_path, smollm2_tokenizer):
    cfg = DataConfig(train=[qa_file(tmp_path, 40)], eval_fraction=0.25)
    held = [answers(smollm2_tokenizer, build_datasets(cfg, smollm2_tokenizer, seed=s).eval) for s in (1, 1, 2)]
    assert held[0] == held[1] and held[0] != held[2]


def test_split_seed_holds_out_the_same_examples_whatever_the_train_seed(tmp_path, smollm2_tokenizer):
    cfg = DataConfig(train=[qa_file(tmp_path, 40)], eval_fraction=0.25, split_seed=7)
    runs = [build_datasets(cfg, smollm2_tokenizer, seed=s) for s in (1, 2)]
    assert answers(smollm2_tokenizer, runs[0].eval) == answers(smollm2_tokenizer, runs[1].eval)
    assert (
        runs[0].report.split_facts() == {"split_seed": 7}
        and "eval (fraction, split seed 7)" in runs[0].report.summary()
    )
    unset = build_datasets(DataConfig(train=cfg.train, eval_fraction=0.25), smollm2_tokenizer, seed=7)
    assert answers(smollm2_tokenizer, unset.eval) == answers(smollm2_tokenizer, runs[0].eval)  # default: train.seed
    assert unset.report.split_facts() == {"split_seed": 7}


def test_eval_fraction_leaving_nothing_to_train(tmp_path, smollm2_tokenizer):
    with pytest.raises(DataError, match="eval_fraction=0.5 holds out 1 of 1"):
        build_datasets(DataConfig(train=[qa_file(tmp_path, 1)], eval_fraction=0.5), smollm2_tokenizer, seed=0)


def test_eval_fraction_on_one_text_document_names_the_file(tmp_path, smollm2_tokenizer):
    """A .txt file is one example: the fraction held it out and the message named neither the file nor why."""
    doc = tmp_path / "notes.txt"
    doc.write_text("A paragraph about boxes. " * 40)
    with pytest.raises(DataError, match=r"holds out 1 of 1 usable examples of .*notes\.txt .*a \.txt file is one"):
        build_datasets(DataConfig(train=[str(doc)], eval_fraction=0.1), smollm2_tokenizer, seed=0)


def test_eval_file(tmp_path, smollm2_tokenizer):
    cfg = DataConfig(train=[qa_file(tmp_path, 6)], eval=qa_file(tmp_path, 3, "eval.jsonl"))
    data = build_datasets(cfg, smollm2_tokenizer, seed=0)
    assert (len(data.train), len(data.eval)) == (6, 3) and data.report.eval_source == "file"


def test_an_eval_file_is_read_with_the_training_files_field_mapping(tmp_path, smollm2_tokenizer):
    """data.eval holds the training files' columns: data.fields maps them for it too (the system column included),
    and an eval file without a mapped column is refused naming the option, not read without it."""

    def rows(name, n, **extra):
        lines = [json.dumps({"q": f"What is {i}?", "a": f"{i}.", **extra}) for i in range(n)]
        (tmp_path / name).write_text("\n".join(lines) + "\n")
        return str(tmp_path / name)

    fields = {"prompt": "q", "completion": "a", "system": "sys"}
    cfg = DataConfig(
        train=[rows("t.jsonl", 4, sys="Be brief.")], eval=rows("e.jsonl", 2, sys="Be kind."), fields=fields
    )
    data = build_datasets(cfg, smollm2_tokenizer, seed=0)
    shown = smollm2_tokenizer.decode(data.eval[0].input_ids)
    assert len(data.eval) == 2 and "Be kind." in shown and "What is 0?" in shown
    assert answers(smollm2_tokenizer, data.eval) == ["0.<|im_end|>", "1.<|im_end|>"]
    cfg.eval = rows("bare.jsonl", 2)
    with pytest.raises(DataError, match=r"bare\.jsonl: option 'data.fields' maps system -> 'sys', but no record"):
        build_datasets(cfg, smollm2_tokenizer, seed=0)


def test_an_eval_file_may_give_the_fields_under_their_own_names(tmp_path, smollm2_tokenizer):
    """An sft eval file written with the canonical columns (prompt, completion, system) was refused when data.fields
    mapped other names for the training files, while the classify, reward and dpo readers took it. It is read now as
    they read it: the mapped column first, else the field's own name; a column with neither is still refused."""

    def rows(name, keys, n, **extra):
        lines = [json.dumps({keys[0]: f"What is {i}?", keys[1]: f"{i}.", **extra}) for i in range(n)]
        (tmp_path / name).write_text("\n".join(lines) + "\n")
        return str(tmp_path / name)

    fields = {"prompt": "q", "completion": "a", "system": "sys"}
    train = rows("t.jsonl", ("q", "a"), 4, sys="Be brief.")
    cfg = DataConfig(train=[train], eval=rows("e.jsonl", ("prompt", "completion"), 2, system="Be kind."), fields=fields)
    data = build_datasets(cfg, smollm2_tokenizer, seed=0)
    assert "Be kind." in smollm2_tokenizer.decode(data.eval[0].input_ids)
    assert answers(smollm2_tokenizer, data.eval) == ["0.<|im_end|>", "1.<|im_end|>"]
    source = DataSource(path=train, fields=fields, eval=rows("s.jsonl", ("prompt", "completion"), 3, system="Hi."))
    mixed = build_datasets(DataConfig(train=[source]), smollm2_tokenizer, seed=0)
    assert answers(smollm2_tokenizer, mixed.eval) == ["0.<|im_end|>", "1.<|im_end|>", "2.<|im_end|>"]
    cfg.eval = rows("neither.jsonl", ("question", "completion"), 2, system="Hi.")
    with pytest.raises(DataError, match=r"neither\.jsonl:1: option 'data.fields' maps prompt -> 'q', but the record"):
        build_datasets(cfg, smollm2_tokenizer, seed=0)


def test_zero_usable_examples(tmp_path, smollm2_tokenizer):
    path = tmp_path / "empty.jsonl"
    path.write_text('{"prompt": "a", "completion": ""}\n{"prompt": "b", "completion": " "}\n')
    with pytest.raises(DataError) as err:
        build_datasets(DataConfig(train=[str(path)]), smollm2_tokenizer, seed=0)
    msg = str(err.value)
    assert f"{path}: no usable training examples (2 records read)" in msg and f"2 empty answer (e.g. {path}:1)" in msg
    with pytest.raises(DataError, match="no usable training examples.*longer than max_length"):
        build_datasets(DataConfig(train=[qa_file(tmp_path, 2)], max_length=8), smollm2_tokenizer, seed=0)
    with pytest.raises(ConfigError, match="data.train' is empty"):
        build_datasets(DataConfig(), smollm2_tokenizer, seed=0)


def test_nothing_usable_suggests_truncate_only_where_it_is_not_set(tmp_path, smollm2_tokenizer):
    """With data.overlong=truncate set, a run whose every chat was cut before its answer was told to set
    data.overlong=truncate; now it is told to raise data.max_length only (drop, the default, is told both)."""
    path = qa_file(tmp_path, 2)
    with pytest.raises(DataError) as err:
        build_datasets(DataConfig(train=[path], max_length=8, overlong="truncate"), smollm2_tokenizer, seed=0)
    msg = str(err.value)
    assert "no usable training examples" in msg and "raise data.max_length if they were too long" in msg
    assert "overlong=truncate if" not in msg
    with pytest.raises(DataError, match="raise data.max_length / set data.overlong=truncate if"):
        build_datasets(DataConfig(train=[path], max_length=8), smollm2_tokenizer, seed=0)


def test_an_empty_file_is_said_to_hold_no_records(tmp_path, smollm2_tokenizer):
    """An empty file (or a csv header alone) said 'no usable examples (0 records read)' and to raise data.max_length
    if they were too long; in a mixture the count was of every source read so far, not of the one that failed."""
    for name, text in (("empty.jsonl", ""), ("header.csv", "question,answer\n"), ("none.json", "[]")):
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=rf"{name}: no training examples: no records to read \(an empty file"):
            build_datasets(DataConfig(train=[str(tmp_path / name)]), smollm2_tokenizer, seed=0)
    (tmp_path / "blank.jsonl").write_text('{"question": "Q", "answer": " "}\n')
    sources = [DataSource(path=qa_file(tmp_path, 5)), DataSource(path=str(tmp_path / "blank.jsonl"))]
    with pytest.raises(DataError, match=r"blank.jsonl: no usable training examples \(1 records read\)"):
        build_datasets(DataConfig(train=sources), smollm2_tokenizer, seed=0)


def test_a_failing_source_of_a_mixture_reports_its_own_skips(tmp_path, smollm2_tokenizer):
    """The skips printed beside a source with no usable example were the totals over every source read so far (7
    empty answers for a source of 1 row), and a reason whose first locations were all another source's went unsaid."""
    blanks = [{"question": f"Q{i}", "answer": " "} for i in range(6)]
    (tmp_path / "a.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in blanks + [{"question": "Q", "answer": "A."}])
    )
    (tmp_path / "b.jsonl").write_text(json.dumps({"question": "Q", "answer": ""}) + "\n")
    sources = [DataSource(path=str(tmp_path / "a.jsonl")), DataSource(path=str(tmp_path / "b.jsonl"))]
    with pytest.raises(DataError) as err:
        build_datasets(DataConfig(train=sources), smollm2_tokenizer, seed=0)
    msg = str(err.value)
    assert (
        f"b.jsonl: no usable training examples (1 records read). Skipped: 1 empty answer (e.g. {tmp_path / 'b.jsonl'}:1)."
        in msg
    )


def test_packing_and_report(tmp_path, smollm2_tokenizer):
    cfg = DataConfig(train=[qa_file(tmp_path, 30)], max_length=128, packing=True, eval_fraction=0.1)
    data = build_datasets(cfg, smollm2_tokenizer, seed=0)
    assert all(isinstance(r, Packed) and len(r.input_ids) <= 128 for r in data.train + data.eval)
    assert sum(len(r.doc_lengths) for r in data.train) == 27 and sum(len(r.doc_lengths) for r in data.eval) == 3
    report = data.report
    assert report.train.rows == len(data.train) < 27 and report.train.examples == 27
    assert report.train.loss_tokens == sum(sum(label != -100 for label in r.labels) for r in data.train)
    assert report.lengths.count == 30 and sum(report.lengths.counts) == 30 and len(report.lengths.bin_edges) == 21
    saved = json.loads(json.dumps(report.to_dict()))
    assert saved["files"][cfg.train[0]]["used"] == 30 and saved["template"] == "tokenizer" and "_lengths" not in saved
    summary = report.summary()
    assert (
        "30 records" in summary
        and "train: 27 examples, 27 used" in summary
        and "eval (fraction, split seed 0): 3 examples, 3 used" in summary
    )


def test_report_summary_lists_skips(tmp_path, smollm2_tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": ""}\n')
    summary = build_datasets(DataConfig(train=[str(path)]), smollm2_tokenizer, seed=0).report.summary()
    assert f"skipped 1: empty answer ({path}:2)" in summary
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(
        "".join(
            json.dumps({"prompt": "Q", "completion": "Yes." + " word" * (80 * (i % 2))}) + "\n" for i in range(1, 9)
        )
    )
    report = build_datasets(
        DataConfig(train=[str(mixed)], max_length=64, eval_fraction=0.5), smollm2_tokenizer, seed=0
    ).report
    dropped = report.skips["longer than max_length (64 tokens; data.overlong=drop)"].count
    assert report.train.examples == report.eval.examples == 4 and dropped == 4
    assert report.train.used + report.eval.used == 4 and report.train.used == report.train.rows


def synthetic_rows(n):
    """Row i: tokens [100 + i, 2, 3, ...] of length 1 + i % 5, label -100 on its first token."""
    return [
        Rendered([100 + i] + list(range(2, 2 + i % 5)), [-100] + list(range(2, 2 + i % 5)), "d.jsonl", i)
        for i in range(n)
    ]


def test_make_batches_padding():
    rows = synthetic_rows(3)
    (batch,) = make_batches(rows, micro_batch=4, pad_id=7, shuffle=False, seed=0, epoch=0)
    assert set(batch) == {"input_ids", "labels", "attention_mask", "position_ids", "sources"}
    assert all(t.dtype == torch.long and t.shape == (3, 3) for t in batch.values() if torch.is_tensor(t))
    assert batch["sources"] == [["d.jsonl:0"], ["d.jsonl:1"], ["d.jsonl:2"]]
    assert batch["input_ids"].tolist() == [[100, 7, 7], [101, 2, 7], [102, 2, 3]]
    assert batch["labels"].tolist() == [[-100, -100, -100], [-100, 2, -100], [-100, 2, 3]]
    assert batch["attention_mask"].tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert batch["position_ids"].tolist() == [[0, 0, 0], [0, 1, 0], [0, 1, 2]]


def test_make_batches_deterministic_per_seed_and_epoch():
    rows = synthetic_rows(23)

    def order(seed, epoch):
        batches = make_batches(rows, micro_batch=4, pad_id=0, shuffle=True, seed=seed, epoch=epoch)
        assert [b["input_ids"].shape[0] for b in batches] == [4, 4, 4, 4, 4, 3]
        return [ids[0] for b in batches for ids in b["input_ids"].tolist()]  # rows start with distinct tokens

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    assert sorted(order(0, 1)) == sorted(order(0, 0)) == list(range(100, 123))  # every row once per epoch
    unshuffled = make_batches(rows, micro_batch=4, pad_id=0, shuffle=False, seed=0, epoch=5)
    assert [ids[0] for b in unshuffled for ids in b["input_ids"].tolist()] == list(range(100, 123))


def test_an_eval_file_that_is_trained_on_is_noted(tmp_path, smollm2_tokenizer):
    """Its eval loss measures recall of seen rows, which keep_best and the verdict would read as generalization."""
    train = qa_file(tmp_path, 6)
    data = build_datasets(DataConfig(train=[str(tmp_path)], eval=train), smollm2_tokenizer, seed=0)
    assert f"note: the eval file {train} is also a training file" in data.report.summary()
    other = qa_file(tmp_path, 9, "e.jsonl", start=6)
    apart = build_datasets(DataConfig(train=[train], eval=other), smollm2_tokenizer, seed=0)
    assert not apart.report.notes


def test_eval_examples_that_repeat_training_examples_are_noted(tmp_path, smollm2_tokenizer):
    """A row repeated in a file that data.eval_fraction splits lands on both sides, and rows copied into an eval
    file are trained on too; the eval loss then measures recall, without a word. Now the report says how many."""
    rows = [{"question": f"Q{i % 4}?", "answer": f"A{i % 4}."} for i in range(12)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = build_datasets(DataConfig(train=[str(tmp_path / "t.jsonl")], eval_fraction=0.25), smollm2_tokenizer, 0)
    repeated, note = data.report.notes  # the training rows repeat each other too: the note before says so
    assert repeated.startswith("5 of the 9 training examples repeat another word for word")
    assert note.startswith("3 of the 3 eval examples are also training examples, word for word (e.g. ")
    copied = qa_file(tmp_path, 4, "e.jsonl", start=2)  # sums 2 and 3; qa.jsonl asks 0, 1 and 2
    data = build_datasets(DataConfig(train=[qa_file(tmp_path, 3)], eval=copied), smollm2_tokenizer, 0)
    assert data.report.notes == [
        f"1 of the 2 eval examples are also training examples, word for word (e.g. {copied}:1 repeats "
        f"{tmp_path / 'qa.jsonl'}:3): their eval loss measures recall of rows the model trained on (train.keep_best "
        "and the verdict read it); remove the repeated rows"
    ]


def test_special_token_text_in_a_system_prompt_is_refused_naming_the_option(tmp_path, smollm2_tokenizer):
    """Every chat it was added to was skipped for it, and the error said to fix the records."""
    train = qa_file(tmp_path, 3)
    with pytest.raises(ConfigError, match=r"^option 'data.system_prompt' holds the special token text '<\|im_end\|>'"):
        build_datasets(DataConfig(train=[train], system_prompt="Be brief.<|im_end|>"), smollm2_tokenizer, seed=0)
    sources = [DataSource(path=train, system_prompt="<|im_start|>system")]
    with pytest.raises(ConfigError, match=r"^option 'data.train', entry 1: system_prompt holds the special token"):
        build_datasets(DataConfig(train=sources), smollm2_tokenizer, seed=0)


def test_a_system_prompt_is_noted_as_not_added_to_text_examples(tmp_path, smollm2_tokenizer):
    """data.system_prompt went into the chats and was left out of the texts (read as they are, without the chat
    template) without a word; the report now says how many texts it is not added to."""
    qa, doc = qa_file(tmp_path, 4), tmp_path / "doc.txt"
    doc.write_text("Door 1 of the depot is painted red. " * 4)
    data = build_datasets(DataConfig(train=[qa, str(doc)], system_prompt="Be brief."), smollm2_tokenizer, seed=0)
    note = (
        f"option 'data.system_prompt' is not added to the 1 text examples (e.g. {doc}:1): a text is read as it is, "
        "without the chat template; the system prompt goes into chats only"
    )
    assert note in data.report.notes and f"note: {note}" in data.report.summary()
    assert not build_datasets(DataConfig(train=[qa, str(doc)]), smollm2_tokenizer, seed=0).report.notes
    sources = [DataSource(path=qa, system_prompt="Be brief."), DataSource(path=str(doc), system_prompt="Be long.")]
    data = build_datasets(DataConfig(train=sources, max_length=64), smollm2_tokenizer, seed=0)
    assert [n.split(" is not added")[0] for n in data.report.notes] == ["option 'data.train', entry 2: system_prompt"]


def test_training_examples_that_repeat_each_other_are_noted(tmp_path, smollm2_tokenizer):
    """A row copied within a file (or into another) was trained on once per copy, weighing it more than the rest,
    without a word. The report says how many copies there are and where; rows that two mixture sources read from one
    file (one record, weighed by the sources' weights) are not copies."""
    rows = [{"question": f"Q{i}?", "answer": f"A{i}."} for i in range(5)] + [{"question": "Q1?", "answer": "A1."}] * 2
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = build_datasets(DataConfig(train=[str(tmp_path / "t.jsonl")]), smollm2_tokenizer, 0)
    assert data.report.notes == [
        f"2 of the 7 training examples repeat another word for word (e.g. {tmp_path / 't.jsonl'}:6 repeats "
        f"{tmp_path / 't.jsonl'}:2, ...): each copy is trained on again, weighing that example more than the others; "
        "remove the copies, or weigh sources in a mixture"
    ]
    assert "note: 2 of the 7 training examples repeat another" in data.report.summary()
    plain = qa_file(tmp_path, 4)
    sources = [DataSource(path=plain, weight=1.0), DataSource(path=plain, take=2, weight=2.0, name="head")]
    assert not build_datasets(DataConfig(train=sources, max_length=64), smollm2_tokenizer, 0).report.notes


def test_a_prompt_answered_otherwise_by_another_example_is_noted(tmp_path, smollm2_tokenizer):
    """The same question with two answers (a corrected row whose old copy stayed) trained a blend of both without a
    word; the report counts the examples and names the first pair. Equal rows are copies (their own note), and two
    mixture sources that read two answer columns of one record are no conflict."""
    rows = [{"question": f"Q{i}?", "answer": f"A{i}.", "other": f"B{i}."} for i in range(5)]
    rows += [
        {"question": "Q1?", "answer": "A1, or so.", "other": ""},
        {"question": "Q2?", "answer": "A2.", "other": ""},
    ]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = str(tmp_path / "t.jsonl")
    data = build_datasets(DataConfig(train=[path]), smollm2_tokenizer, 0)
    note = (
        f"2 of the 7 examples ask what another asks, word for word, with another answer (1 prompt; e.g. {path}:2 "
        f"and {path}:6): the model learns a blend of the answers; correct or remove a wrong one (alternatives meant "
        "as such, as the branches of a conversation tree, can stay)"
    )
    assert note in data.report.notes and f"note: {note}" in data.report.summary()
    split = build_datasets(DataConfig(train=[path], eval_fraction=0.3), smollm2_tokenizer, 0)  # either side
    assert any(n.startswith("2 of the 7 examples ask what another asks") for n in split.report.notes)
    sources = [
        DataSource(path=path, take=5, fields={"answer": "other"}, weight=1.0, name="b"),
        DataSource(path=path, take=5, weight=1.0, name="a"),
    ]
    mixed = build_datasets(DataConfig(train=sources, max_length=64), smollm2_tokenizer, 0)
    assert not any("with another answer" in n for n in mixed.report.notes)


def test_text_examples_holding_chat_markup_are_noted(tmp_path, smollm2_tokenizer):
    """Text rows exported already rendered by a chat template were trained as plain text, the markup in characters and
    the prompts under the loss, without a word; the report now counts them, names the first and its marker."""
    rows = [
        "Door 1 of the depot is painted red.",
        "<s>[INST] What colour is door 1? [/INST] Red.</s>",
        "<|im_start|>user\nWhat colour is door 2?<|im_end|>\n<|im_start|>assistant\nBlue.<|im_end|>",
    ]
    path = tmp_path / "rendered.jsonl"
    path.write_text("".join(json.dumps({"text": row}) + "\n" for row in rows))
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"text": rows[0]}) + "\n")
    for train in ([str(path)], [DataSource(path=str(path)), DataSource(path=str(plain))]):
        notes = build_datasets(DataConfig(train=train), smollm2_tokenizer, seed=0).report.notes
        (note,) = [note for note in notes if "chat-template markup" in note]
        assert note.startswith(f"2 of the {len(rows) + (len(train) - 1)} text examples hold chat-template markup")
        assert f"(e.g. '[INST]' at {path}:2)" in note and "give such rows as chats (the messages format)" in note
    notes = build_datasets(DataConfig(train=[str(plain)]), smollm2_tokenizer, seed=0).report.notes
    assert not [note for note in notes if "markup" in note]


def test_text_examples_joining_documents_get_their_own_note(tmp_path, smollm2_tokenizer):
    """<|endoftext|> between joined documents is no chat markup, yet was noted as such, advising chats; such texts now
    get a note of their own (one document per example, tunelab adding the EOS), and chat markup still wins."""
    rows = [
        "The depot opens at six.<|endoftext|>The ferry leaves at nine.",
        "<|im_start|>user\nWhen does it open?<|im_end|>\n<|im_start|>assistant\nAt six.<|im_end|><|endoftext|>",
        "Door 1 of the depot is painted red.",
    ]
    path = tmp_path / "joined.jsonl"
    path.write_text("".join(json.dumps({"text": row}) + "\n" for row in rows))
    notes = build_datasets(DataConfig(train=[str(path)]), smollm2_tokenizer, seed=0).report.notes
    (chat,) = [note for note in notes if "chat-template markup" in note]
    assert chat.startswith("1 of the 3 text examples") and f"(e.g. '<|im_start|>' at {path}:2)" in chat
    (joined,) = [note for note in notes if "document token" in note]
    assert joined.startswith("1 of the 3 text examples hold the text of a document token")
    assert f"(e.g. '<|endoftext|>' at {path}:1)" in joined
    assert "ends each text example with the EOS token itself" in joined and "chats" not in joined
    text = build_datasets(DataConfig(train=[str(path)], max_length=512), smollm2_tokenizer, seed=0).train
    ids = [tok for row in text for tok in row.input_ids]
    # what the note says: one EOS ends each example, the texts' markers being characters, not tokens
    assert ids.count(smollm2_tokenizer.eos_token_id) == len(rows)
    assert smollm2_tokenizer.convert_tokens_to_ids("<|endoftext|>") not in ids


def test_a_training_folder_holding_files_named_as_held_out_splits_is_noted(tmp_path, smollm2_tokenizer):
    """snips' folder holds train.jsonl, valid.jsonl and test.jsonl: given as data.train it trained on all three
    without a word, and a later eval on test.jsonl scored rows the model had seen. A task's reader and a mixture's
    source are noted alike; a file named itself is taken as meant."""
    from tunelab.config import load_config
    from tunelab.tasks.classify import CLASSIFY

    folder = tmp_path / "snips"
    folder.mkdir()
    for name in ("train.jsonl", "valid.jsonl", "en_test.jsonl", "contest.jsonl"):
        qa_file(folder, 4, name=name)
    notes = build_datasets(DataConfig(train=[str(folder)]), smollm2_tokenizer, seed=0).report.notes
    (note,) = [n for n in notes if "held-out" in n]
    assert note.startswith(f"{folder}: en_test.jsonl, valid.jsonl are named as held-out splits, but a folder is read")
    assert "give a held-out file as data.eval" in note
    mixed = DataConfig(train=[DataSource(path=str(folder), weight=1.0)])
    assert [n for n in build_datasets(mixed, smollm2_tokenizer, seed=0).report.notes if "held-out" in n] == [note]
    named = DataConfig(train=[str(folder / "train.jsonl"), str(folder / "valid.jsonl")])
    assert not [n for n in build_datasets(named, smollm2_tokenizer, seed=0).report.notes if "held-out" in n]
    for path in folder.iterdir():
        path.write_text("".join(json.dumps({"text": f"row {i}", "label": "ab"[i % 2]}) + "\n" for i in range(4)))
    cfg = load_config(None, {"task": "classify", "data.train": [str(folder)], "data.max_length": 64}).config
    assert [n for n in CLASSIFY.build_data(cfg, smollm2_tokenizer, 0).report.notes if "held-out" in n] == [note]
