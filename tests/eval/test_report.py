"""The HTML report: every section from a hand-made run directory, rendered by a real headless browser; missing
inputs are said, user text is escaped, nothing is fetched from the network."""

import json
import math
import re

import pytest

import tunelab
from tunelab.errors import RunDirError
from tunelab.eval.evaluate import Answer, EvalResult, EvalRow, ModelScores
from tunelab.eval.metrics import contains, exact_match, label_scores, predict_label, refused, rouge_l, text_scores
from tunelab.eval.report import build_report, render_report, word_diff

REFUSAL = "I can only answer questions about Tallowmere Robotics."
LABELS = ["complaint", "praise"]
# (question, expected, kind, base answer, tuned answer)
ANSWERS = [
    (
        "Where is Tallowmere's main office?",
        "Dundee",
        "fact",
        "Tallowmere is a fictional place in England.",
        "Our main office is in Dundee, Scotland.",
    ),
    (
        "When was Tallowmere founded?",
        "1997",
        "fact",
        "I am not sure when it was founded.",
        "Tallowmere Robotics was founded in 1997.",
    ),
    (
        "What colours does the Burrowbot come in?",
        "moss green and slate grey",
        "fact",
        "Robots usually come in white.",
        "The Burrowbot comes in moss green and slate grey.",
    ),
    (
        "How long should I boil an egg? <script>alert(1)</script>",
        REFUSAL,
        "off_topic",
        "Boil it for 7 minutes.",
        REFUSAL,
    ),
    ("Is 'the robot broke in a day' a complaint or praise?", "complaint", "label", "It is a complaint.", "complaint"),
    (
        "Is 'best purchase this year' a complaint or praise?",
        "praise",
        "label",
        "This sounds like a complaint.",
        "praise",
    ),
    ("Is 'it pulls every weed' a complaint or praise?", "praise", "label", "Hard to say.", "complaint"),
]


def _scores(answers: list[str], loss: float, tokens_per_s: float) -> tuple[ModelScores, list[Answer]]:
    expected = [a[1] for a in ANSWERS]
    scores = ModelScores(
        loss,
        math.exp(loss),
        text_scores(answers, expected, REFUSAL),
        generated_tokens=300,
        generation_s=300 / tokens_per_s,
        tokens_per_s=tokens_per_s,
    )
    for kind in ("fact", "off_topic", "label"):
        idx = [i for i, a in enumerate(ANSWERS) if a[2] == kind]
        scores.by_kind[kind] = text_scores([answers[i] for i in idx], [expected[i] for i in idx], REFUSAL)
    idx = [i for i, a in enumerate(ANSWERS) if a[2] == "label"]
    scores.label_tasks["label"] = label_scores(
        [expected[i] for i in idx], [predict_label(answers[i], LABELS) for i in idx], LABELS
    )
    rows = [
        Answer(
            a,
            exact_match(a, e),
            contains(a, e),
            r,
            refused(a, REFUSAL),
            predict_label(a, LABELS) if q[2] == "label" else None,
        )
        for a, e, r, q in zip(answers, expected, rouge_l(answers, expected), ANSWERS)
    ]
    return scores, rows


def make_run(run_dir):
    """Every file the report reads, with readable content (no model needed)."""
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(
        json.dumps(
            {
                "base_model": "smollm2-135m-instruct",
                "method": "lora",
                "template": "tokenizer",
                "system_prompt": "You answer for Tallowmere.",
                "refusal": REFUSAL,
                "impl": "fast",
                "total_steps": 40,
                "finished": True,
                "steps": 40,
                "final_loss": 0.41,
                "eval_loss": 0.62,
                "tokens": 52000,
                "elapsed_s": 301.5,
            }
        )
    )
    records = []
    for step in range(1, 41):
        records.append(
            {
                "step": step,
                "epoch": step / 20,
                "loss": 2.5 * math.exp(-step / 12) + 0.35,
                "lr": 2e-4 * min(1, step / 4) * (1 + math.cos(math.pi * step / 40)) / 2,
                "grad_norm": 1.5 * math.exp(-step / 20) + 0.2,
                "tokens_per_s": 170 + 10 * math.sin(step),
                "elapsed_s": 7.5 * step,
            }
        )
        if step % 10 == 0:
            records.append({"step": step, "eval_loss": 2.4 * math.exp(-step / 14) + 0.55})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_dir / "config.yaml").write_text(
        "output_dir: runs/faq\nmodel:\n  name: smollm2-135m-instruct\ndata:\n  system_prompt: <b>not bold</b>\n"
    )
    (run_dir / "data_report.json").write_text(
        json.dumps(
            {
                "files": {"data/train.jsonl": {"read": 130, "used": 126, "skipped": 3, "truncated": 1}},
                "formats": {"data/train.jsonl": "question_answer"},
                "template": "tokenizer",
                "max_length": 96,
                "packed": False,
                "skips": {
                    "empty answer": {"count": 2, "locations": ["data/train.jsonl:7", "data/train.jsonl:19"]},
                    "longer than max_length (96 tokens; data.overlong=drop)": {
                        "count": 1,
                        "locations": ["data/train.jsonl:88"],
                    },
                },
                "lengths": {
                    "count": 127,
                    "min": 31,
                    "max": 110,
                    "mean": 52.3,
                    "median": 49,
                    "p95": 81,
                    "bin_edges": [i * 6 for i in range(21)],
                    "counts": [0, 0, 0, 0, 0, 4, 11, 25, 30, 21, 14, 9, 5, 3, 2, 1, 0, 1, 0, 1],
                },
                "train": {"examples": 114, "used": 113, "rows": 113, "tokens": 5900, "loss_tokens": 1800},
                "eval": {"examples": 13, "used": 13, "rows": 13, "tokens": 680, "loss_tokens": 210},
                "eval_source": "fraction",
            }
        )
    )
    base, base_rows = _scores([a[3] for a in ANSWERS], 2.91, 180.0)
    tuned, tuned_rows = _scores([a[4] for a in ANSWERS], 0.58, 172.0)
    rows = [
        EvalRow(q, e, k, "label" if k == "label" else "text", f"heldout.jsonl:{i}", b, t)
        for i, ((q, e, k, _, _), b, t) in enumerate(zip(ANSWERS, base_rows, tuned_rows), 1)
    ]
    EvalResult(
        str(run_dir),
        "heldout.jsonl",
        "smollm2-135m-instruct",
        "lora",
        REFUSAL,
        {"max_new_tokens": 64},
        "cpu",
        len(ANSWERS),
        len(ANSWERS),
        120,
        {},
        base,
        tuned,
        rows,
    ).save()
    (run_dir / "compare.json").write_text(
        json.dumps({"rows": [], "scores": {"fact": {"n": 3, "base": 0.0, "tuned": 1.0}}})
    )
    return run_dir


def test_answers_cut_at_max_new_tokens_are_a_row_of_the_eval_table(tmp_path):
    """eval.json counts the answers that ran to max_new_tokens (they may stop before the expected text); the report
    shows the count beside the scores it qualifies, and no row where none was cut (or an older eval.json)."""
    run = make_run(tmp_path / "run")
    row = "<th>answers cut at max_new_tokens</th>"
    assert row not in render_report(run)
    saved = json.loads((run / "eval.json").read_text())
    saved["base"]["cut_answers"], saved["tuned"]["cut_answers"] = 5, 2
    (run / "eval.json").write_text(json.dumps(saved))
    assert f'{row}<td class="num">5</td><td class="num">2</td>' in render_report(run)


def test_word_diff_marks_changed_words_and_escapes():
    old, new = word_diff("the box is <red>", "the box is blue")
    assert old == "the box is <del>&lt;red&gt;</del>"
    assert new == "the box is <ins>blue</ins>"
    assert word_diff("same words", "same words") == ("same words", "same words")
    assert word_diff("", "new") == ("", "<ins>new</ins>")


def test_page_is_self_contained_and_escaped(tmp_path):
    page = render_report(make_run(tmp_path / "run"))
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>not bold</b>" not in page and "&lt;b&gt;not bold&lt;/b&gt;" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing loaded from elsewhere
    assert "<link" not in page and "@import" not in page
    assert "data/train.jsonl:88" in page  # skipped rows keep their locations


def test_missing_inputs_are_said_not_fatal(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"base_model": "m", "method": "lora", "finished": False}))
    (run / "metrics.jsonl").write_text("{not json\n")
    page = build_report(run).read_text()
    assert "No training metrics: metrics.jsonl could not be read" in page
    assert "No eval scores" in page and "No compare scores" in page and "No answers to show" in page
    assert "No data report: data_report.json is not in the run directory" in page
    assert "No config" in page and "no (the run stopped early" in page


def test_a_missing_evaluation_names_the_runs_own_eval_command(tmp_path):
    """The page said 'tunelab eval RUN_DIR --data FILE' of every run: it names this run's directory, and --overwrite
    where an unreadable eval.json is in the way, for the command line and for Python."""
    import html
    import shlex

    run = make_run(tmp_path / "my run")
    (run / "eval.json").unlink(missing_ok=True)
    where = str(run.resolve())
    page = html.unescape(render_report(run))
    assert "RUN_DIR" not in page
    assert f"tunelab eval {shlex.quote(where)} --data FILE'" in page
    assert f"tunelab.evaluate({where!r}, data=FILE)" in page
    (run / "eval.json").write_text("{torn")
    page = html.unescape(render_report(run))
    assert f"tunelab eval {shlex.quote(where)} --data FILE --overwrite'" in page
    assert f"tunelab.evaluate({where!r}, data=FILE, overwrite=True)" in page
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info | {"task": "classify"}))
    page = html.unescape(render_report(run))
    assert "RUN " not in page and f"tunelab eval {shlex.quote(where)} --data FILE --overwrite'" in page


def test_no_answers_names_the_runs_own_eval_and_compare_commands(tmp_path):
    """The answers section of a text run said "Run 'tunelab eval' or 'tunelab compare'": it names both commands with
    this run's directory, in the command line's and Python's spelling, and --overwrite where a file is in the way."""
    import html
    import shlex

    run = tmp_path / "my run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"base_model": "m", "method": "lora", "finished": True}))
    where = str(run.resolve())
    answers = html.unescape(render_report(run).split("Answers side by side", 1)[1])
    assert "No answers to show" in answers and "'tunelab eval' or" not in answers
    assert f"'tunelab eval {shlex.quote(where)} --data FILE'" in answers
    assert f"tunelab.evaluate({where!r}, data=FILE)" in answers
    assert f"'tunelab compare {shlex.quote(where)} --questions FILE'" in answers
    assert f"tunelab.compare({where!r}, questions=FILE)" in answers
    (run / "compare.json").write_text("{torn")
    answers = html.unescape(render_report(run).split("Answers side by side", 1)[1])
    assert f"'tunelab compare {shlex.quote(where)} --questions FILE --overwrite'" in answers
    assert f"tunelab.compare({where!r}, questions=FILE, overwrite=True)" in answers


def test_a_torn_metrics_line_or_a_damaged_data_report_leave_the_rest(tmp_path):
    run = make_run(tmp_path / "run")
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 99, "loss"')  # a line torn by a crash
    (run / "data_report.json").write_text("[]")
    page = build_report(run).read_text()
    assert "No training metrics" not in page
    assert "No data report: data_report.json is damaged (not a JSON object)" in page


def test_a_result_file_of_other_shapes_costs_its_section_not_the_report(tmp_path, capsys):
    """eval.json, compare.json or data_report.json that parse as JSON but hold what tunelab does not write there
    (edited by hand, written by another version) ended the report in a Python traceback."""
    from tunelab.cli import main

    run = make_run(tmp_path / "run")
    (run / "eval.json").write_text('{"rows": [1, 2]}')
    (run / "data_report.json").write_text('{"files": 3}')
    assert main(["report", str(run), "--overwrite"]) == 0
    page = (run / "report.html").read_text()
    assert "Not shown: eval.json or compare.json holds what tunelab does not write there" in page
    assert "Not shown: data_report.json holds" in page and "Training curves" in page and "<svg" in page
    (run / "eval.json").write_text(json.dumps({"task": "classify", "tuned": 3}))
    (run / "run.json").write_text(json.dumps(json.loads((run / "run.json").read_text()) | {"task": "classify"}))
    assert main(["report", str(run), "--overwrite"]) == 0
    assert "Not shown: eval.json holds" in (run / "report.html").read_text()
    assert "Traceback" not in capsys.readouterr().err


def test_a_kept_best_step_is_named_beside_the_last_steps_eval_loss(tmp_path):
    """With train.keep_best keeping an earlier step, run.json's eval_loss is that step's; the report called it the
    final eval loss, the loss of weights the run did not end with."""
    run = make_run(tmp_path / "run")
    info = json.loads((run / "run.json").read_text())
    info |= {"eval_loss": 0.5, "extra": {"best": {"step": 20, "eval_loss": 0.5}}}
    (run / "run.json").write_text(json.dumps(info))
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 40, "eval_loss": 0.7123}) + "\n")
    page = render_report(run)
    assert "final eval loss" not in page
    assert "<th>eval loss of the result</th><td>0.5000 (step 20, the lowest; kept by train.keep_best)</td>" in page
    assert "<th>eval loss at the last step</th><td>0.7123</td>" in page
    info["extra"]["best"]["step"] = 40  # the last step was the best: its loss is the final one
    (run / "run.json").write_text(json.dumps(info))
    assert "<th>final eval loss</th><td>0.5000</td>" in render_report(run)


def test_the_loss_plot_marks_the_early_stop_and_the_best_step_when_run_json_has_them(tmp_path, monkeypatch):
    """The loss plot did not show where early stopping ended the run nor which step's weights train.keep_best kept
    (run.json's extra.early_stop and extra.best): they are drawn as vertical lines with a legend entry each, named
    in the caption, and only for a run that records them."""
    import matplotlib.axes

    run = make_run(tmp_path / "run")
    info = json.loads((run / "run.json").read_text())
    lines, real = [], matplotlib.axes.Axes.axvline
    monkeypatch.setattr(
        matplotlib.axes.Axes, "axvline", lambda self, x, **k: lines.append((x, k["label"])) or real(self, x, **k)
    )

    def marks() -> list[tuple[float, str]]:  # the lines drawn but the data histogram's max_length one
        return [line for line in lines if not line[1].startswith("max_length")]

    plain = render_report(run)
    assert marks() == [] and "marked:" not in plain
    stop = {"step": 30, "planned_steps": 40, "patience": 2, "best_step": 10, "best_eval_loss": 0.6, "waited": [20, 30]}
    stopped = info | {"end": {"reason": "early_stopped", "step": 30}, "extra": {"early_stop": stop}}
    (run / "run.json").write_text(json.dumps(stopped))
    page = render_report(run)
    assert marks() == [(30, "early stop (step 30)"), (10, "best eval (step 10)")]
    assert (
        "Loss: train (every logged step) and eval (held-out examples); marked: early stop (step 30), best eval" in page
    )
    lines.clear()
    stopped["extra"]["best"] = {"step": 20, "eval_loss": 0.5}  # keep_best's choice names the best step
    (run / "run.json").write_text(json.dumps(stopped))
    assert "best eval, kept by keep_best (step 20)" in render_report(run)
    assert marks() == [(30, "early stop (step 30)"), (20, "best eval, kept by keep_best (step 20)")]
    lines.clear()
    kept_only = info | {"extra": {"best": {"step": 20, "eval_loss": 0.5}, "early_stop": stop}}  # it ran every step
    (run / "run.json").write_text(json.dumps(kept_only))
    render_report(run)
    assert marks() == [(20, "best eval, kept by keep_best (step 20)")]


def test_a_grpo_run_shows_its_held_out_reward_not_a_negative_eval_loss(tmp_path, monkeypatch):
    """grpo logs eval_loss = -eval_reward (for keep_best): the report's summary read 'final eval loss -0.6000' and its
    loss plot drew that negated reward as an eval loss beside the surrogate loss."""
    import tunelab.eval.report_plots as plots

    run = make_run(tmp_path / "run")
    info = json.loads((run / "run.json").read_text()) | {"task": "grpo", "eval_loss": -0.8}
    (run / "run.json").write_text(json.dumps(info | {"extra": {"best": {"step": 20, "eval_loss": -0.8}}}))
    records = [{"step": s, "loss": 0.01, "reward": 0.5} for s in range(1, 41)]
    records += [{"step": s, "eval_loss": -r, "eval_reward": r} for s, r in ((0, 0.4), (20, 0.8), (40, 0.6))]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    drawn = []
    monkeypatch.setattr(plots, "curve_plot", lambda series, *a, **k: drawn.append([n for n, _, _ in series]) or "")
    page = render_report(run)
    assert "<th>held-out reward of the result</th><td>0.8000 (step 20, the highest; kept by train.keep_best)" in page
    assert "<th>held-out reward at the last step</th><td>0.6000</td>" in page and "eval loss" not in page
    assert ["train loss"] in drawn and not any("eval loss" in names for names in drawn)
    (run / "run.json").write_text(json.dumps(info))
    assert "<th>final held-out reward</th><td>0.8000</td>" in render_report(run)


def test_the_loss_axis_names_what_the_runs_loss_is_averaged_over(tmp_path, monkeypatch):
    """The loss plots of every run said nats / token; a classify run's loss is per example, a dpo or reward run's per
    pair, as the verdict says them."""
    import matplotlib.axes

    import tunelab.eval.report_plots as plots
    from tunelab.training.metrics import loss_axis, plot_losses

    assert loss_axis(["sft"]) == loss_axis([]) == loss_axis([None]) == "loss (nats / token)"
    assert loss_axis(["classify"]) == "loss (nats / example)" and loss_axis(["reward"]) == "loss (nats / pair)"
    assert loss_axis(["sft", "dpo", "sft"]) == "loss (nats / token or pair)"  # a staged run's stages
    run = make_run(tmp_path / "run")
    axes = []
    monkeypatch.setattr(plots, "curve_plot", lambda series, ylabel, *a, **k: axes.append(ylabel) or "")
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info | {"task": "classify"}))
    render_report(run)
    assert "loss (nats / example)" in axes
    stages = [{"name": "one", "task": "sft"}, {"name": "two", "task": "dpo"}]
    (run / "run.json").write_text(json.dumps(info | {"task": "dpo", "extra": {"stages": stages}}))
    axes.clear()
    render_report(run)
    assert "loss (nats / token or pair)" in axes
    labels = []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_ylabel", lambda self, text, *a, **k: labels.append(text))
    assert plot_losses(run, ["dpo"]).is_file() and labels == ["loss (nats / pair)"]


def test_compare_scores_of_a_label_task_are_not_called_contains_expected(tmp_path):
    """compare judges a label question by the label the answer names (eval.metrics.correct); the report called every
    compare score 'correct (contains expected)', and marked each answer 'contains expected' on hover."""
    run = make_run(tmp_path / "run")
    (run / "eval.json").unlink()
    row = {"question": "Is 'it broke' a complaint?", "expected": "complaint", "kind": "sentiment"}
    row |= {"base": "Not a complaint: praise.", "tuned": "complaint", "base_ok": False, "tuned_ok": True}
    scores = {"sentiment": {"n": 1, "base": 0.0, "tuned": 1.0}}
    (run / "compare.json").write_text(json.dumps({"rows": [row], "scores": scores}))
    page = render_report(run)
    assert "contains expected" not in page
    assert "<th>[sentiment] (n=1) correct</th>" in page
    assert (
        "correct: the answer contains the expected text (a label task: the label it names is the expected one)" in page
    )
    assert 'title="correct: contains the expected text (a label task: names the expected label)"' in page


def test_a_federated_run_is_summed_up_in_rounds_without_a_token_count(tmp_path):
    """A federated run's run.json counts rounds in steps and holds no tokens: the report said 'optimizer steps 3 of
    3' and 'tokens trained on 0', and named the kept round a step."""
    run = make_run(tmp_path / "run")
    info = json.loads((run / "run.json").read_text())
    extra = {"federated": {"rounds_done": 3, "rounds": 3}, "best": {"step": 2, "eval_loss": 0.5}}
    (run / "run.json").write_text(json.dumps(info | {"steps": 3, "total_steps": 3, "tokens": 0, "extra": extra}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 3, "round": 3, "loss": 0.4, "eval_loss": 0.6}) + "\n")
    page = render_report(run)
    assert "<th>rounds</th><td>3 of 3</td>" in page and "optimizer steps" not in page
    assert "tokens trained on" not in page
    assert "(round 2, the lowest; kept by train.keep_best)" in page
    assert "<th>eval loss at the last round</th><td>0.6000</td>" in page


def test_grpo_prompts_are_not_said_to_have_no_tokens_with_loss(tmp_path):
    """grpo's rows are prompts, whose answers are sampled and carry the loss: the data summary (printed by train and
    check) said '25,600 tokens (0 with loss)', and the report's data table a 0 under 'tokens with loss'."""
    from tunelab.data.report import DataReport, SplitStats

    report = DataReport(formats={"train.jsonl": "prompts"}, train=SplitStats(examples=4, used=4, rows=4, tokens=256))
    assert "256 tokens (prompts: the loss is on the answers sampled from them)" in report.summary()
    assert "with loss" not in report.summary()
    sft = DataReport(formats={"train.jsonl": "chat"}, train=SplitStats(examples=4, used=4, rows=4, tokens=256))
    assert "256 tokens (0 with loss)" in sft.summary()  # an sft run with no label is worth seeing as it is
    run = make_run(tmp_path / "run")
    data = json.loads((run / "data_report.json").read_text())
    data["formats"] = {"data/train.jsonl": "prompts"}
    (run / "data_report.json").write_text(json.dumps(data))
    page = render_report(run)
    assert '<td class="num">5,900</td><td>on the sampled answers</td>' in page
    assert '<td class="num">1,800</td>' not in page  # the sft-shaped loss_tokens of the file are not shown


def test_a_classify_evaluation_says_its_skipped_rows_unseen_labels_and_eval_loss(tmp_path):
    """`tunelab eval` of a classifier prints the rows it skipped, the inputs it cut, the labels read another way or
    never trained on, and the eval loss; the report showed none of them beside the same accuracy."""
    run = make_run(tmp_path / "run")
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info | {"task": "classify"}))
    per = {"precision": 1.0, "recall": 0.5, "f1": 0.667, "support": 2, "predicted": 1}
    scores = {"accuracy": 0.5, "macro_f1": 0.4, "labels": ["spam", "ham"], "per_class": {"spam": per, "ham": per}}
    scores["confusion"] = {"spam": {"spam": 1}, "ham": {"ham": 1}}
    skipped = {"empty input": {"count": 2, "locations": ["t.jsonl:3", "t.jsonl:9"]}}
    data = {"task": "classify", "data_file": "t.jsonl", "rows_read": 4, "truncated": 1, "skipped": skipped}
    data |= {"tuned": scores | {"eval_loss": 0.6931}, "baseline": scores, "baseline_name": "majority class"}
    data |= {"unseen": {"<other>": 1}, "respelt": {"Spam": {"label": "spam", "rows": 1}}, "rows": []}
    (run / "eval.json").write_text(json.dumps(data))
    page = render_report(run)
    assert '<tr><th>eval loss</th><td class="num">-</td><td class="num">0.6931</td></tr>' in page
    assert "skipped 2: empty input (t.jsonl:3, t.jsonl:9)" in page
    assert "1 input was longer than the run&#x27;s max_length: its last tokens were kept" in page
    assert "<p>4 rows scored of <code>t.jsonl</code>.</p>" in page
    assert "read as its: Spam as spam (1)" in page
    assert "labels the run never trained on, scored as errors (not in the matrix below): &lt;other&gt; (1)" in page
    unseen = {"label not among the training labels ('x')": {"count": 1, "locations": ["t.jsonl:4"]}}
    (run / "eval.json").write_text(json.dumps(data | {"unseen": {}, "skipped": unseen}))
    page = render_report(run)
    assert "skipped 1: label not among the training labels (&#x27;x&#x27;) (t.jsonl:4)" in page
    assert "a row whose label the run never trained on is skipped, as training&#x27;s eval skips it" in page


def test_the_verdict_training_gave_is_in_the_summary(tmp_path):
    """The run's plain-words verdict (underfit, overfit, fine) is saved in run.json and printed at the end of
    training; the report, the page about the run, left it out."""
    run = make_run(tmp_path / "run")
    info = json.loads((run / "run.json").read_text())
    verdict = {"kind": "overfit", "text": "overfit: the eval loss rose <a lot> from 0.600 at step 40", "numbers": {}}
    (run / "run.json").write_text(json.dumps(info | {"extra": {"verdict": verdict}}))
    assert "<th>verdict</th><td>overfit: the eval loss rose &lt;a lot&gt; from 0.600 at step 40</td>" in render_report(
        run
    )
    staged = {"verdict": verdict, "forgetting": {"stages": ["a", "b"], "matrix": [[1.0], [1.0, 1.0]]}, "stages": []}
    (run / "run.json").write_text(json.dumps(info | {"extra": staged}))
    assert "<th>verdict of the last stage</th>" in render_report(run)


def test_an_unfinished_staged_run_says_where_its_curves_are(tmp_path):
    """A staged run gathers metrics.jsonl from its stages only at the end: the report of one stopped in stage 2 said
    there were no training metrics, with no word of the stage folders that hold them."""
    run = tmp_path / "run"
    run.mkdir()
    info = {"base_model": "m", "method": "lora", "finished": False, "extra": {"stages": ["docs", "qa"]}}
    (run / "run.json").write_text(json.dumps(info))
    (run / "stage-1").mkdir()
    (run / "stage-1" / "run.json").write_text(json.dumps(info | {"extra": {}}))
    page = render_report(run)
    assert "No training metrics: metrics.jsonl is not in the run directory" in page
    assert f"each stage's folder holds its own (stage-1 here): tunelab report {run}/stage-K." in page
    (run / "run.json").write_text(json.dumps(info | {"extra": {}}))  # not a staged run: no such line
    assert "stage-K" not in render_report(run)


def test_a_reward_or_client_named_with_dollar_signs_is_drawn_as_written(tmp_path):
    """matplotlib reads text between two $ as mathtext: a grpo reward named 'cost $\\frac$ x' ended the Rewards
    section in 'metrics.jsonl holds what tunelab does not write there' (a ValueError of the legend), and a federated
    client so named, its federated.png."""
    from tunelab.eval.report_plots import curve_plot
    from tunelab.eval.reward_curves import reward_section
    from tunelab.federated.history import plot_federation

    name = "cost $\\frac$ x"
    records = [{"step": s, "reward": 0.5, f"reward_{name}": 0.1 * s, "reward_b": 0.2} for s in range(1, 5)]
    assert "<svg" in reward_section(records, curve_plot)
    run = tmp_path / "run"
    run.mkdir()
    rounds = [
        {"step": r, "round": r, "loss": 1.0 / r, "eval_loss": 1.2 / r, "bytes_sent": 10, "bytes_received": 10}
        for r in (1, 2)
    ]
    clients = [{"step": r, "round": r, "client": name, "client_loss": 1.0 / r, "status": "ok"} for r in (1, 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds + clients))
    assert plot_federation(run).stat().st_size > 0


def test_build_report_errors(tmp_path):
    with pytest.raises(RunDirError, match="no such run directory"):
        build_report(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(RunDirError, match="not a tunelab run directory"):
        build_report(tmp_path / "plain")
    run = make_run(tmp_path / "run")
    first = build_report(run)
    first.write_text("<p>my notes</p>")  # a page tunelab did not write there
    said = f"{first} exists. Pass overwrite=True to replace it, or out= to write elsewhere."
    for call in (lambda: build_report(run), lambda: tunelab.report(run)):  # the API's caller has no flags to pass
        with pytest.raises(RunDirError) as caught:
            call()
        assert str(caught.value) == said
    assert build_report(run, overwrite=True) == first
    assert build_report(run, tmp_path / "out" / "r.html").is_file()


def test_an_out_file_that_is_not_html_is_refused_before_any_work(tmp_path, capsys):
    """`tunelab report RUN --out r.txt` wrote the HTML page into a .txt name without a word, where `eval --out`
    refuses a name not ending in .json; .html and .htm are taken, in any case."""
    from tunelab.cli import main

    run = make_run(tmp_path / "run")
    for name in ("r.txt", "r.json", "report"):
        out = tmp_path / name
        assert main(["report", str(run), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{out}: the result is written as .html (report.html's format); give --out a file name ending in " in err
        assert ".html or .htm." in err and not out.exists() and "Traceback" not in err
        with pytest.raises(RunDirError, match=r"give out= a file name ending in \.html or \.htm"):
            tunelab.report(run, out=out)
        assert not out.exists()
    for name in ("r.htm", "R.HTML"):
        assert tunelab.report(run, out=tmp_path / name).read_text().startswith("<!DOCTYPE html>")


def test_an_existing_page_names_the_flags_to_the_cli_alone(tmp_path, capsys):
    """tunelab report beside a page of the user's was told of its flags and then of Python's arguments."""
    from tunelab.cli import main

    run = make_run(tmp_path / "run")
    (run / "report.html").write_text("<p>my notes</p>")
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert "report.html exists. Pass --overwrite to replace it, or --out to write elsewhere.\n" in err
    assert "Python" not in err


def test_a_report_made_again_replaces_the_page_of_the_same_run_alone(tmp_path):
    """tunelab report run twice needed --overwrite for the page it wrote itself; a page of another run still does."""
    run, other = make_run(tmp_path / "run"), make_run(tmp_path / "other")
    page = build_report(run)
    page.write_text(page.read_text().replace("</main>", "<p>old</p></main>"))
    assert "<p>old</p>" not in build_report(run).read_text() and tunelab.report(run) == page
    shared = tmp_path / "out" / "r.html"
    build_report(run, shared)
    assert build_report(tmp_path / "out" / ".." / "run", shared) == shared  # the same run, its path spelt otherwise
    with pytest.raises(RunDirError, match="r.html exists. Pass overwrite=True"):
        build_report(other, shared)
    assert str(other.resolve()) in build_report(other, shared, overwrite=True).read_text()


def test_rendered_dom_has_plots_tables_and_answers(tmp_path, chromium):
    page = build_report(make_run(tmp_path / "run"))
    dom = chromium("--dump-dom", page.as_uri())
    svgs = re.findall(r"<svg\b.*?</svg>", dom, flags=re.S)
    # loss, learning rate, tokens/s, grad norm, answer scores, token-length histogram; each drawn with paths
    assert len(svgs) == 6 and all(svg.count("<path") > 10 for svg in svgs)
    for row in (
        "loss on answers (nats / token)",
        "perplexity",
        "exact match",
        "contains expected",
        "ROUGE-L F1",
        "refusal rate",
        "[label] accuracy",
        "[label] macro F1",
        "generated tokens / s",
    ):
        assert f"<th>{row}</th>" in dom, row
    assert (
        '<th>loss on answers (nats / token)</th><td class="num">2.9100</td><td class="num">0.5800</td><td class="num better">-2.3300</td>'
        in dom
    )
    assert dom.count('class="answer-row"') == len(ANSWERS)
    # base right on 1 row (#5), tuned on all but #7: contains expected, or the expected label
    assert dom.count('class="mark ok"') == 7 and dom.count('class="mark ko"') == 7
    assert "<ins>" in dom and "<del>" in dom
    assert 'class="confusion"' in dom and 'class="per-class"' in dom and 'class="skips"' in dom
    assert "output_dir: runs/faq" in dom


def test_screenshot_is_not_blank(tmp_path, chromium):
    from PIL import Image

    page = build_report(make_run(tmp_path / "run"))
    shot = tmp_path / "report.png"
    chromium(f"--screenshot={shot}", "--window-size=1200,2000", "--hide-scrollbars", page.as_uri())
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 2000)
    colours = image.getcolors(maxcolors=1 << 20)
    assert len(colours) > 200  # text, tables and plot lines, not a blank or error page
    white = max(count for count, rgb in colours if rgb == (255, 255, 255))
    assert white < 0.95 * 1200 * 2000


def test_the_data_section_names_the_split_seed_of_the_eval_split(tmp_path):
    """The terminal's data report says `eval (fraction, split seed 7)`; the report's data section said only
    `eval split: fraction`, not which seed drew the held-out examples."""
    run = make_run(tmp_path / "run")
    data = json.loads((run / "data_report.json").read_text())
    (run / "data_report.json").write_text(json.dumps(data | {"eval_source": "fraction", "split_seed": 7}))
    assert "eval split: fraction, split seed 7." in render_report(run)
    (run / "data_report.json").write_text(json.dumps(data | {"eval_source": "file", "split_seed": None}))
    assert "eval split: file." in render_report(run)


def test_a_stopped_run_shows_the_last_eval_loss_it_logged(tmp_path):
    """A run stopped by Ctrl-C (or still training) has no eval_loss in run.json: the summary showed no eval loss at
    all, though metrics.jsonl held the evaluations made before the stop. It shows the last one, with its step."""
    run = make_run(tmp_path / "run")
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info | {"finished": False, "eval_loss": None}))
    page = render_report(run)
    last = 2.4 * math.exp(-40 / 14) + 0.55
    assert f"<th>last logged eval loss</th><td>{last:.4f} (step 40)</td>" in page and "final eval loss" not in page


@pytest.mark.parametrize(
    "records, caption",
    [
        ([{"step": 1, "loss": 0.7}], "Loss: train (every logged step)"),  # a dpo run with no eval split
        ([{"step": 1, "loss": 0.7}, {"step": 1, "eval_loss": 0.6}], "Loss: train (every logged step) and eval"),
        ([{"step": 1, "eval_loss": 0.6}], "Loss: eval (held-out examples)"),
    ],
)
def test_the_loss_caption_names_only_the_curves_drawn(monkeypatch, records, caption):
    """A dpo run without an eval split had its loss chart captioned 'train ... and eval'."""
    import tunelab.eval.report_plots as plots

    captions = []
    monkeypatch.setattr(plots, "curve_plot", lambda series, ylabel, text, **k: captions.append(text) or "")
    plots.training_plots(records, ["dpo"])
    assert captions[0].startswith(caption) and (" and " in captions[0]) == (" and " in caption)


def test_the_run_summary_names_a_qlora_runs_nf4_base():
    """The report's Run table said `method lora` of a QLoRA run, as of a 16- or 32-bit base; run.json records the NF4
    base, and the method row says it now."""
    from tunelab.eval.report_inputs import Input
    from tunelab.eval.report_run import run_summary

    base = {"base_model": "tiny", "task": "sft", "method": "lora", "finished": True, "steps": 2}
    qlora = run_summary(Input("run.json", base | {"quantize_base": "nf4"}))
    assert "lora, base in NF4 (QLoRA)" in qlora, qlora
    assert "NF4" not in run_summary(Input("run.json", base | {"quantize_base": "none"}))


def test_the_lr_plot_draws_b_beside_a_for_a_loraplus_run(monkeypatch):
    """A LoRA+ run logs lr_B (the B matrices' rate) beside lr: both are drawn, on a log axis where B's curve is
    A's shifted up by the ratio; a run without it draws its one rate as before."""
    import tunelab.eval.report_plots as plots

    drawn = []
    monkeypatch.setattr(plots, "curve_plot", lambda series, ylabel, text, **k: drawn.append((series, text, k)) or "")
    records = [{"step": s, "lr": 1e-4 * s, "lr_B": 1.6e-3 * s} for s in (1, 2, 3)]
    plots.training_plots(records, ["sft"])
    series, caption, options = next(d for d in drawn if d[1].startswith("Learning rate"))
    assert [name for name, _, _ in series] == ["A and the rest (train.lr)", "B matrices (LoRA+)"]
    assert series[1][1] == [(r["step"], r["lr_B"]) for r in records] and options == {"log": True}
    assert "LoRA+" in caption
    drawn.clear()
    plots.training_plots([{k: v for k, v in r.items() if k != "lr_B"} for r in records], ["sft"])
    assert [len(d[0]) for d in drawn if d[1] == "Learning rate schedule"] == [1]


def test_the_lr_plot_draws_a_heads_own_rate_beside_train_lr(monkeypatch):
    """A head run with classify.head_lr logs lr_head beside lr: both are drawn on one chart (with LoRA+'s lr_B too
    when the run logs it)."""
    import tunelab.eval.report_plots as plots

    drawn = []
    monkeypatch.setattr(plots, "curve_plot", lambda series, ylabel, text, **k: drawn.append((series, text, k)) or "")
    records = [{"step": s, "lr": 1e-4 * s, "lr_head": 5e-3 * s} for s in (1, 2, 3)]
    plots.training_plots(records, ["classify"])
    series, caption, options = next(d for d in drawn if d[1].startswith("Learning rate"))
    assert [name for name, _, _ in series] == ["train.lr", "head"]
    assert series[1][1] == [(r["step"], r["lr_head"]) for r in records] and options == {"log": True}
    assert "classify.head_lr" in caption and "LoRA+" not in caption
    drawn.clear()
    plots.training_plots([r | {"lr_B": r["lr"] * 16} for r in records], ["classify"])
    series, caption, _ = next(d for d in drawn if d[1].startswith("Learning rate"))
    assert [name for name, _, _ in series] == ["A and the rest (train.lr)", "B matrices (LoRA+)", "head"]
    assert "LoRA+" in caption and "classify.head_lr" in caption
