"""The export's self-check renders the run's training conversations as training read them."""

import json
from types import SimpleNamespace

import yaml

from tunelab.export import check as export_check
from tunelab.export.check import CHECK_ROWS, GGUFCheck, _check_stops, _conversations


def _run(tmp_path, data: dict):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"name": "tiny"}, "data": data}))
    return run


def test_the_self_check_reads_training_rows_through_the_runs_transform_and_delimiter(tmp_path):
    """The self-check read the run's files with the default delimiter and without data.transform or a source's
    options, so a run whose transform made its rows fell back to the probes (or rendered other conversations than
    training did). It reads them now as training did."""
    (tmp_path / "t.csv").write_text("q;a\nWhat is two and two?;Four.\nWhat colour is the sky?;Blue.\n")
    (tmp_path / "shape.py").write_text("def qa(row):\n    return {'question': row['q'].upper(), 'answer': row['a']}\n")
    run = _run(tmp_path, {"train": [str(tmp_path / "t.csv")], "delimiter": ";", "transform": f"{tmp_path}/shape.py:qa"})
    chats, source = _conversations(run, None, 8)
    assert source == "the first 200 rows of the training data"
    assert [c[0]["content"] for c in chats] == ["WHAT IS TWO AND TWO?", "WHAT COLOUR IS THE SKY?"]


def test_the_self_check_reads_a_mixture_source_with_its_own_options(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"q": "Hi?", "a": "Hello."}) + "\n")
    source = {
        "path": str(tmp_path / "a.jsonl"),
        "fields": {"question": "q", "answer": "a"},
        "system_prompt": "Be brief.",
    }
    run = _run(tmp_path, {"train": [source], "system_prompt": "Be long."})
    chats, source = _conversations(run, "Be long.", 8)
    assert source == "the first 200 rows of the training data"
    assert chats == [
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi?"},
            {"role": "assistant", "content": "Hello."},
        ]
    ]


def test_the_self_check_says_why_it_falls_back_to_the_probes(tmp_path):
    run = _run(tmp_path, {"train": [str(tmp_path / "gone.jsonl")]})
    chats, source = _conversations(run, None, 8)
    assert source.startswith("probes (") and "gone.jsonl" in source and chats


def test_the_self_check_converts_only_the_first_rows_of_a_large_set(tmp_path):
    """The self-check renders 8 conversations, but put every row of the training data through data.transform and
    the format reader first: seconds per 100k rows. Only the first CHECK_ROWS rows of each source are now, and the
    output says so."""
    rows = [{"question": f"Question {i}?", "answer": f"Answer {i}."} for i in range(CHECK_ROWS + 50)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "count.py").write_text(
        f"def seen(row):\n    open({str(tmp_path / 'n')!r}, 'a').write('x')\n    return row\n"
    )
    run = _run(tmp_path, {"train": [str(tmp_path / "t.jsonl")], "transform": f"{tmp_path}/count.py:seen"})
    chats, source = _conversations(run, None, 8)
    assert len(chats) == 8 and source == f"the first {CHECK_ROWS} rows of the training data"
    assert len((tmp_path / "n").read_text()) == CHECK_ROWS


def test_the_self_check_reads_no_further_than_the_rows_it_checks(tmp_path, monkeypatch):
    """The self-check converts the first CHECK_ROWS rows, but read every file whole first: a 5 GB .jsonl was loaded
    into memory (and every line of it parsed) to check 200 rows. Its files are now read a line at a time and no
    further: lines past the first rows are never read (a damaged one there is not reached), in a plain list of files
    and in a mixture's source, .jsonl and .csv alike."""
    import tunelab.data.decode as decode

    total = 20 * CHECK_ROWS
    good = [{"question": f"Question {i}?", "answer": f"Answer {i}."} for i in range(total)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good) + "{not json\n")
    (tmp_path / "t.csv").write_text(
        "question,answer\n" + "".join(f"Q {i}?,A {i}.\n" for i in range(total)) + "one,too,many\n"
    )
    lines_read = []

    class Counted:
        """A binary file whose lines, read by iteration, are counted."""

        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def __iter__(self):
            for line in self.f:
                lines_read.append(line)
                yield line

    opened = decode._open
    monkeypatch.setattr(
        decode, "_open", lambda path: Counted(opened(path)) if path.suffix == ".jsonl" else opened(path)
    )
    for k, train in enumerate(([str(tmp_path / "t.jsonl")], [{"path": str(tmp_path / "t.jsonl")}])):
        lines_read.clear()
        (tmp_path / f"case-{k}").mkdir()
        chats, source = _conversations(_run(tmp_path / f"case-{k}", {"train": train}), None, 8)
        assert len(chats) == 8 and source == f"the first {CHECK_ROWS} rows of the training data", source
        assert 8 <= len(lines_read) <= CHECK_ROWS + 1  # of 4001
    for k, train in enumerate(([str(tmp_path / "t.csv")], [{"path": str(tmp_path / "t.csv")}]), start=2):
        (tmp_path / f"case-{k}").mkdir()
        chats, source = _conversations(_run(tmp_path / f"case-{k}", {"train": train}), None, 8)
        assert len(chats) == 8 and source == f"the first {CHECK_ROWS} rows of the training data", source


def test_the_self_check_reads_no_further_into_the_questions_than_it_asks(tmp_path):
    """The self-check asks a few of eval.questions but read (and checked) the whole file first: a damaged row far
    down a large questions file failed the export's check. It reads the first CHECK_ROWS rows."""
    from tunelab.export.check import check_questions

    asked = [{"question": f"What is the code of box {i}?", "expected": str(1000 + i)} for i in range(5 * CHECK_ROWS)]
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in asked) + "{damaged\n")
    run = _run(tmp_path, {"train": [str(tmp_path / "t.jsonl")]})
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump(config | {"eval": {"questions": str(questions)}}))
    assert check_questions(run, 3) == ([f"What is the code of box {i}?" for i in range(3)], str(questions))


def test_one_end_of_turn_token_llama_cpp_does_not_stop_at_is_named_in_the_singular(monkeypatch):
    """The export check said 'llama.cpp does not stop generating at the trained end-of-turn token(s)' of one token."""
    tokenizer = SimpleNamespace(convert_ids_to_tokens=lambda ids: [f"<t{i}>" for i in ids])
    merged = SimpleNamespace(tokenizer=tokenizer, template=SimpleNamespace(stop_token_ids=[7]))
    monkeypatch.setattr(export_check.llama_cpp, "is_end_of_generation", lambda llm, i: False)
    result = GGUFCheck("m.gguf", "q8_0")
    _check_stops(result, merged, None, "")
    assert result.problems == [
        "llama.cpp does not stop generating at 1 trained end-of-turn token <t7>: the GGUF file marks it neither EOS "
        "nor end of generation",
        'the Modelfile does not stop at 1 trained end-of-turn token <t7>; add PARAMETER stop "<t7>"',
    ]


def test_the_stop_messages_name_only_the_tokens_missing_and_a_few_of_many(monkeypatch):
    """The Modelfile's stop message listed every stop parameter and every trained token, those in order included."""
    tokenizer = SimpleNamespace(convert_ids_to_tokens=lambda ids: [f"<t{i}>" for i in ids])
    merged = SimpleNamespace(tokenizer=tokenizer, template=SimpleNamespace(stop_token_ids=[1, 2, 3, 4, 5, 6]))
    monkeypatch.setattr(export_check.llama_cpp, "is_end_of_generation", lambda llm, i: i != 6)
    result = GGUFCheck("m.gguf", "q8_0")
    _check_stops(result, merged, None, 'PARAMETER stop "<t1>"\nPARAMETER stop "<t3>"\n')
    assert result.problems == [
        "llama.cpp does not stop generating at 1 trained end-of-turn token <t6>: the GGUF file marks it neither EOS "
        "nor end of generation",
        "the Modelfile does not stop at 4 trained end-of-turn tokens <t2>, <t4>, <t5> and 1 more; add PARAMETER stop "
        '"<t2>" (and one per token)',
    ]


def test_the_printed_stop_line_names_only_what_fails():
    from tunelab.export.check import _stops_line

    fine = {"llama_cpp_stops_on": {"<a>": True, "<b>": True}, "modelfile": ["<a>", "<b>"]}
    assert _stops_line(fine) == "llama.cpp and the Modelfile stop at all 2 trained end-of-turn tokens (<a>, <b>)"
    bad = {"llama_cpp_stops_on": {"<a>": True, "<b>": False, "<c>": True}, "modelfile": ["<a>", "<b>"]}
    assert _stops_line(bad) == (
        "of 3 trained end-of-turn tokens; llama.cpp DOES NOT STOP at <b>; the Modelfile DOES NOT LIST <c>"
    )
    assert _stops_line({}) == "not checked"


def test_a_text_llama_cpp_splits_differently_is_shown_where_it_differs(tmp_path, smollm2_tokenizer):
    """The check said 'llama.cpp splits 2 of 8 training texts differently' and kept each text's first 120 characters,
    which showed only the system prompt every text starts with: nothing told where, or how, the split differed. It
    names the first differing token, the text around it and the next tokens of both sides. The run here trained
    with SmolLM2's tokenizer as tunelab converted it before it took llama.cpp's split (conversion 2: GPT-2's)."""
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer

    from tunelab.data.templates import resolve_template

    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer.name_or_path)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    (tmp_path / "t.jsonl").write_text(json.dumps({"question": "Steps?", "answer": "Do this:\n\n1. Mix."}) + "\n")
    run = _run(tmp_path, {"train": [str(tmp_path / "t.jsonl")]})

    class SmollmSplit:  # "\n\n" before a digit as one token, as llama.cpp's smollm pre-tokenizer splits it
        metadata = {"tokenizer.ggml.pre": "smollm"}

        def tokenize(self, text: bytes, add_bos: bool, special: bool) -> list[int]:
            ids = tok(text.decode(), add_special_tokens=False)["input_ids"]
            newline, both = tok.convert_tokens_to_ids("Ċ"), tok.convert_tokens_to_ids("ĊĊ")
            i = next(k for k in range(len(ids) - 2) if ids[k] == ids[k + 1] == newline and ids[k + 2] != newline)
            return ids[:i] + [both] + ids[i + 2 :]

    merged = SimpleNamespace(
        tokenizer=tok, template=resolve_template("tokenizer", tok), info=SimpleNamespace(system_prompt=None)
    )
    result = GGUFCheck("m.gguf", "f16")
    export_check._check_template(result, merged, SmollmSplit(), "", run, adds_bos=False)
    (mismatch,) = result.tokens["mismatched"]
    assert mismatch["tokenizer"] == ["\n", "\n", "1"] and mismatch["llama_cpp"] == ["\n\n", "1", "."]
    assert "Do this:\n\n1." in mismatch["near"]
    assert result.problems[0].startswith("llama.cpp splits 1 of 1 training texts differently (the first at token ")
    assert "the tokenizer ['\\n', '\\n', '1'], llama.cpp ['\\n\\n', '1', '.']" in result.problems[0]
    # and why: the file names the base's pre-tokenizer, which the tokenizer transformers made of that GGUF lacks
    assert result.problems[0].endswith(
        "; the file's pre-tokenizer is 'smollm', the base model's, while the tokenizer the run trained with splits as "
        "llama.cpp's 'gpt-2'"
    )


def test_a_preference_run_renders_the_probes_saying_why(tmp_path):
    """The self-check of a dpo run read its pairs as sft rows and printed the format reader's error as the reason for
    the probes ('cannot tell the data format from the fields 'prompt', 'chosen', 'rejected' ...'), which reads as
    damaged training data. It says what the rows are instead, for dpo, kto and grpo runs alike."""
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go."}) + "\n")
    for extra, rows in (
        ({"task": "dpo"}, "preference pairs"),
        ({"task": "dpo", "dpo": {"loss": "kto"}}, "feedback rows"),
        ({"task": "grpo"}, "prompts without answers"),
    ):
        run = _run(tmp_path, {"train": [str(tmp_path / "pairs.jsonl")]})
        config = yaml.safe_load((run / "config.yaml").read_text()) | extra
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        chats, source = _conversations(run, None, 8)
        task = extra["task"]
        assert source == f"probes (a {task} run's training rows are {rows}, not conversations)" and chats
        for path in run.iterdir():
            path.unlink()
        run.rmdir()
