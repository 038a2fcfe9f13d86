"""The report's sections from a hand-made run directory: the run summary (eval loss, kept step, verdict, rounds,
QLoRA), the data section, and the eval and compare scores of text, label, classify and grpo runs."""

import json
import math

from tunelab.data.report import DataReport
from tunelab.eval.report import render_report

from .report_setup import make_run


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


def test_a_stopped_run_shows_the_last_eval_loss_it_logged(tmp_path):
    """A run stopped by Ctrl-C (or still training) has no eval_loss in run.json: the summary showed no eval loss at
    all, though metrics.jsonl held the evaluations made before the stop. It shows the last one, with its step."""
    run = make_run(tmp_path / "run")
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info | {"finished": False, "eval_loss": None}))
    page = render_report(run)
    last = 2.4 * math.exp(-40 / 14) + 0.55
    assert f"<th>last logged eval loss</th><td>{last:.4f} (step 40)</td>" in page and "final eval loss" not in page


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


def test_the_run_summary_names_a_qlora_runs_nf4_base():
    """The report's Run table said `method lora` of a QLoRA run, as of a 16- or 32-bit base; run.json records the NF4
    base, and the method row says it now."""
    from tunelab.eval.report_inputs import Input
    from tunelab.eval.report_run import run_summary

    base = {"base_model": "tiny", "task": "sft", "method": "lora", "finished": True, "steps": 2}
    qlora = run_summary(Input("run.json", base | {"quantize_base": "nf4"}))
    assert "lora, base in NF4 (QLoRA)" in qlora, qlora
    assert "NF4" not in run_summary(Input("run.json", base | {"quantize_base": "none"}))


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


def test_the_data_section_names_the_split_seed_of_the_eval_split(tmp_path):
    """The terminal's data report says `eval (fraction, split seed 7)`; the report's data section said only
    `eval split: fraction`, not which seed drew the held-out examples."""
    run = make_run(tmp_path / "run")
    data = json.loads((run / "data_report.json").read_text())
    (run / "data_report.json").write_text(json.dumps(data | {"eval_source": "fraction", "split_seed": 7}))
    assert "eval split: fraction, split seed 7." in render_report(run)
    (run / "data_report.json").write_text(json.dumps(data | {"eval_source": "file", "split_seed": None}))
    assert "eval split: file." in render_report(run)


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


def test_the_data_section_shows_rows_holding_characters_the_tokenizer_drops(tmp_path):
    """data_report.json records the rows holding characters the tokenizer drops; the report's data section left
    them out. The location is the user's path, escaped."""
    run = make_run(tmp_path / "run")
    assert "tokenizer drops" not in render_report(run)
    data = json.loads((run / "data_report.json").read_text())
    unread = {"rows": 3, "chars": {"U+0004": 4, "U+0013": 1}, "first": "data/<b>&.jsonl:7", "held": 1}
    (run / "data_report.json").write_text(json.dumps(data | {"unread": unread | {"effect": "trained"}}))
    page = render_report(run)
    assert (
        "<h3>Characters the tokenizer drops</h3><p>3 rows hold characters the tokenizer drops, having no token for "
        "them (U+0004 x4, U+0013 x1): first at data/&lt;b&gt;&amp;.jsonl:7; they are trained on without them (the "
        "eval row among them is evaluated without them).</p>"
    ) in page
    (run / "data_report.json").write_text(json.dumps(data | {"unread": unread | {"held": 0, "effect": "sampled"}}))
    assert "first at data/&lt;b&gt;&amp;.jsonl:7; the model generates its answers from these prompts without them." in (
        render_report(run)
    )
    (run / "data_report.json").write_text(json.dumps(data | {"unread": {"rows": 0, "chars": {}, "first": ""}}))
    assert "tokenizer drops" not in render_report(run)
    written = DataReport(formats={"data/train.jsonl": "chat"})  # as training writes it (to_dict), a grpo run's
    written.unread.effect = "sampled"
    written.dropped_chars("data/train.jsonl:4", ["\x04", "\x04"])
    (run / "data_report.json").write_text(json.dumps(data | {"unread": written.to_dict()["unread"]}))
    assert f"<p>{written.unread.line().strip()}.</p>" in render_report(run)


def test_the_data_section_shows_the_data_reports_notes_and_lengths_not_tokenized(tmp_path):
    """The terminal's data report gives its notes (repeated rows, conflicting labels, markup read as text, ...) and
    says when token lengths are lower bounds of rows too long by size alone; the report's data section did neither."""
    run = make_run(tmp_path / "run")
    page = render_report(run)
    assert "<h3>Notes</h3>" not in page and "by size alone" not in page
    data = json.loads((run / "data_report.json").read_text())
    data["notes"] = ["2 examples appear twice <in> train & eval"]
    data["lengths"]["at_least"] = 2
    (run / "data_report.json").write_text(json.dumps(data))
    page = render_report(run)
    assert "<h3>Notes</h3><ul><li>2 examples appear twice &lt;in&gt; train &amp; eval</li></ul>" in page
    assert (
        '<p class="sub">2 examples over max_length by size alone, not tokenized whole: counted at the fewest tokens they '
        "can have.</p>"
    ) in page


def test_the_data_section_shows_where_rows_were_cut_what_the_transform_made_blocks_and_packed_rows(tmp_path):
    """data_report.json records the first rows cut to max_length, the rows data.transform made of records, the blocks
    cut from text documents and the rows a packed mixture trains on each epoch, which the terminal says; the report
    showed the per-file count of cut rows alone, and none of the rest. A report holding none of them says none."""
    run = make_run(tmp_path / "run")
    data = json.loads((run / "data_report.json").read_text())
    data["files"]["data/train.jsonl"]["truncated"] = 0
    (run / "data_report.json").write_text(json.dumps(data))
    page = render_report(run)
    for absent in ("Truncated rows", "data.transform", "blocks of", "packed row"):
        assert absent not in page
    written = DataReport(max_length=96)  # as training writes it (to_dict)
    for line in (3, 9, 12, 20, 31, 40):
        written.truncated("data/<b>&.jsonl", line)
    written.made_from, written.made_rows, written.text_blocks, written.packed_epoch_rows = 2, 7, 12, 30
    saved = written.to_dict()
    kept = {"files", "truncated_at", "total_truncated", "made_from", "made_rows", "text_blocks", "packed_epoch_rows"}
    mixture = {"sources": {"faq": {"weight": 1.0, "share": 1.0, "rows": 40}}, "mix_by": "examples"}
    (run / "data_report.json").write_text(json.dumps(data | {k: saved[k] for k in kept} | mixture))
    page = render_report(run)
    cut = ", ".join(f"data/&lt;b&gt;&amp;.jsonl:{line}" for line in (3, 9, 12, 20, 31))
    assert f"<h3>Truncated rows</h3><p>6 rows cut to max_length and kept: the first at {cut}.</p>" in page
    made = '<p class="sub">7 of the records read were made by data.transform of 2 records (a list of rows each).</p>'
    assert made in page
    assert "<p>Text: 12 blocks of 96 tokens cut from documents.</p>" in page
    assert "<p>Each epoch's draw is packed: epoch 0 trains on 30 packed rows.</p>" in page
    one = DataReport()
    one.truncated("data/train.jsonl", 4)
    (run / "data_report.json").write_text(json.dumps(data | {k: one.to_dict()[k] for k in ("files", "truncated_at")}))
    assert "<h3>Truncated rows</h3><p>1 row cut to max_length and kept: at data/train.jsonl:4.</p>" in render_report(
        run
    )
    (run / "data_report.json").write_text(json.dumps(data | {"files": one.to_dict()["files"], "pairs": True}))
    assert "<h3>Truncated rows</h3><p>1 pair cut to max_length and kept.</p>" in render_report(run)
