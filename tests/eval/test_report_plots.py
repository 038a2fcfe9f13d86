"""The report's plots: which curves each chart draws, what its axis and caption say, and the lines that mark an
early stop or a kept step."""

import json

import pytest

from tunelab.eval.report import render_report

from .report_setup import make_run


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
