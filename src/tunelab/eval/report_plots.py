"""The plots of `tunelab report`, each an inline SVG figure drawn by matplotlib: training curves, the preference
curves of a dpo run, the token-length histogram of the data and the base / tuned score bars.

Text is drawn as paths, so the page needs no fonts; matplotlib escapes what it writes into the SVG itself. Figures
come from `matplotlib.figure.Figure`, never pyplot: no global figure state, no GUI backend.
"""

from __future__ import annotations

import io

from tunelab.eval.report_html import esc
from tunelab.training.metrics import loss_axis, loss_curves, plot_text, rate_curves


def _svg(fig, label: str) -> str:
    """The figure as an inline <svg> element (the XML prolog and doctype dropped)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    svg = text[text.index("<svg") :]
    return svg.replace("<svg ", f'<svg role="img" aria-label="{esc(label)}" ', 1)


def _figure(width: float = 6.4, height: float = 3.4):
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.grid(alpha=0.3)
    return fig, ax


# How the loss plot draws a step it marks (loss_marks): (color, line style).
MARK_STYLES = {"early stop": ("#c62828", "--"), "best": ("#2e7d32", ":")}


def curve_plot(
    series: list[tuple[str, list[tuple[float, float]], str]],
    ylabel: str,
    caption: str,
    log: bool = False,
    marks: list[tuple[str, str, int]] = (),
) -> str:
    """`marks`: (kind of MARK_STYLES, legend label, step) drawn as vertical lines, each with its legend entry."""
    fig, ax = _figure()
    for name, points, style in series:
        xs, ys = zip(*points)
        ax.plot(xs, ys, style, label=plot_text(name), linewidth=1.4, markersize=4)
    for kind, label, step in marks:
        color, style = MARK_STYLES[kind]
        ax.axvline(step, color=color, linestyle=style, linewidth=1.2, label=plot_text(label))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    if len(series) > 1 or marks:
        ax.legend()
    return f"<figure>{_svg(fig, caption)}<figcaption>{esc(caption)}</figcaption></figure>"


def loss_marks(info: dict | None) -> list[tuple[str, str, int]]:
    """The steps the loss plot marks, as curve_plot takes them, from run.json (`info`): where early stopping ended
    the run (extra.early_stop of a run whose end says so), and the best evaluation's step: the one train.keep_best
    kept (extra.best), else the best one early stopping waited on. Empty where run.json records neither."""
    info = info if isinstance(info, dict) else {}
    extra = info.get("extra") if isinstance(info.get("extra"), dict) else {}
    end = info.get("end") if isinstance(info.get("end"), dict) else {}
    stop = extra.get("early_stop") if end.get("reason") == "early_stopped" else None
    stop = stop if isinstance(stop, dict) else {}
    best = extra.get("best") if isinstance(extra.get("best"), dict) else {}

    def step(value) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    marks = []
    if (stopped := step(stop.get("step"))) is not None:
        marks.append(("early stop", f"early stop (step {stopped})", stopped))
    if (kept := step(best.get("step"))) is not None:
        marks.append(("best", f"best eval, kept by keep_best (step {kept})", kept))
    elif (waited_on := step(stop.get("best_step"))) is not None:
        marks.append(("best", f"best eval (step {waited_on})", waited_on))
    return marks


def training_plots(records: list[dict], tasks: list[str | None] | None = None, info: dict | None = None) -> str:
    """The loss, learning-rate, throughput and gradient-norm curves; tasks: the run's task (a staged run's: each
    stage's), for the loss axis's unit; `info`: run.json, whose early stop and best step the loss plot marks."""

    def points(key: str) -> list[tuple[float, float]]:
        return [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float) and "step" in r]

    train, evals = loss_curves(records)
    rates, log = rate_curves(records)
    speed, grad = points("tokens_per_s"), points("grad_norm")
    figures = []
    if train or evals:
        series = ([("train loss", train, "-")] if train else []) + ([("eval loss", evals, "o-")] if evals else [])
        caption = " and ".join(
            (["train (every logged step)"] if train else []) + (["eval (held-out examples)"] if evals else [])
        )
        marks = loss_marks(info)
        if marks:
            caption += "; marked: " + ", ".join(label for _, label, _ in marks)
        figures.append(curve_plot(series, loss_axis(tasks or []), f"Loss: {caption}", marks=marks))
    if len(rates) > 1:
        said = (
            ["LoRA+ trains the adapters' B matrices at train.lr x train.loraplus_lr_ratio"] if "lr_B" in rates else []
        )
        said += ["the head trains at classify.head_lr"] if "lr_head" in rates else []
        figures.append(
            curve_plot(list(rates.values()), "learning rate", f"Learning rate schedule: {'; '.join(said)}", log=log)
        )
    elif rates:
        figures.append(curve_plot(list(rates.values()), "learning rate", "Learning rate schedule"))
    if speed:
        figures.append(
            curve_plot(
                [("tokens/s", speed, "-")], "tokens / s", "Training throughput (real tokens per second of each step)"
            )
        )
    if grad:
        figures.append(curve_plot([("grad norm", grad, "-")], "gradient norm (before clipping)", "Gradient norm"))
    return (
        f'<div class="plots">{"".join(figures)}</div>'
        if figures
        else '<p class="missing">metrics.jsonl holds no records to plot.</p>'
    )


def preference_plots(records: list[dict]) -> str:
    """Task dpo: the implicit reward margin and accuracy, and the policy's log p of chosen and rejected answers; with
    loss orpo, its NLL and log odds ratio too; with loss kto, its KL estimate z0 and the rewards by label."""

    def points(key: str) -> list[tuple[float, float]]:
        return [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float) and "step" in r]

    def series(keys: list[tuple[str, str]]) -> list:
        return [(name, points(key), "o-" if key.startswith("eval_") else "-") for key, name in keys if points(key)]

    figures = []
    for keys, ylabel, caption in (
        ([("margin", "train"), ("eval_margin", "eval")], "reward margin", "Reward margin: chosen - rejected"),
        (
            [("accuracy", "train"), ("eval_accuracy", "eval")],
            "share of pairs",
            "Reward accuracy: margin > 0 (kto: rows on their label's side of z0)",
        ),
        (
            [("chosen_logp", "chosen"), ("rejected_logp", "rejected")],
            "summed log p per answer",
            "Log-probability of chosen and rejected answers under the policy (train)",
        ),
        (  # dpo.loss orpo only: the two parts of its loss
            [("nll", "train"), ("eval_nll", "eval")],
            "nats a token",
            "ORPO: the chosen answer's NLL, the loss's SFT part",
        ),
        (
            [("log_odds", "train"), ("eval_log_odds", "eval")],
            "log odds chosen - rejected",
            "ORPO: the log odds ratio its odds-ratio term raises",
        ),
        (  # dpo.loss kto only
            [("kl", "train"), ("eval_kl", "eval")],
            "nats",
            "KTO: z0, the KL(policy || reference) estimate its rows are measured against",
        ),
        (
            [("desirable_reward", "desirable"), ("undesirable_reward", "undesirable")],
            "mean reward",
            "KTO: the mean rewards of desirable and undesirable rows (train), each over its label's rows of the step",
        ),
    ):
        if found := series(keys):
            figures.append(curve_plot(found, ylabel, caption))
    return (
        f'<div class="plots">{"".join(figures)}</div>'
        if figures
        else '<p class="missing">metrics.jsonl holds no preference metrics.</p>'
    )


def histogram_plot(lengths: dict, max_length: int | None, unit: str = "example") -> str:
    """The token lengths' histogram; `unit`: what one length is of (an example, a pair's side)."""
    edges, counts = lengths.get("bin_edges") or [], lengths.get("counts") or []
    if len(edges) != len(counts) + 1 or not counts:
        return '<p class="missing">No token-length histogram in data_report.json.</p>'
    fig, ax = _figure(6.4, 3.0)
    ax.bar(
        edges[:-1],
        counts,
        width=[b - a for a, b in zip(edges, edges[1:])],
        align="edge",
        color="#4c78a8",
        edgecolor="white",
    )
    if max_length:
        ax.axvline(max_length, color="#c62828", linestyle="--", label=f"max_length {max_length}")
        ax.legend()
    ax.set_xlabel(f"tokens per {unit} (rendered, before truncation)")
    ax.set_ylabel(f"{unit}s")
    caption = (
        "Token lengths of the pairs' sides (chosen and rejected)" if unit == "side" else "Token lengths of the examples"
    )
    return f'<div class="plots"><figure>{_svg(fig, caption)}<figcaption>{esc(caption)}</figcaption></figure></div>'


def scores_plot(rows: list[tuple[str, float | None, float | None]]) -> str:
    """Grouped bars, base beside tuned, for the [0, 1] scores."""
    rows = [r for r in rows if r[1] is not None and r[2] is not None]
    if not rows:
        return ""
    fig, ax = _figure(5.6, 3.4)
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r[1] for r in rows], width=0.4, label="base", color="#9aa5b4")
    ax.bar([x + 0.2 for x in xs], [r[2] for r in rows], width=0.4, label="tuned", color="#2457a6")
    ax.set_xticks(list(xs), [r[0] for r in rows], rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.legend()
    caption = "Answer scores, base vs tuned"
    return f'<div class="plots"><figure>{_svg(fig, caption)}<figcaption>{esc(caption)}</figcaption></figure></div>'
