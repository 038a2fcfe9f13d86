"""The HTML report as a page: self-contained and escaped, rendered by a real headless browser; missing or damaged
inputs are said and cost their section alone; where it is written and what it replaces."""

import json
import re

import pytest

import tunelab
from tunelab.errors import RunDirError
from tunelab.eval.report import build_report, render_report, word_diff

from .report_setup import ANSWERS, make_run


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


def test_metrics_lines_left_out_are_counted_on_the_page(tmp_path):
    """Lines of metrics.jsonl that are not JSON objects (torn by a crash, edited) were left out of the curves without
    a word, and a record whose step is no whole number was drawn as a category of the step axis: the page leaves both
    out, counts them and names their lines."""
    run = make_run(tmp_path / "run")
    before = len((run / "metrics.jsonl").read_text().splitlines())
    with (run / "metrics.jsonl").open("a") as f:
        f.write('garbage\n[1, 2]\n{"step": "four", "loss": 2.0}\n{"step": true, "loss": 1.0}\n{"step": 99, "loss"')
    page = build_report(run).read_text()
    assert "No training metrics" not in page
    lines = ", ".join(str(before + k) for k in (1, 2, 3, 4, 5))
    said = f"5 lines of metrics.jsonl left out, as they are not JSON objects with a whole-number step (lines {lines})"
    assert said in page, page


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
