"""`tunelab compare` and `tunelab eval` as a user meets them: the run's compare.json is never replaced silently, the
scores come first and the answers go to the file (or behind --show-answers), progress shows while answering, and the
run's eval.max_new_tokens is the default answer length."""

import json
import shutil

import pytest

import tunelab
from tunelab.cli import main
from tunelab.config import dump_yaml, load_config
from tunelab.data.templates import resolve_template
from tunelab.errors import DataError, RunDirError
from tunelab.eval.compare import Comparison, Row, format_comparison, format_scores, save_comparison, score
from tunelab.eval.questions import answer_settings
from tunelab.infer.generate import GenerationSettings
from tunelab.rundir import write_config

from ..smollm2_vocab import (  # noqa: F401 (SmolLM2's vocabulary)
    smollm2_tiny_model_dir,
    smollm2_tiny_run_dir,
    smollm2_tiny_tokenizer,
)

TOKENS = 3  # the run's eval.max_new_tokens in these tests


@pytest.fixture
def run(tiny_run_dir, tmp_path):
    """A copy of the tiny finished run whose config asks for TOKENS new tokens per answer."""
    copy = shutil.copytree(tiny_run_dir, tmp_path / "run")
    cfg = load_config(copy / "config.yaml").config
    cfg.eval.max_new_tokens = TOKENS
    write_config(copy, dump_yaml(cfg))
    return copy


@pytest.fixture
def questions(tmp_path):
    path = tmp_path / "q.jsonl"
    rows = [{"question": f"Code of box {i}?", "expected": f"{1000 + 37 * i}", "kind": "fact"} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_runs_answer_length_is_the_default(run, smollm2_tokenizer):
    assert answer_settings(None, run).max_new_tokens == TOKENS
    assert answer_settings(GenerationSettings(max_new_tokens=7), run).max_new_tokens == 7
    template = resolve_template("chatml", smollm2_tokenizer)
    assert GenerationSettings().kwargs(template, smollm2_tokenizer)["max_new_tokens"] == 128  # generate


def test_a_grpo_runs_answers_are_not_cut_shorter_than_it_sampled_them(run):
    """A grpo run sampled (and its held-out reward judged) answers of up to grpo.max_new_tokens; compare and eval
    cut them at eval.max_new_tokens (64 by default), so a reasoning answer lost its end and eval scored other answers
    than training's eval did. They now take the longer of the two."""
    cfg = load_config(run / "config.yaml").config
    cfg.task, cfg.grpo.rewards, cfg.grpo.max_new_tokens = "grpo", ["contains"], TOKENS + 100
    write_config(run, dump_yaml(cfg))
    assert answer_settings(None, run).max_new_tokens == TOKENS + 100
    cfg.grpo.max_new_tokens = TOKENS - 1  # eval.max_new_tokens is more: it is kept
    write_config(run, dump_yaml(cfg))
    assert answer_settings(None, run).max_new_tokens == TOKENS
    assert answer_settings(GenerationSettings(max_new_tokens=7), run).max_new_tokens == 7


def test_compare_prints_scores_first_and_never_replaces_compare_json_silently(run, questions, capsys):
    assert main(["compare", str(run), "--questions", str(questions), "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("scores:") and "fact" in out
    assert "Code of box 1?" not in out  # the answers are in the file, not on the terminal
    assert f"{run / 'compare.json'} ('tunelab report {run}' shows them side by side)" in out
    assert "answers, tuned model" in err and "answers, base model" in err  # progress while answering
    saved = json.loads((run / "compare.json").read_text())
    assert len(saved["rows"]) == 3 and saved["settings"]["max_new_tokens"] == TOKENS

    before = (run / "compare.json").read_text()
    assert main(["compare", str(run), "--question", "Hi?", "--device", "cpu"]) == 2
    out, err = capsys.readouterr()
    assert "compare.json exists" in err and "--overwrite" in err and "Traceback" not in err
    assert "answers, tuned model" not in err  # refused before generating anything
    assert (run / "compare.json").read_text() == before

    args = ["compare", str(run), "--questions", str(questions), "--device", "cpu", "--max-new-tokens", "2"]
    assert main([*args, "--overwrite", "--show-answers"]) == 0
    out = capsys.readouterr().out
    assert out.index("scores:") < out.index("[1] Code of box 0?")
    # the answers shown are saved too, and the file is named, as a later compare refuses to replace it unasked
    assert out.index("[1] Code of box 0?") < out.index(f"answers of base and tuned model: {run / 'compare.json'}")
    assert json.loads((run / "compare.json").read_text())["settings"]["max_new_tokens"] == 2

    assert main(["compare", str(run), "--question", "Hi?", "--no-save", "--device", "cpu"]) == 0
    assert "[1] Hi?" in capsys.readouterr().out  # nothing to score: the answers are the result


def test_compare_takes_a_batch_size_as_eval_does(run, questions, capsys):
    """`tunelab eval` had --batch-size and `tunelab compare`, which answers the same way, had none: its questions were
    answered 16 at a time, and only the Python API could say otherwise (settings.batch_size)."""
    import tunelab
    from tunelab.errors import ConfigError

    assert main(["compare", str(run), "--questions", str(questions), "--device", "cpu", "--batch-size", "2"]) == 0
    assert json.loads((run / "compare.json").read_text())["settings"]["batch_size"] == 2
    result = tunelab.compare(run, questions=questions, device="cpu", save=False, batch_size=1)
    assert result.settings["batch_size"] == 1
    with pytest.raises(ConfigError, match=r"^argument 'batch_size' is 0; give a whole number, 1 or more"):
        tunelab.compare(run, questions=questions, save=False, batch_size=0)
    with pytest.raises(SystemExit) as exit_:  # argparse's own exit
        main(["compare", str(run), "--question", "Hi?", "--batch-size", "0"])
    assert exit_.value.code == 2 and "--batch-size: 0 is out of range" in capsys.readouterr().err


def test_eval_defaults_to_the_runs_answer_length(run, questions, capsys):
    assert main(["eval", str(run), "--data", str(questions), "--device", "cpu", "--show-answers"]) == 0
    out, err = capsys.readouterr()
    assert json.loads((run / "eval.json").read_text())["settings"]["max_new_tokens"] == TOKENS
    assert "loss on expected texts" in out and "[1] Code of box 0?" in out
    assert "answers, tuned model" in err


def test_answers_cut_at_max_new_tokens_are_counted_and_marked(run, questions, capsys):
    """An answer that runs to max_new_tokens without ending its turn may stop before the expected text, which
    'contains' then misses; compare and eval printed such scores without a word (alpaca answers of hundreds of
    tokens, asked at the default 64, scored 0% 'contains'). They now count the cut answers, say how many beside the
    scores, mark them among the answers and save them (compare.json's base_cut/tuned_cut, eval.json's cut)."""
    assert main(["compare", str(run), "--questions", str(questions), "--device", "cpu", "--show-answers"]) == 0
    out = capsys.readouterr().out
    rows = json.loads((run / "compare.json").read_text())["rows"]
    base, tuned = sum(r["base_cut"] for r in rows), sum(r["tuned_cut"] for r in rows)
    assert tuned > 0 and base > 0  # the tiny random model does not end its turn within TOKENS tokens
    assert f"cut at max_new_tokens ({TOKENS}): base {base} of 3 answers, tuned {tuned} of 3" in out
    assert out.count("[cut at max_new_tokens]") == base + tuned

    assert main(["eval", str(run), "--data", str(questions), "--device", "cpu", "--show-answers"]) == 0
    out = capsys.readouterr().out
    saved = json.loads((run / "eval.json").read_text())
    base, tuned = saved["base"]["cut_answers"], saved["tuned"]["cut_answers"]
    assert (base, tuned) == tuple(sum(r[m]["cut"] for r in saved["rows"]) for m in ("base", "tuned"))
    assert tuned > 0 and f"cut at max_new_tokens ({TOKENS}): base {base} of 3 answers, tuned {tuned} of 3" in out
    assert out.count("[cut at max_new_tokens]") == base + tuned


def test_the_cut_line_counts_only_the_cut_answers(run, questions, monkeypatch, capsys):
    """Answers that ended their turn are not counted as cut; with none cut, no line is printed."""
    import tunelab.eval.compare as compare_module

    cut = {"base": [False, False, False], "tuned": [True, False, True]}
    calls = []

    def answering(model, tokenizer, template, conversations, settings, progress=None, names=None, generator=None):
        calls.append(model)
        which = "tuned" if len(calls) == 1 else "base"
        return [f"Box {i}" for i in range(len(conversations))], cut[which]

    monkeypatch.setattr(compare_module, "generate_answers", answering)
    assert main(["compare", str(run), "--questions", str(questions), "--device", "cpu", "--no-save"]) == 0
    out = capsys.readouterr().out
    assert f"cut at max_new_tokens ({TOKENS}): base 0 of 3 answers, tuned 2 of 3" in out
    assert "--max-new-tokens N (or eval.max_new_tokens) gives them more room" in out  # the CLI's flag alone
    assert "GenerationSettings" not in out
    calls.clear()
    tunelab.compare(run, questions=questions, device="cpu", save=False, show=True)
    out = capsys.readouterr().out  # a Python caller is told the settings it passes, not the CLI's flag
    assert "settings=GenerationSettings(max_new_tokens=N) (or eval.max_new_tokens) gives them more room" in out
    assert "--max-new-tokens" not in out
    cut["tuned"] = [False, False, False]
    calls.clear()
    assert main(["compare", str(run), "--questions", str(questions), "--device", "cpu", "--no-save"]) == 0
    assert "cut at max_new_tokens" not in capsys.readouterr().out


def test_a_missing_questions_file_is_named_before_an_existing_result(run, questions, tmp_path, capsys):
    """With compare.json or eval.json already there, a mistyped --questions/--data path was answered with 'exists.
    Pass --overwrite', and only the run with --overwrite said that the file was not there."""
    (run / "compare.json").write_text("{}")
    (run / "eval.json").write_text("{}")
    missing = tmp_path / "nope.jsonl"
    for command in (["compare", str(run), "--questions", str(missing)], ["eval", str(run), "--data", str(missing)]):
        assert main([*command, "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert f"{missing}: " in err and "not found" in err and "exists" not in err, err
    assert main(["compare", str(run), "--questions", str(questions), "--device", "cpu"]) == 2  # still refused
    assert "compare.json exists" in capsys.readouterr().err


def test_a_missing_file_is_named_in_the_same_words_by_eval_compare_and_predict(run, tmp_path, capsys):
    """eval (of a generation or a head run) and predict said '<file>: file not found. Check the path given to eval
    (--data; ...)', compare only '<file>: question file not found.', naming no option. Each now names the file, the
    command and the option that gave it, in the same words, and exits 2."""
    head = tmp_path / "head"
    head.mkdir()
    (head / "run.json").write_text(
        json.dumps({"base_model": "x", "method": "lora", "finished": True, "task": "classify"})
    )
    missing = tmp_path / "nope.jsonl"
    commands = [
        ("eval", run, "--data"),
        ("eval", head, "--data"),
        ("predict", head, "--data"),
        ("compare", run, "--questions"),
    ]
    for command, run_dir, option in commands:
        assert main([command, str(run_dir), option, str(missing), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        said = f"{missing}: file not found. Check the path given to {command} ({option}; a relative path is read "
        assert said in err and "Traceback" not in err, err
    python = [  # a Python caller is told the function and the argument, not the CLI's command and flag
        (lambda: tunelab.evaluate(run, missing, device="cpu"), "tunelab.evaluate() (argument 'data'"),
        (lambda: tunelab.evaluate(head, missing, device="cpu"), "tunelab.evaluate() (argument 'data'"),
        (lambda: tunelab.predict(head, missing, device="cpu"), "tunelab.predict() (argument 'data'"),
        (lambda: tunelab.compare(run, questions=missing, device="cpu"), "tunelab.compare() (argument 'questions'"),
    ]
    for call, where in python:
        with pytest.raises(DataError) as refused:
            call()
        said = str(refused.value)
        assert f"{missing}: file not found. Check the path given to {where}; a relative path" in said, said
        assert "--" not in said


def test_save_comparison_refuses_an_existing_file(tmp_path):
    result = Comparison([Row("q", "a", "all", "b", "a", False, True)], {"all": {"n": 1, "base": 0.0, "tuned": 1.0}})
    save_comparison(result, tmp_path)
    with pytest.raises(RunDirError, match="compare.json exists"):
        save_comparison(result, tmp_path)
    save_comparison(result, tmp_path, overwrite=True)
    assert "[1] q" in format_comparison(result, show_answers=True)
    assert "[1] q" not in format_comparison(result, tmp_path / "compare.json")


def test_correct_is_a_share_of_the_rows_with_an_expected_answer():
    """A kind holding rows with and without an expected answer: 'correct' is over the scored rows, and the line
    says how many those are (it printed n=3 beside a share of 2)."""
    rows = [
        Row("a", "x", "fact", "x", "x", True, True),
        Row("b", "y", "fact", "no", "y", False, True),
        Row("c", None, "fact", "hm", "hm", None, None),
    ]
    scores = score(rows)
    assert scores["fact"] == {"n": 3, "scored": 2, "base": 0.5, "tuned": 1.0}
    assert "(n=  3)   2 with an expected answer   correct: base  50.0% -> tuned 100.0%" in format_scores(scores)
    assert "with an expected" not in format_scores(score(rows[:2]))


def test_a_run_without_its_config_yaml_is_refused_naming_it(run, questions, capsys):
    """A run whose config.yaml was deleted was asked and scored with the default data settings (no column mapping,
    the default max_length and answer length): another format than it trained on, without a word."""
    (run / "config.yaml").unlink()
    for command in (
        ["eval", str(run), "--data", str(questions), "--no-save"],
        ["compare", str(run), "--questions", str(questions), "--no-save"],
        ["compare", str(run), "--question", "Hi?", "--no-save"],
    ):
        assert main([*command, "--device", "cpu"]) == 2
        out, err = capsys.readouterr()
        assert f"{run / 'config.yaml'}: the run's config.yaml is missing" in err and "Traceback" not in err
        assert "answers, tuned model" not in err  # refused before any answer
    assert "--max-new-tokens gives it instead" in err
    # a question given directly needs only the answer length from the config
    assert (
        main(["compare", str(run), "--question", "Hi?", "--no-save", "--max-new-tokens", "2", "--device", "cpu"]) == 0
    )


def test_an_unwritable_output_is_refused_before_any_answer(run, questions, tmp_path, monkeypatch, capsys):
    """eval and compare on a run in a read-only folder answered every question, for minutes, and then failed to save;
    now the folder is tried first, as the save will write it."""
    import errno
    import os
    from pathlib import Path

    real_open = Path.open
    read_only = {run, tmp_path / "out"}

    def open_in_read_only_folders(self, mode="r", *args, **kwargs):
        if self.parent in read_only and set(mode) & set("wax"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_in_read_only_folders)
    (tmp_path / "out").mkdir()
    for command, path in (
        (["eval", str(run), "--data", str(questions)], run / "eval.json"),
        (
            ["eval", str(run), "--data", str(questions), "--out", str(tmp_path / "out" / "e.json")],
            tmp_path / "out" / "e.json",
        ),
        (["compare", str(run), "--questions", str(questions)], run / "compare.json"),
    ):
        assert main([*command, "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert f"{path}: cannot be written (Read-only file system)" in err and "Traceback" not in err
        assert "answers, tuned model" not in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


def test_a_full_run_whose_base_is_gone_is_refused_before_any_answer(
    tiny_model_dir, qa_file, questions, tmp_path, capsys
):
    """A full run opens without its base, which eval and compare load only for the base side, after every tuned
    answer: minutes of answers ended in the error that the base was gone."""
    base = shutil.copytree(tiny_model_dir, tmp_path / "base")
    overrides = {
        "model.name": str(base),
        "data.train": [str(qa_file)],
        "data.max_length": 64,
        "method.name": "full",
        "train.max_steps": 1,
        "output_dir": str(tmp_path / "full"),
    }
    from tunelab.api import train

    run = train(None, overrides).run_dir
    shutil.rmtree(base)
    for command in (["eval", str(run), "--data", str(questions)], ["compare", str(run), "--questions", str(questions)]):
        assert main([*command, "--no-save", "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert "the base model the run trained over is not there any more" in err and "Traceback" not in err
        assert "answers, tuned model" not in err


def test_an_earlier_comparison_names_each_callers_own_arguments(tmp_path):
    """tunelab.compare() beside an earlier compare.json was told of --overwrite and --no-save, its own arguments in
    brackets; the CLI got the brackets too. Each is told of its own way."""
    from tunelab.config.flags import CLI
    from tunelab.eval.compare import check_writable

    path = tmp_path / "compare.json"
    path.write_text("{}")
    with pytest.raises(RunDirError) as caught:
        check_writable(path, overwrite=False)
    assert str(caught.value).endswith(
        "Pass overwrite=True to replace it, or save=False to print the scores without saving."
    )
    with pytest.raises(RunDirError) as caught:
        check_writable(path, overwrite=False, spelling=CLI)
    assert str(caught.value).endswith(
        "Pass --overwrite to replace it, or --no-save to print the scores without saving."
    )
    check_writable(path, overwrite=True)
    folder = tmp_path / "run" / "compare.json"
    folder.mkdir(parents=True)
    with pytest.raises(RunDirError, match=r"move it away, or pass save=False to print the scores without saving\.$"):
        check_writable(folder, overwrite=True)


def test_a_folder_named_compare_json_is_refused_before_any_answer(run, questions, capsys):
    """A folder at RUN/compare.json was found only when the result was written, after base and tuned model had
    answered every question (and, without --overwrite, was called an earlier comparison)."""
    folder = run / "compare.json"
    folder.mkdir()
    for flags in ([], ["--overwrite"]):
        assert main(["compare", str(run), "--questions", str(questions), "--device", "cpu", *flags]) == 2
        err = capsys.readouterr().err
        assert f"{folder}: is a folder, where compare writes its result file" in err and "Traceback" not in err
        assert "or pass --no-save to print the scores without saving.\n" in err
        assert "answers, tuned model" not in err
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_rows_the_transform_drops_are_counted_in_compare_json_and_said(run, questions, tmp_path, capsys):
    """Question rows the run's data.transform drops were said on stderr only: compare.json had no count of them
    (eval.json has). They are counted there now, in eval.json's format, and a line of the printed scores says so."""
    (tmp_path / "shaping.py").write_text(
        "def drop_one(row):\n    return None if row['question'].endswith('box 1?') else row\n"
    )
    cfg = load_config(run / "config.yaml").config
    cfg.data.transform = f"{tmp_path / 'shaping.py'}:drop_one"
    write_config(run, dump_yaml(cfg))
    assert main(["compare", str(run), "--questions", str(questions), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    saved = json.loads((run / "compare.json").read_text())
    assert len(saved["rows"]) == 2
    (reason, dropped), *others = saved["transform_dropped"].items()
    assert not others and dropped["count"] == 1 and "data.transform" in reason
    assert dropped["locations"] == [f"{questions}:2"]
    assert f"not read: 1 {reason}" in out


def test_a_comparison_without_dropped_rows_says_nothing_of_them():
    result = Comparison(
        [Row("q?", "a", "fact", "a", "b", True, False)], score([Row("q?", "a", "fact", "a", "b", True, False)])
    )
    assert "not read" not in format_comparison(result)
    assert result.to_dict()["transform_dropped"] == {}


def test_questions_holding_characters_the_tokenizer_drops_are_said_and_saved(run, questions, capsys):
    """compare asked questions holding characters SmolLM2's tokenizer drops (it has no token for U+0004 and no
    unknown token) without a word: both models answered them without those characters. They are counted now as
    training counts its rows, said under the scores, saved in compare.json as `unread` and shown by the report."""
    from tunelab.eval.report_inputs import Input
    from tunelab.eval.report_scores import eval_section

    rows = [json.loads(line) for line in questions.read_text().splitlines()]
    rows[1]["question"] = "Code\x04 of box 1?"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["compare", str(run), "--questions", str(questions), "--question", "Hi\x04\x04?", "--device", "cpu"]
    assert main(argv) == 0
    line = (
        "2 rows hold characters the tokenizer drops, having no token for them (U+0004 x3): "
        f"first at {questions}:2; they are answered without them"
    )
    assert f"  {line}" in capsys.readouterr().out.splitlines()
    saved = json.loads((run / "compare.json").read_text())
    assert saved["unread"] == {
        "rows": 2,
        "chars": {"U+0004": 3},
        "first": f"{questions}:2",
        "held": 0,
        "effect": "answered",
    }
    assert f"<p>{line}.</p>" in eval_section(Input("eval.json"), Input("compare.json", saved))
    assert main(["compare", str(run), "--question", "Hi?", "--device", "cpu", "--overwrite"]) == 0
    assert "tokenizer drops" not in capsys.readouterr().out
    clean = json.loads((run / "compare.json").read_text())
    assert clean["unread"] == {} and "tokenizer drops" not in eval_section(Input("eval.json"), Input("c", clean))


def test_ctrl_c_in_the_comparison_after_training_says_the_run_is_saved(
    tiny_overrides, tmp_path, cli_flags, monkeypatch, capsys
):
    """Ctrl-C while the finished run answered its eval.questions printed a bare "interrupted" (exit 130), as if the
    training were lost; it says now that the run is saved, and the command that compares it."""
    from tunelab.eval import compare as comparing

    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": "What is the code of box 3?", "expected": "1111"}) + "\n")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(comparing, "compare", interrupted)
    overrides = tiny_overrides | {"train.max_steps": 2, "eval.questions": str(questions)}
    assert main(["train", *cli_flags(overrides)]) == 130
    err = capsys.readouterr().err
    run = overrides["output_dir"]
    assert "interrupted after training, in the comparison of eval.questions" in err
    assert f"The run is finished and saved in {run}; compare.json was not written" in err
    assert f"tunelab compare {run} --questions {questions}" in err
    assert json.loads((tmp_path / "run" / "run.json").read_text())["finished"] is True


def test_compare_without_questions_asks_the_runs_eval_questions(run, questions, capsys):
    """`tunelab compare RUN` without --questions or --question was refused, though the run's config names the
    questions training compared on (eval.questions): it asks those now, and says so; a run that sets none is refused
    naming its config.yaml (exit 2)."""
    assert main(["compare", str(run), "--no-save", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "no questions to compare on: give --questions FILE or --question TEXT; the run's" in err
    assert f"the run's {run / 'config.yaml'} sets no eval.questions" in err and "Python" not in err
    with pytest.raises(DataError) as caught:  # a Python caller is told of its own arguments alone
        tunelab.compare(run, save=False, device="cpu")
    assert str(caught.value) == (
        f"no questions to compare on: give questions= or question=; the run's {run / 'config.yaml'} sets no "
        "eval.questions."
    )
    cfg = load_config(run / "config.yaml").config
    cfg.eval.questions = str(questions)
    write_config(run, dump_yaml(cfg))
    assert main(["compare", str(run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"questions: {questions} (the run's eval.questions)" in out and out.splitlines()[1].startswith("scores:")
    assert len(json.loads((run / "compare.json").read_text())["rows"]) == 3
    questions.unlink()
    assert main(["compare", str(run), "--no-save", "--device", "cpu"]) == 2
    err = capsys.readouterr().err  # worded as a missing --questions file is (below)
    assert f"{questions}: file not found. Check the path in eval.questions of {run / 'config.yaml'}" in err


def test_an_empty_list_of_questions_is_refused_not_read_as_none(run, questions):
    """`compare(run, question=[])` (a filter that kept no question) asked every question of the run's
    eval.questions, as if none had been given; it is refused naming the argument, before any model loads."""
    from tunelab.errors import ConfigError

    cfg = load_config(run / "config.yaml").config
    cfg.eval.questions = str(questions)
    write_config(run, dump_yaml(cfg))
    for empty in ([], ()):
        with pytest.raises(ConfigError, match=r"argument 'question' is an empty list"):
            tunelab.compare(run, question=empty, save=False, device="cpu")
    assert not (run / "compare.json").exists()
