"""What eval and predict read of a finished classify or reward run: labels written another way, the rows training
dropped, a CSV file's delimiter, inputs too long to score, a run changed or missing its config."""

import json
import re

import pytest

import tunelab.training.recipe as recipe
from tunelab.cli import main
from tunelab.data.report import DataReport
from tunelab.eval.heads import evaluate_head_run
from tunelab.infer.predict import predict
from tunelab.tasks.reward import read_scored

from .head_setup import head_overrides, write_labels, write_pairs, write_rows


@pytest.fixture
def label_file(tmp_path):
    return write_labels(tmp_path)


@pytest.fixture
def pair_file(tmp_path):
    return write_pairs(tmp_path)


def test_head_eval_of_a_run_replaced_meanwhile_saves_nothing(tiny_model_dir, tmp_path, label_file, monkeypatch):
    """`train --overwrite` replaced a classify run while eval scored it: eval.json then held the old model's scores as
    the new run's (the eval of runs that generate text already refused that)."""
    import tunelab.eval.heads as heads
    from tunelab.errors import RunDirError

    run = recipe.train(None, head_overrides(tiny_model_dir, tmp_path, "classify", label_file)).run_dir
    real = heads.head_outputs

    def replacing(*args, **kwargs):
        info = json.loads((run / "run.json").read_text())
        (run / "run.json").write_text(json.dumps(info | {"note": "another run"}))  # what a new run writes there
        return real(*args, **kwargs)

    monkeypatch.setattr(heads, "head_outputs", replacing)
    with pytest.raises(RunDirError, match="the run was replaced or changed while eval ran"):
        heads.evaluate_head_run(run, label_file, "cpu")
    assert not (run / "eval.json").exists()


def test_eval_reads_a_label_written_another_way_as_the_runs(tiny_model_dir, tmp_path, capsys, cli_flags):
    """A CSV's 1.0 for the run's 1 (pandas writes a float column so), or 'Spam' for 'spam', was scored as a label the
    run never trained on: every such row an error. A row of a label the run never trained on was scored as an error
    by `tunelab eval` while training's eval skipped it: one file, two accuracies. Both skip it now, and agree."""
    rows = [{"prompt": f"{('awful', 'great')[i % 2]} number {i}", "label": i % 2} for i in range(16)]
    data = write_rows(tmp_path / "numbers.jsonl", rows)
    test = tmp_path / "test.csv"
    test.write_text("prompt,label\ngreat number 1,1.0\nawful number 2,0.0\ngreat number 3,1.0\nfine number 4,2.0\n")
    over = head_overrides(tiny_model_dir, tmp_path, "classify", data, **{"data.eval": str(test), "train.eval_every": 3})
    assert main(["train", *cli_flags(over)]) == 0
    run = tmp_path / "run-classify"
    assert json.loads((run / "run.json").read_text())["extra"]["labels"] == ["0", "1"]
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in logged if "eval_accuracy" in r][-1]
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(test), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "read as its: 1.0 as 1 (2), 0.0 as 0 (1)" in printed
    assert f"skipped 1: label not among the training labels ('2.0') ({test}:5)" in printed
    assert "a row whose label the run never trained on is skipped, as training's eval skips it" in printed
    saved = json.loads((run / "eval.json").read_text())
    assert saved["respelt"] == {"1.0": {"label": "1", "rows": 2}, "0.0": {"label": "0", "rows": 1}}
    assert saved["skipped"]["label not among the training labels ('2.0')"]["count"] == 1
    assert saved["rows_read"] == 3 and {r["expected"] for r in saved["rows"]} == {"0", "1"}
    assert saved["tuned"]["accuracy"] == pytest.approx(trained["eval_accuracy"])
    assert saved["tuned"]["eval_loss"] == pytest.approx(trained["eval_loss"], rel=1e-4)


def test_eval_of_a_class_weighted_run_reports_the_loss_training_logged(tiny_model_dir, tmp_path, capsys, cli_flags):
    """With class or label weights training logs (and keep_best reads) the weighted cross-entropy as eval_loss, while
    `tunelab eval` reported the plain one under the same name: two numbers for one file. Its eval_loss is now the
    weighted one, as logged, and the plain one is there under its own name; both printouts say which is which."""
    rows = [{"prompt": f"{('awful', 'great')[i % 2]} number {i}", "label": ("neg", "pos")[i % 2]} for i in range(16)]
    data, held = write_rows(tmp_path / "l.jsonl", rows[:12]), write_rows(tmp_path / "e.jsonl", rows[12:])
    over = head_overrides(tiny_model_dir, tmp_path, "classify", data, **{"data.eval": held, "model.device": "cpu"})
    over |= {"classify.label_weights": {"pos": 3.0}}
    capsys.readouterr()
    assert main(["train", *cli_flags(over)]) == 0
    assert "eval loss (class-weighted) " in capsys.readouterr().out
    run = tmp_path / "run-classify"
    logged = json.loads((run / "run.json").read_text())["eval_loss"]
    assert main(["eval", str(run), "--data", held, "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    tuned = json.loads((run / "eval.json").read_text())["tuned"]
    assert tuned["eval_loss"] == pytest.approx(logged, rel=1e-4)
    assert tuned["eval_loss_unweighted"] != pytest.approx(tuned["eval_loss"], rel=1e-3)
    assert re.search(rf"eval loss \(class-weighted\) +- +{tuned['eval_loss']:.4f}\n", printed)
    assert re.search(rf"eval loss \(unweighted\) +- +{tuned['eval_loss_unweighted']:.4f}\n", printed)


def test_a_head_run_without_its_config_yaml_says_it_is_missing(tiny_model_dir, tmp_path, label_file, capsys):
    run = recipe.train(None, head_overrides(tiny_model_dir, tmp_path, "classify", label_file)).run_dir
    (run / "config.yaml").unlink()
    assert main(["predict", str(run), "--text", "great", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'config.yaml'}: the run's config.yaml is missing" in err and "Traceback" not in err


@pytest.mark.parametrize("task", ["classify", "reward"])
def test_eval_skips_the_rows_training_drops_as_too_long(task, tiny_model_dir, tmp_path, label_file, pair_file, capsys):
    """Training's eval dropped the rows longer than max_length (data.overlong=drop) while `tunelab eval` cut and
    scored them: the same file gave two accuracies. Both now skip them, with training's reason."""
    long = " ".join(["great lovely fine"] * 30)
    if task == "classify":
        rows = [{"prompt": long, "label": "neg"}, {"prompt": "great number 1", "label": "pos"}]
        rows += [{"prompt": "awful number 2", "label": "neg"}, {"prompt": long + " 2", "label": "neu"}]
    else:
        rows = [{"prompt": "Say something kind 1", "chosen": long, "rejected": "Go away 1"}]
        rows += [
            {"prompt": f"Say something kind {i}", "chosen": f"You are great {i}", "rejected": "Go"} for i in (2, 3)
        ]
    held = write_rows(tmp_path / "held.jsonl", rows)
    train = label_file if task == "classify" else pair_file
    run = recipe.train(None, head_overrides(tiny_model_dir, tmp_path, task, train, **{"data.eval": held})).run_dir
    report = json.loads((run / "data_report.json").read_text())
    trained = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in trained if "eval_accuracy" in r][-1]["eval_accuracy"]
    capsys.readouterr()
    assert main(["eval", str(run), "--data", held, "--device", "cpu", "--no-save"]) == 0
    printed = capsys.readouterr().out
    reason = "longer than max_length (64 tokens; data.overlong=drop)"
    assert report["skips"][reason]["count"] == (2 if task == "classify" else 1)
    assert f"skipped {report['skips'][reason]['count']}: {reason} ({held}:1" in printed
    result = evaluate_head_run(run, held, "cpu", save=False)
    assert result.rows_read == 2 and result.tuned["accuracy"] == pytest.approx(trained)


def test_a_head_runs_csv_file_is_split_by_its_data_delimiter(tiny_model_dir, tmp_path):
    """A classify run trained on .csv rows split at | (data.delimiter), whose header splits at a comma as well, read
    its eval file so; `tunelab eval` split the same file at the comma detection chose, and refused it."""
    rows = [(("neg", "pos")[i % 2], f"{('awful', 'great')[i % 2]}, number {i}, said") for i in range(16)]
    train, held = tmp_path / "l.csv", tmp_path / "e.csv"
    train.write_text("label|prompt, as said\n" + "".join(f"{lab}|{p}\n" for lab, p in rows[:12]))
    held.write_text("label|prompt, as said\n" + "".join(f"{lab}|{p}\n" for lab, p in rows[12:]))
    over = head_overrides(tiny_model_dir, tmp_path, "classify", str(train), **{"data.eval": str(held)})
    over |= {"data.delimiter": "|", "data.fields": {"prompt": "prompt, as said"}, "model.device": "cpu"}
    run = recipe.train(None, over).run_dir
    logged = json.loads((run / "run.json").read_text())["eval_loss"]
    result = evaluate_head_run(run, str(held), "cpu", save=False)
    assert result.rows_read == 4 and result.tuned["eval_loss"] == pytest.approx(logged, rel=1e-4)


def test_predict_splits_a_csv_file_by_the_runs_data_delimiter(tiny_model_dir, tmp_path):
    """`tunelab predict --data FILE.csv` detected the separator of the file on its own, where training and `eval`
    split the run's .csv rows at data.delimiter: a file of the run's own form was split at the comma of its header
    and refused. predict reads it as training did now, for a classify run's rows and a reward run's answers."""
    rows = [(("neg", "pos")[i % 2], f"{('awful', 'great')[i % 2]}, number {i}, said") for i in range(16)]
    train, new = tmp_path / "l.csv", tmp_path / "new.csv"
    train.write_text("label|prompt, as said\n" + "".join(f"{lab}|{p}\n" for lab, p in rows[:12]))
    new.write_text("prompt, as said\n" + "".join(f"{p}\n" for _, p in rows[12:]))
    over = head_overrides(tiny_model_dir, tmp_path, "classify", str(train))
    over |= {"data.delimiter": "|", "data.fields": {"prompt": "prompt, as said"}, "model.device": "cpu"}
    run = recipe.train(None, over).run_dir
    predicted = predict(run, data=str(new), device="cpu")
    assert [p.where for p in predicted] == [f"{new}:{line}" for line in range(2, 6)]
    answers = tmp_path / "answers.csv"
    answers.write_text("prompt|answer\nHi, there|Hello, you\n")
    scored = read_scored([str(answers)], {}, None, DataReport(), "|")
    assert [x.messages[-1]["content"] for x, _, _ in scored] == ["Hello, you"]


def test_predict_refuses_an_input_whose_start_fills_max_length(tiny_model_dir, tmp_path, label_file):
    """Training skips a row whose start (system prompt, template header) fills max_length; predict scored its last
    tokens, a form the head never read. It is now refused by name."""
    from tunelab.errors import DataError
    from tunelab.infer.predict import predict

    run = recipe.train(None, head_overrides(tiny_model_dir, tmp_path, "classify", label_file)).run_dir
    rows = [{"prompt": "great number 1"}, {"prompt": "awful number 2", "system": " ".join(["table chair door"] * 30)}]
    data = write_rows(tmp_path / "new.jsonl", rows)
    with pytest.raises(DataError, match=r"new.jsonl:2: cannot be scored: its start \(BOS, system prompt, template header: \d+ tokens\) leaves no room"):  # fmt: skip
        predict(run, data=data, device="cpu")
    assert len(predict(run, data=write_rows(tmp_path / "ok.jsonl", rows[:1]), device="cpu")) == 1


def test_reward_eval_skips_pairs_whose_sides_are_the_same_once_cut(tiny_model_dir, tmp_path, pair_file):
    """With data.overlong=truncate, reward training skips a pair whose sides differ only in the part the cut takes
    away; `tunelab eval` scored it, a margin of 0 counted wrong. It is skipped alike now, with training's reason."""
    filler = " ".join(["great lovely fine"] * 30)
    rows = [{"prompt": "Say something kind 1", "chosen": f"Yes {filler}", "rejected": f"No {filler}"}]
    rows += [{"prompt": f"Say something kind {i}", "chosen": f"You are great {i}", "rejected": "Go"} for i in (2, 3)]
    held = write_rows(tmp_path / "held.jsonl", rows)
    over = {"data.eval": held, "data.overlong": "truncate"}
    run = recipe.train(None, head_overrides(tiny_model_dir, tmp_path, "reward", pair_file, **over)).run_dir
    reason = "chosen and rejected are the same in their 64 kept tokens"
    assert json.loads((run / "data_report.json").read_text())["skips"][reason]["locations"] == [f"{held}:1"]
    result = evaluate_head_run(run, held, "cpu", save=False)
    assert result.rows_read == 2 and result.skipped[reason]["locations"] == [f"{held}:1"]


def test_reward_eval_of_single_answers_names_predict_with_this_run_and_file(
    tiny_model_dir, tmp_path, pair_file, capsys
):
    """tunelab eval of a reward run given one answer a row sent its caller to 'tunelab predict RUN --data FILE' (in
    Python: tunelab.predict(run, ...)): the run's directory is known there, and named, as the caller spells it."""
    import shlex

    import tunelab
    from tunelab.errors import DataError

    over = {"output_dir": str(tmp_path / "my run"), "train.max_steps": 1}
    run = recipe.train(None, head_overrides(tiny_model_dir, tmp_path, "reward", pair_file, **over)).run_dir
    answers = write_rows(tmp_path / "answers.jsonl", [{"prompt": "Say something kind", "answer": "You are great"}])
    assert main(["eval", str(run), "--data", answers, "--device", "cpu"]) == 2
    said = capsys.readouterr().err
    assert f"Score single answers with 'tunelab predict {shlex.quote(str(run))} --data {answers}'." in said
    with pytest.raises(DataError) as err:
        tunelab.evaluate(run, data=answers, device="cpu")
    assert f"Score single answers with tunelab.predict({str(run)!r}, data={answers!r})." in str(err.value)


def test_a_reward_model_refuses_an_answer_whose_prompt_start_fills_max_length(tiny_model_dir, tmp_path, pair_file):
    """A reward model scoring sampled answers (grpo) scored the last tokens of a prompt whose system message alone
    filled max_length, which training never read; it now says which answer it cannot score."""
    from tunelab.errors import DataError
    from tunelab.tasks.head_run import load_reward_model

    run = recipe.train(None, head_overrides(tiny_model_dir, tmp_path, "reward", pair_file)).run_dir
    reward = load_reward_model(run, device="cpu")
    system = {"role": "system", "content": " ".join(["table chair door"] * 30)}
    assert len(reward(["Say something kind 1"], ["You are great"])) == 1
    with pytest.raises(DataError, match=rf"reward model {run}, answer 2 of 2 scored: cannot be scored: its start"):
        reward(["Say something kind 1", [system, {"role": "user", "content": "hi"}]], ["You are great", "Go"])


def test_predict_says_a_txt_file_of_several_lines_is_one_input(tiny_model_dir, tmp_path, capsys):
    """A .txt file is one text record, as in training: `tunelab predict --data messages.txt` with one message a line
    gave one prediction for the whole file, and --out one row, without a word."""
    from tunelab.infer.predict import predict

    rows = [{"text": f"{('awful', 'great')[i % 2]} number {i}", "label": ("neg", "pos")[i % 2]} for i in range(12)]
    run = recipe.train(
        None, head_overrides(tiny_model_dir, tmp_path, "classify", write_rows(tmp_path / "t.jsonl", rows))
    ).run_dir
    capsys.readouterr()
    several, one = tmp_path / "messages.txt", tmp_path / "letter.txt"
    several.write_text("great number 1\n\nawful number 2\nfine number 3\n")
    one.write_text("great number 1\n")
    assert len(predict(run, data=str(several), device="cpu")) == 1
    assert f"note: {several} is one input of 3 lines: a .txt file is one text" in capsys.readouterr().err
    assert len(predict(run, data=str(one), device="cpu")) == 1
    assert "note:" not in capsys.readouterr().err


def test_the_majority_baseline_of_labels_that_tie_says_they_tie(tiny_model_dir, tmp_path, label_file):
    """A run trained on as many rows of each label (examples/intents: 80 each) was scored beside `majority class
    (auto_and_commute)`, as if that label were the most frequent; it was only the first name of a tie. The baseline
    says the labels tie now; one label more frequent than the others is named alone."""
    run = recipe.train(None, head_overrides(tiny_model_dir, tmp_path, "classify", label_file)).run_dir
    tied = evaluate_head_run(run, label_file, "cpu").baseline_name
    assert tied == "majority class (neg, first by name of 3 tied at 8 rows)", tied
    rows = [json.loads(line) for line in open(label_file)] + [{"prompt": "great number 99", "label": "pos"}]
    more = write_rows(tmp_path / "more.jsonl", rows)
    over = head_overrides(tiny_model_dir, tmp_path, "classify", more, output_dir=str(tmp_path / "more-run"))
    run = recipe.train(None, over).run_dir
    assert evaluate_head_run(run, label_file, "cpu").baseline_name == "majority class (pos)"


@pytest.mark.parametrize("task", ["classify", "reward"])
def test_head_eval_shows_a_progress_bar_while_it_scores(task, tiny_model_dir, tmp_path, label_file, pair_file, capsys):
    """`tunelab eval` of a classifier printed nothing until its tables: on the spam example's 1,035 test rows minutes
    of silence on a CPU, where the eval of a run that generates text shows a bar while it answers. It shows one for
    each model it scores (a reward run: the tuned model and the untrained head)."""
    data = label_file if task == "classify" else pair_file
    run = recipe.train(None, head_overrides(tiny_model_dir, tmp_path, task, data)).run_dir
    capsys.readouterr()
    assert main(["eval", str(run), "--data", data, "--no-save", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "scores, tuned model" in err
    assert ("scores, untrained head" in err) == (task == "reward")


def test_load_reward_model_refuses_another_tasks_run_by_its_own_name_before_loading(
    tiny_model_dir, tiny_run_dir, tmp_path, label_file, monkeypatch
):
    """tunelab.load_reward_model of an sft run said 'tunelab.predict() needs a classify or reward run', naming a call
    no one made, and a classify run was refused only after its model had loaded."""
    import tunelab
    import tunelab.tasks.head_run as head_run
    from tunelab.errors import RunDirError

    classify = recipe.train(None, head_overrides(tiny_model_dir, tmp_path, "classify", label_file)).run_dir
    monkeypatch.setattr(head_run, "load_head_model", lambda *a, **k: pytest.fail("the model was loaded"))
    for run, task in ((tiny_run_dir, "an sft"), (classify, "a classify")):
        with pytest.raises(RunDirError, match=rf"{task} run, not a reward model; a reward function is a finished run "):
            tunelab.load_reward_model(run)
