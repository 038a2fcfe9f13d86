"""`tunelab report`: one self-contained HTML page about a run, readable offline and mailable as a single file.

Everything is inline: the CSS, and the plots as SVG drawn by matplotlib (text drawn as paths, so no fonts are
needed). No script and no network access. Inputs, all read from the run directory and all optional:

    run.json          what was trained (header)            metrics.jsonl   loss, eval loss, lr, tokens/s curves
    eval.json         `tunelab eval` scores and answers    compare.json    `tunelab compare` scores and answers
    config.yaml       the resolved config                  data_report.json  counts, skipped rows, token lengths

A section whose input is missing or unreadable says so. Every piece of user text (questions, answers, paths, config
values) passes through html.escape; matplotlib escapes what it writes into the SVG itself.
"""

from __future__ import annotations

import difflib
import html
import io
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tunelab.atomic import write_text
from tunelab.errors import RunDirError
from tunelab.eval.heads import head_eval_html
from tunelab.eval.reward_curves import reward_section
from tunelab.federated.history import federated_section
from tunelab.rundir import HEAD_TASKS, RUN_FILE, read_info

REPORT_FILE = "report.html"
MAX_ANSWER_ROWS = 500  # answers shown; the rest are counted
_NO_LABEL = "(no label)"
_DIGITS = {"loss": 4, "ppl": 2, "rate": 1, "f": 3, "int": 0}  # decimals per number format ("pct" is separate)

_CSS = """
:root { --fg:#1d2430; --muted:#5d6776; --line:#d9dee6; --bg:#ffffff; --soft:#f4f6f9; --good:#1a7f37; --bad:#c62828;
        --ins:#dcf5e3; --del:#fde2e1; --accent:#2457a6; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: var(--fg);
       background: var(--bg); margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 12px; padding-bottom: 6px; border-bottom: 2px solid var(--line); }
h3 { font-size: 16px; margin: 20px 0 8px; }
.sub { color: var(--muted); margin: 0 0 16px; }
nav { display: flex; flex-wrap: wrap; gap: 6px 18px; padding: 10px 0; border-bottom: 1px solid var(--line); }
nav a { color: var(--accent); text-decoration: none; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
th, td { border: 1px solid var(--line); padding: 5px 9px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fafbfc; }
.better { color: var(--good); font-weight: 600; }
.worse { color: var(--bad); font-weight: 600; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 14px; }
figure { margin: 0; padding: 8px; border: 1px solid var(--line); border-radius: 6px; background: #fff; }
figure svg { width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
.missing { color: var(--muted); font-style: italic; background: var(--soft); padding: 10px 14px; border-radius: 6px; }
pre { background: var(--soft); padding: 12px 14px; border-radius: 6px; overflow-x: auto; font-size: 13px; }
table.answers { width: 100%; table-layout: fixed; }
table.answers td { white-space: pre-wrap; overflow-wrap: anywhere; }
table.answers col.q { width: 30%; } table.answers col.a { width: 35%; }
.expected { display: block; color: var(--muted); margin-top: 4px; }
.loc { display: block; color: var(--muted); font-size: 12px; margin-top: 4px; }
.mark { font-weight: 700; margin-right: 4px; }
.ok { color: var(--good); } .ko { color: var(--bad); }
.tag { display: inline-block; font-size: 11px; padding: 0 6px; border-radius: 8px; background: var(--soft);
       border: 1px solid var(--line); color: var(--muted); margin-left: 4px; }
ins { background: var(--ins); text-decoration: none; }
del { background: var(--del); text-decoration: line-through; text-decoration-color: rgba(198, 40, 40, 0.45); }
.side { display: flex; flex-wrap: wrap; gap: 20px; align-items: flex-start; }
.side .plots { flex: 1 1 440px; display: block; }
.empty { color: var(--muted); font-style: italic; }
"""


@dataclass
class _Input:
    """One input file of the report: its parsed content, or why there is none."""

    name: str
    data: object = None
    problem: str | None = None  # set when the file is missing or unreadable

    def missing(self, what: str) -> str:
        return f'<p class="missing">No {esc(what)}: {esc(self.problem or "")}</p>'


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def _load(run_dir: Path, name: str) -> _Input:
    path = run_dir / name
    if not path.is_file():
        return _Input(name, problem=f"{name} is not in the run directory")
    try:
        text = path.read_text(encoding="utf-8")
        if name.endswith(".jsonl"):
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        elif name.endswith(".json"):
            data = json.loads(text)
        else:
            data = text
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return _Input(name, problem=f"{name} could not be read ({exc})")
    return _Input(name, data)


# ---------------------------------------------------------------- plots


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


def _curve_plot(
    series: list[tuple[str, list[tuple[float, float]], str]], ylabel: str, caption: str, log: bool = False
) -> str:
    fig, ax = _figure()
    for name, points, style in series:
        xs, ys = zip(*points)
        ax.plot(xs, ys, style, label=name, linewidth=1.4, markersize=4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    if len(series) > 1:
        ax.legend()
    return f"<figure>{_svg(fig, caption)}<figcaption>{esc(caption)}</figcaption></figure>"


def _training_plots(records: list[dict]) -> str:
    def points(key: str) -> list[tuple[float, float]]:
        return [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float) and "step" in r]

    train, evals, lr, speed, grad = (
        points("loss"),
        points("eval_loss"),
        points("lr"),
        points("tokens_per_s"),
        points("grad_norm"),
    )
    figures = []
    if train or evals:
        series = ([("train loss", train, "-")] if train else []) + ([("eval loss", evals, "o-")] if evals else [])
        figures.append(_curve_plot(series, "loss (nats / token)", "Loss: train (every logged step) and eval"))
    if lr:
        figures.append(_curve_plot([("learning rate", lr, "-")], "learning rate", "Learning rate schedule"))
    if speed:
        figures.append(
            _curve_plot(
                [("tokens/s", speed, "-")], "tokens / s", "Training throughput (real tokens per second of each step)"
            )
        )
    if grad:
        figures.append(_curve_plot([("grad norm", grad, "-")], "gradient norm (before clipping)", "Gradient norm"))
    return (
        f'<div class="plots">{"".join(figures)}</div>'
        if figures
        else '<p class="missing">metrics.jsonl holds no records to plot.</p>'
    )


def _preference_plots(records: list[dict]) -> str:
    """Task dpo: the implicit reward margin and accuracy, and the policy's log p of chosen and rejected answers."""

    def points(key: str) -> list[tuple[float, float]]:
        return [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float) and "step" in r]

    def series(keys: list[tuple[str, str]]) -> list:
        return [(name, points(key), "o-" if key.startswith("eval_") else "-") for key, name in keys if points(key)]

    figures = []
    for keys, ylabel, caption in (
        ([("margin", "train"), ("eval_margin", "eval")], "reward margin", "Reward margin: chosen - rejected"),
        ([("accuracy", "train"), ("eval_accuracy", "eval")], "share of pairs", "Reward accuracy: margin > 0"),
        (
            [("chosen_logp", "chosen"), ("rejected_logp", "rejected")],
            "summed log p per answer",
            "Log-probability of chosen and rejected answers under the policy (train)",
        ),
    ):
        if found := series(keys):
            figures.append(_curve_plot(found, ylabel, caption))
    return (
        f'<div class="plots">{"".join(figures)}</div>'
        if figures
        else '<p class="missing">metrics.jsonl holds no preference metrics.</p>'
    )


def _histogram_plot(lengths: dict, max_length: int | None) -> str:
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
    ax.set_xlabel("tokens per example (rendered, before truncation)")
    ax.set_ylabel("examples")
    caption = "Token lengths of the examples"
    return f'<div class="plots"><figure>{_svg(fig, caption)}<figcaption>{esc(caption)}</figcaption></figure></div>'


def _scores_plot(rows: list[tuple[str, float | None, float | None]]) -> str:
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


# ---------------------------------------------------------------- tables


def _fmt(value, kind: str) -> str:
    if value is None:
        return "–"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "int":
        return f"{value:,}"
    return f"{value:,.{_DIGITS[kind]}f}"


def _change(base, tuned, kind: str, higher_is_better: bool | None) -> str:
    if base is None or tuned is None:
        return '<td class="num">–</td>'
    delta = tuned - base
    text = f"{100 * delta:+.1f} pts" if kind == "pct" else f"{delta:+,.{_DIGITS[kind]}f}"
    css = ""
    if higher_is_better is not None and abs(delta) > 1e-12:
        css = "better" if (delta > 0) == higher_is_better else "worse"
    return f'<td class="num {css}">{esc(text)}</td>'


def _metric_rows(rows: list[tuple[str, object, object, str, bool | None]]) -> str:
    """(name, base, tuned, format kind, higher is better or None) -> a base / tuned / change table."""
    body = "".join(
        f'<tr><th>{esc(name)}</th><td class="num">{_fmt(b, kind)}</td><td class="num">{_fmt(t, kind)}</td>{_change(b, t, kind, hib)}</tr>'
        for name, b, t, kind, hib in rows
    )
    head = '<tr><th>metric</th><th class="num">base</th><th class="num">tuned</th><th class="num">change</th></tr>'
    return f'<table class="metrics"><thead>{head}</thead><tbody>{body}</tbody></table>'


def _text_score_rows(prefix: str, b: dict | None, t: dict | None) -> list:
    if not b or not t:
        return []
    rows = [(f"{prefix}exact match", b.get("exact_match"), t.get("exact_match"), "pct", True)]
    if t.get("exact_match") is None:  # not scored: the expected texts are strings to find, not whole answers
        rows = []
    rows += [
        (f"{prefix}contains expected", b.get("contains"), t.get("contains"), "pct", True),
        (f"{prefix}ROUGE-L F1", b.get("rouge_l"), t.get("rouge_l"), "f", True),
    ]
    if t.get("refusal_rate") is not None:
        rows.append((f"{prefix}refusal rate", b.get("refusal_rate"), t.get("refusal_rate"), "pct", None))
    return rows


def _label_tables(kind: str, b: dict, t: dict) -> str:
    labels = t.get("labels") or []
    sub_head = "".join(f'<th class="num">{name}</th>' for name in ("precision", "recall", "F1") * 2)
    body = ""
    for label in labels:
        bc, tc = (b.get("per_class") or {}).get(label, {}), (t.get("per_class") or {}).get(label, {})
        cells = "".join(
            f'<td class="num">{_fmt(c.get(k), "f")}</td>' for c in (bc, tc) for k in ("precision", "recall", "f1")
        )
        body += f'<tr><th>{esc(label)}</th>{cells}<td class="num">{_fmt(tc.get("support"), "int")}</td></tr>'
    per_class = (
        f'<h3>Label task “{esc(kind)}”: per class</h3><table class="per-class"><thead><tr><th rowspan="2">label</th>'
        f'<th colspan="3">base</th><th colspan="3">tuned</th><th rowspan="2" class="num">support</th></tr>'
        f"<tr>{sub_head}</tr></thead><tbody>{body}</tbody></table>"
    )
    confusion = ""
    for name, scores in (("base", b), ("tuned", t)):
        matrix = scores.get("confusion") or {}
        columns = labels + sorted({p for row in matrix.values() for p in row} - set(labels))
        head_row = "".join(f'<th class="num">{esc(c)}</th>' for c in columns)
        rows = "".join(
            f"<tr><th>{esc(want)}</th>"
            + "".join(f'<td class="num">{matrix.get(want, {}).get(c, 0)}</td>' for c in columns)
            + "</tr>"
            for want in labels + [w for w in matrix if w not in labels]
        )
        confusion += (
            f'<div><h3>Confusion, {name} (rows: expected, columns: predicted)</h3><table class="confusion">'
            f"<thead><tr><th></th>{head_row}</tr></thead><tbody>{rows}</tbody></table></div>"
        )
    return per_class + f'<div style="display:flex;gap:28px;flex-wrap:wrap">{confusion}</div>'


def _eval_section(ev: _Input, cmp: _Input) -> str:
    parts = []
    if ev.data is None:
        parts.append(ev.missing("eval scores (run 'tunelab eval RUN_DIR --data FILE')"))
    else:
        d: dict = ev.data
        b, t = d.get("base") or {}, d.get("tuned") or {}
        refusal = f"Refusal sentence: “{esc(d['refusal'])}”" if d.get("refusal") else "No refusal sentence."
        parts.append(
            f'<p class="sub">{esc(d.get("rows_read", "?"))} rows of {esc(d.get("data_file", "?"))}; '
            f"{esc(len(d.get('rows') or []))} answered with at most {esc((d.get('settings') or {}).get('max_new_tokens', '?'))} new tokens; "
            f"loss on {esc(d.get('loss_rows', '?'))} rows ({_fmt(d.get('loss_tokens'), 'int')} answer tokens). {refusal}</p>"
        )
        if "expected texts" in (d.get("loss_on") or ""):
            parts.append(
                '<p class="sub">The loss is taken on the file\'s <code>expected</code> texts as whole answers: on key '
                "strings a correct answer contains, it is far above the training eval loss without the model being "
                "worse. Compare base and tuned with it, not training. Exact match is not scored for such rows.</p>"
            )
        rows = [
            (
                f"loss on {d.get('loss_on') or 'answers'} (nats / token)",
                b.get("eval_loss"),
                t.get("eval_loss"),
                "loss",
                False,
            ),
            ("perplexity", b.get("perplexity"), t.get("perplexity"), "ppl", False),
        ]
        rows += _text_score_rows("", b.get("overall"), t.get("overall"))
        kinds, label_tasks = t.get("by_kind") or {}, t.get("label_tasks") or {}
        for kind, ts in kinds.items():
            if kind in label_tasks:  # a label task reads as accuracy and F1; its text scores say the same less well
                bs = (b.get("label_tasks") or {}).get(kind) or {}
                rows += [
                    (f"[{kind}] accuracy", bs.get("accuracy"), label_tasks[kind].get("accuracy"), "pct", True),
                    (f"[{kind}] macro F1", bs.get("macro_f1"), label_tasks[kind].get("macro_f1"), "f", True),
                ]
            elif len(kinds) > 1:
                rows += _text_score_rows(f"[{kind}] ", (b.get("by_kind") or {}).get(kind), ts)
        rows += [
            ("generated tokens / s", b.get("tokens_per_s"), t.get("tokens_per_s"), "rate", True),
            ("generated tokens", b.get("generated_tokens"), t.get("generated_tokens"), "int", None),
        ]
        overall_b, overall_t = b.get("overall") or {}, t.get("overall") or {}
        plot = _scores_plot(
            [
                (name, overall_b.get(key), overall_t.get(key))
                for name, key in (
                    ("exact match", "exact_match"),
                    ("contains", "contains"),
                    ("ROUGE-L F1", "rouge_l"),
                    ("refusal rate", "refusal_rate"),
                )
            ]
        )
        parts.append(f'<div class="side">{_metric_rows(rows)}{plot}</div>')
        for kind, ts in (t.get("label_tasks") or {}).items():
            parts.append(_label_tables(kind, (b.get("label_tasks") or {}).get(kind) or {}, ts))
        if d.get("loss_skipped"):
            parts.append(
                "<p>Rows left out of the loss: "
                + "; ".join(
                    f"{esc(s.get('count'))} {esc(reason)} ({esc(', '.join(s.get('locations') or []))})"
                    for reason, s in d["loss_skipped"].items()
                )
                + "</p>"
            )
    parts.append("<h3>tunelab compare</h3>")
    if cmp.data is None:
        parts.append(cmp.missing("compare scores"))
    else:
        scores = cmp.data.get("scores") or {}
        rows = []
        for kind, s in scores.items():
            label = f"[{kind}] (n={s.get('n')}) "
            if "tuned" in s:
                rows.append((label + "correct (contains expected)", s.get("base"), s.get("tuned"), "pct", True))
            if "tuned_refused" in s:
                rows.append((label + "refused", s.get("base_refused"), s.get("tuned_refused"), "pct", None))
        parts.append(
            _metric_rows(rows)
            if rows
            else '<p class="missing">compare.json holds no scores (no expected answers or refusal sentence).</p>'
        )
    return "".join(parts)


# ---------------------------------------------------------------- answers


def word_diff(before: str, after: str) -> tuple[str, str]:
    """Escaped HTML of `before` with the words `after` drops in <del>, and of `after` with the words it adds in <ins>."""
    a, b = re.findall(r"\S+\s*|\s+", before), re.findall(r"\S+\s*|\s+", after)
    old, new = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        left, right = esc("".join(a[i1:i2])), esc("".join(b[j1:j2]))
        if op == "equal":
            old.append(left)
            new.append(right)
            continue
        if left:
            old.append(f"<del>{left}</del>")
        if right:
            new.append(f"<ins>{right}</ins>")
    return "".join(old), "".join(new)


def _mark(ok: bool | None, detail: str) -> str:
    if ok is None:
        return ""
    symbol, css = ("✓", "ok") if ok else ("✗", "ko")
    return f'<span class="mark {css}" title="{esc(detail)}">{symbol}</span>'


def _answer_cell(text_html: str, empty: bool, ok: bool | None, detail: str, tags: list[str]) -> str:
    body = '<span class="empty">(empty answer)</span>' if empty else text_html
    return f"<td>{_mark(ok, detail)}{body}{''.join(f'<span class=tag>{esc(t)}</span>' for t in tags)}</td>"


def _verdict(row: dict, answer: dict) -> tuple[bool | None, str, list[str]]:
    """(right?, the detail shown on hover, tags) of one answer of an eval.json row."""
    tags = ["refused"] if answer.get("refused") else []
    if row.get("task") == "label":
        got = answer.get("label") or _NO_LABEL
        return got == row.get("expected"), f"predicted label: {got}", tags + [f"label: {got}"]
    yes = {True: "yes", False: "no"}
    detail = f"contains expected: {yes[bool(answer.get('contains'))]}"
    if answer.get("exact") is not None:
        detail += f"; exact match: {yes[bool(answer['exact'])]}"
    if isinstance(answer.get("rouge_l"), int | float):
        detail += f"; ROUGE-L F1: {answer['rouge_l']:.3f}"
    return answer.get("contains"), detail, tags


def _answer_rows(ev: _Input, cmp: _Input) -> str:
    """Answers from eval.json (or compare.json when there is no eval), base beside tuned, word differences marked."""
    rows, source = [], None
    if ev.data is not None and ev.data.get("rows"):
        source = "eval.json"
        for r in ev.data["rows"]:
            b, t = r.get("base") or {}, r.get("tuned") or {}

            rows.append(
                (
                    r.get("question", ""),
                    r.get("expected"),
                    r.get("kind", ""),
                    r.get("location", ""),
                    b.get("text", ""),
                    t.get("text", ""),
                    _verdict(r, b),
                    _verdict(r, t),
                )
            )
    elif cmp.data is not None and cmp.data.get("rows"):
        source = "compare.json"
        for r in cmp.data["rows"]:
            rows.append(
                (
                    r.get("question", ""),
                    r.get("expected"),
                    r.get("kind", ""),
                    "",
                    r.get("base", ""),
                    r.get("tuned", ""),
                    (r.get("base_ok"), "contains expected", []),
                    (r.get("tuned_ok"), "contains expected", []),
                )
            )
    if not rows:
        problems = "; ".join(p for p in (ev.problem, cmp.problem) if p) or "eval.json and compare.json hold no answers"
        return f"<p class=\"missing\">No answers to show: {esc(problems)}. Run 'tunelab eval' or 'tunelab compare'.</p>"
    shown = rows[:MAX_ANSWER_ROWS]
    body = []
    for i, (question, expected, kind, where, base, tuned, bv, tv) in enumerate(shown, 1):
        base_html, tuned_html = word_diff(base or "", tuned or "")
        meta = f'<span class="expected">expected: {esc(expected)}</span>' if expected is not None else ""
        loc = f'<span class="loc">#{i} · {esc(kind)}{" · " + esc(where) if where else ""}</span>'
        same = ["same as base"] if base == tuned else []
        body.append(
            f'<tr class="answer-row"><td>{esc(question)}{meta}{loc}</td>'
            f"{_answer_cell(base_html, not base, bv[0], bv[1], bv[2])}{_answer_cell(tuned_html, not tuned, tv[0], tv[1], tv[2] + same)}</tr>"
        )
    more = f"<p>{len(rows) - len(shown)} more rows are in {source}.</p>" if len(rows) > len(shown) else ""
    legend = (
        f'<p class="sub">From {source}. ✓/✗: the answer contains the expected text (label tasks: the predicted label is '
        "the expected one); hover a mark for details. <del>struck</del> words of the base answer are gone from the "
        "tuned one, <ins>highlighted</ins> words are new in it.</p>"
    )
    return (
        legend + '<table class="answers"><colgroup><col class="q"><col class="a"><col class="a"></colgroup><thead><tr>'
        f"<th>question</th><th>base</th><th>tuned</th></tr></thead><tbody>{''.join(body)}</tbody></table>{more}"
    )


# ---------------------------------------------------------------- run, config, data


def _kv_table(pairs: list[tuple[str, object]]) -> str:
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in pairs if v is not None)
    return f'<table class="kv"><tbody>{body}</tbody></table>'


def _run_summary(run: _Input) -> str:
    if run.data is None:
        return run.missing("run summary")
    d: dict = run.data

    def loss(value) -> str | None:
        return f"{value:.4f}" if isinstance(value, int | float) else None

    return _kv_table(
        [
            ("base model", d.get("base_model")),
            ("task", d.get("task")),
            ("method", d.get("method")),
            ("implementation", d.get("impl")),
            ("template", d.get("template")),
            ("system prompt", d.get("system_prompt")),
            ("refusal sentence", d.get("refusal")),
            ("finished", "yes" if d.get("finished") else "no (the run stopped early or is still training)"),
            ("optimizer steps", f"{d.get('steps', '?')} of {d.get('total_steps', '?')}"),
            ("final train loss", loss(d.get("final_loss"))),
            ("final eval loss", loss(d.get("eval_loss"))),
            ("tokens trained on", f"{d['tokens']:,}" if isinstance(d.get("tokens"), int) else None),
            ("training time", f"{d['elapsed_s']:.0f} s" if isinstance(d.get("elapsed_s"), int | float) else None),
        ]
    )


def _stages_section(run: _Input) -> str | None:
    """A staged run (training/stages.py): its stages, and the forgetting matrix, the eval loss after each stage (rows)
    on each stage's eval data (columns); None for a run of one stage."""
    extra = (run.data or {}).get("extra") or {}
    forgetting = extra.get("forgetting")
    if not isinstance(forgetting, dict) or not isinstance(extra.get("stages"), list):
        return None
    rows = "".join(
        f"<tr><td>{esc(s.get('name'))}</td><td>{esc(s.get('dir'))}</td><td>{esc(s.get('continue') or 'start')}</td>"
        f'<td>{esc(s.get("method"))}</td><td class="num">{_fmt(s.get("steps"), "int")}</td></tr>'
        for s in extra["stages"]
        if isinstance(s, dict)
    )
    names = [str(n) for n in forgetting.get("stages") or []]
    matrix = forgetting.get("matrix") or []
    head = "".join(f'<th class="num">on {esc(n)}</th>' for n in names)
    body = "".join(
        f"<tr><th>after {esc(names[k] if k < len(names) else k + 1)}</th>"
        + "".join(f'<td class="num">{_fmt(v, "loss")}</td>' for v in row)
        + "<td></td>" * (len(names) - len(row))
        + "</tr>"
        for k, row in enumerate(matrix)
    )
    return (
        '<table class="stages"><thead><tr><th>stage</th><th>folder</th><th>started from</th><th>method</th>'
        f'<th class="num">steps</th></tr></thead><tbody>{rows}</tbody></table>'
        "<h3>Forgetting: eval loss after each stage on each stage's eval data</h3>"
        '<p class="sub">A row is the model after that stage; a column is a stage\'s eval data. A loss that rises down a '
        "column is forgetting. The Data section below is the last stage's; each stage-K folder holds its own.</p>"
        f'<table class="forgetting"><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>'
    )


def _sources_table(d: dict) -> str:
    """A mixture's sources (data/mixture.py): what each holds and what an epoch draws from it."""
    sources = d.get("sources") or {}
    if not sources:
        return ""
    keys = ("examples", "rows", "tokens", "drawn_rows", "drawn_tokens", "eval_rows")
    body = "".join(
        f'<tr><td>{esc(name)}</td><td class="num">{esc(s.get("weight") if s.get("weight") is not None else "-")}</td>'
        f'<td class="num">{100 * (s.get("share") or 0):.1f}%</td>'
        + "".join(f'<td class="num">{_fmt(s.get(k), "int")}</td>' for k in keys)
        + "</tr>"
        for name, s in sources.items()
    )
    return (
        f"<h3>Sources (weights count {esc(d.get('mix_by') or 'examples')})</h3>"
        '<table class="sources"><thead><tr><th>source</th><th class="num">weight</th><th class="num">share</th>'
        '<th class="num">examples</th><th class="num">rows</th><th class="num">tokens</th>'
        '<th class="num">rows / epoch</th><th class="num">tokens / epoch</th><th class="num">eval rows</th></tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


def _data_section(report: _Input) -> str:
    if report.data is None:
        return report.missing("data report")
    d: dict = report.data
    files = "".join(
        f"<tr><td>{esc(path)}</td><td>{esc((d.get('formats') or {}).get(path, '?'))}</td>"
        + "".join(f'<td class="num">{_fmt(c.get(k), "int")}</td>' for k in ("read", "used", "skipped", "truncated"))
        + "</tr>"
        for path, c in (d.get("files") or {}).items()
    )
    parts = [
        f'<p class="sub">template {esc(d.get("template") or "?")}, max_length {esc(d.get("max_length"))}, '
        f"packing {'on' if d.get('packed') else 'off'}, eval split: {esc(d.get('eval_source', 'none'))}.</p>",
        '<table class="files"><thead><tr><th>file</th><th>format</th><th class="num">read</th><th class="num">used</th>'
        f'<th class="num">skipped</th><th class="num">truncated</th></tr></thead><tbody>{files}</tbody></table>',
    ]
    splits = "".join(
        f"<tr><th>{name}</th>"
        + "".join(
            f'<td class="num">{_fmt((d.get(name) or {}).get(k), "int")}</td>'
            for k in ("examples", "used", "rows", "tokens", "loss_tokens")
        )
        + "</tr>"
        for name in ("train", "eval")
    )
    parts.append(
        '<table class="splits"><thead><tr><th>split</th><th class="num">examples</th><th class="num">used</th>'
        '<th class="num">rows</th><th class="num">tokens</th><th class="num">tokens with loss</th></tr></thead>'
        f"<tbody>{splits}</tbody></table>"
    )
    parts.append(_sources_table(d))
    skips = d.get("skips") or {}
    if skips:
        items = "".join(
            f'<tr><td>{esc(reason)}</td><td class="num">{_fmt(s.get("count"), "int")}</td><td>{esc(", ".join(s.get("locations") or []))}'
            f"{' …' if (s.get('count') or 0) > len(s.get('locations') or []) else ''}</td></tr>"
            for reason, s in skips.items()
        )
        parts.append(
            '<h3>Skipped rows</h3><table class="skips"><thead><tr><th>reason</th><th class="num">rows</th>'
            f"<th>first locations</th></tr></thead><tbody>{items}</tbody></table>"
        )
    else:
        parts.append("<p>No rows were skipped.</p>")
    lengths = d.get("lengths") or {}
    if lengths.get("count"):
        parts.append(
            "<h3>Token lengths</h3>"
            + _kv_table(
                [
                    (k, lengths.get(k) if k != "mean" else f"{lengths['mean']:.1f}")
                    for k in ("count", "min", "median", "mean", "p95", "max")
                ]
            )
        )
        parts.append(_histogram_plot(lengths, d.get("max_length")))
    return "".join(parts)


# ---------------------------------------------------------------- page


def render_report(run_dir: str | Path) -> str:
    """The report of `run_dir` as one HTML string."""
    run_dir = Path(run_dir)
    run, metrics, ev, cmp = (_load(run_dir, n) for n in (RUN_FILE, "metrics.jsonl", "eval.json", "compare.json"))
    config, data = _load(run_dir, "config.yaml"), _load(run_dir, "data_report.json")
    if isinstance(run.data, dict) and run.data.get("task") in HEAD_TASKS:  # a classifier or reward model
        evaluation = [("evaluation", "Evaluation", head_eval_html(ev.data, ev.problem))]
    else:
        evaluation = [
            ("evaluation", "Evaluation: base vs tuned", _eval_section(ev, cmp)),
            ("answers", "Answers side by side", _answer_rows(ev, cmp)),
        ]
    sections = [
        ("run", "Run", _run_summary(run)),
        (
            "training",
            "Training curves",
            _training_plots(metrics.data) if metrics.data is not None else metrics.missing("training metrics"),
        ),
        *(
            [("preference", "Preference training", _preference_plots(metrics.data))]
            if isinstance(run.data, dict) and run.data.get("task") == "dpo" and metrics.data is not None
            else []
        ),
        *(
            [("rewards", "Rewards (grpo)", reward_section(metrics.data, _curve_plot))]
            if isinstance(run.data, dict) and run.data.get("task") == "grpo" and metrics.data is not None
            else []
        ),
        *evaluation,
        ("data", "Data", _data_section(data)),
        (
            "config",
            "Resolved config",
            f"<pre>{esc(config.data)}</pre>" if config.data is not None else config.missing("config"),
        ),
    ]
    stages = _stages_section(run)
    if stages is not None:
        sections.insert(1, ("stages", "Stages", stages))
    federation = federated_section(run_dir)
    if federation is not None:
        sections.insert(2, ("federated", "Federated rounds", federation))
    title = f"tunelab report — {run_dir.resolve().name}"
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{sid}">{esc(name)}</a>' for sid, name, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{esc(name)}</h2>{content}</section>' for sid, name, content in sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body><main><h1>{esc(title)}</h1>"
        f'<p class="sub">{esc(run_dir.resolve())} · generated {when}</p><nav>{nav}</nav>{body}</main></body></html>\n'
    )


def build_report(run_dir: str | Path, out: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write the report of `run_dir` to `out` (default RUN_DIR/report.html) and return its path."""
    run_dir = Path(run_dir)
    read_info(run_dir, require_finished=False)  # a run directory, even an unfinished one: its curves are worth seeing
    path = Path(out) if out is not None else run_dir / REPORT_FILE
    if path.exists() and not overwrite:
        raise RunDirError(f"{path} exists. Pass --overwrite to replace it, or --out to write elsewhere.")
    page = render_report(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(path, page)
