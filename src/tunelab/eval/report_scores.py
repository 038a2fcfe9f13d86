"""The report's evaluation section of a text run: base against tuned, from eval.json (`tunelab eval`: loss,
perplexity, answer scores overall and per kind, label tasks with per-class scores and confusion matrices) and
compare.json (`tunelab compare`: the share of answers containing the expected text, refusals).
"""

from __future__ import annotations

from pathlib import Path

from tunelab.data.report import Unread
from tunelab.errors import counted
from tunelab.eval.metrics import UNDEFINED_RULE
from tunelab.eval.report_html import esc, fmt, metric_rows
from tunelab.eval.report_inputs import Input, eval_hint
from tunelab.eval.report_plots import scores_plot
from tunelab.infer.generate import samples

# What `tunelab compare` counts (eval.metrics.correct); compare.json does not say which kinds are label tasks.
COMPARE_LEGEND = (
    "correct: the answer contains the expected text (a label task: the label it names is the expected one); "
    "refused: it contains the refusal sentence."
)


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


def _rows(n) -> str:
    return counted(n, "row") if isinstance(n, int) else f"{'?' if n is None else n} rows"


def _label_tables(kind: str, b: dict, t: dict) -> str:
    labels = t.get("labels") or []
    sub_head = "".join(f'<th class="num">{name}</th>' for name in ("precision", "recall", "F1") * 2)
    body, undefined = "", False
    for label in labels:
        bc, tc = (b.get("per_class") or {}).get(label, {}), (t.get("per_class") or {}).get(label, {})
        cells = "".join(  # a score present but None is undefined (metrics.UNDEFINED_RULE)
            f'<td class="num">{"n/a" if k in c and c[k] is None else fmt(c.get(k), "f")}</td>'
            for c in (bc, tc)
            for k in ("precision", "recall", "f1")
        )
        undefined = undefined or "n/a" in cells
        body += f'<tr><th>{esc(label)}</th>{cells}<td class="num">{fmt(tc.get("support"), "int")}</td></tr>'
    per_class = (
        f'<h3>Label task “{esc(kind)}”: per class</h3><table class="per-class"><thead><tr><th rowspan="2">label</th>'
        f'<th colspan="3">base</th><th colspan="3">tuned</th><th rowspan="2" class="num">support</th></tr>'
        f"<tr>{sub_head}</tr></thead><tbody>{body}</tbody></table>"
        + (f'<p class="sub">{esc(UNDEFINED_RULE)}.</p>' if undefined else "")
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


def eval_section(ev: Input, cmp: Input, run_dir: Path | None = None) -> str:
    """base against tuned from eval.json and compare.json; where eval.json is missing, how to write it for `run_dir`."""
    parts = []
    if ev.data is None:
        parts.append(ev.missing(f"eval scores ({eval_hint(run_dir)})" if run_dir is not None else "eval scores"))
    else:
        d: dict = ev.data
        b, t = d.get("base") or {}, d.get("tuned") or {}
        refusal = f"Refusal sentence: “{esc(d['refusal'])}”" if d.get("refusal") else "No refusal sentence."
        parts.append(
            f'<p class="sub">{esc(_rows(d.get("rows_read")))} of {esc(d.get("data_file", "?"))}; '
            f"{esc(len(d.get('rows') or []))} answered with at most {esc((d.get('settings') or {}).get('max_new_tokens', '?'))} new tokens{esc(sampled_at(d))}; "
            f"loss on {esc(_rows(d.get('loss_rows')))} ({fmt(d.get('loss_tokens'), 'int')} answer tokens). {refusal}</p>"
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
        if b.get("cut_answers") or t.get("cut_answers"):  # ran to max_new_tokens: may stop before the expected text
            rows.append(("answers cut at max_new_tokens", b.get("cut_answers"), t.get("cut_answers"), "int", False))
        overall_b, overall_t = b.get("overall") or {}, t.get("overall") or {}
        plot = scores_plot(
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
        parts.append(f'<div class="side">{metric_rows(rows)}{plot}</div>')
        for kind, ts in (t.get("label_tasks") or {}).items():
            parts.append(_label_tables(kind, (b.get("label_tasks") or {}).get(kind) or {}, ts))
        for key, title in (
            ("loss_skipped", "Rows left out of the loss: "),
            ("transform_dropped", "Rows the run's data.transform dropped, as training drops them (not read): "),
        ):
            if d.get(key):
                parts.append(f"<p>{title}{_skipped_rows(d[key])}</p>")
        if (d.get("unread") or {}).get("rows"):  # the loss rows holding characters the tokenizer drops
            parts.append(f"<p>{esc(Unread.saved(d['unread']).line().strip())}.</p>")
    parts.append("<h3>tunelab compare</h3>")
    if cmp.data is None:
        parts.append(cmp.missing("compare scores"))
    else:
        scores = cmp.data.get("scores") or {}
        rows = []
        for kind, s in scores.items():
            label = f"[{kind}] (n={s.get('n')}) "
            if "tuned" in s:
                of = f" (of the {s['scored']} with an expected answer)" if "scored" in s else ""
                rows.append((label + f"correct{of}", s.get("base"), s.get("tuned"), "pct", True))
            if "tuned_refused" in s:
                rows.append((label + "refused", s.get("base_refused"), s.get("tuned_refused"), "pct", None))
        how = sampled_at(cmp.data)
        sampled = f" Answers{how.removeprefix(',')}." if how else ""
        parts.append(
            f'<p class="sub">{COMPARE_LEGEND}{esc(sampled)}</p>' + metric_rows(rows)
            if rows
            else '<p class="missing">compare.json holds no scores (no expected answers or refusal sentence).</p>'
        )
        if (cmp.data.get("unread") or {}).get("rows"):  # the questions holding characters the tokenizer drops
            parts.append(f"<p>{esc(Unread.saved(cmp.data['unread']).line().strip())}.</p>")
    return "".join(parts)


def sampled_at(d: dict) -> str:
    """', sampled at temperature T, top_p P, seed N' for eval.json's or compare.json's answers where they were
    sampled (a file written before the seed was recorded: 'seed not recorded'); '' for greedy ones, drawn from
    nothing."""
    settings = d.get("settings") or {}
    temperature, top_p = settings.get("temperature", 0.0), settings.get("top_p", 1.0)
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (temperature, top_p))
    if not numbers or not samples(temperature, top_p):
        return ""
    seed = d.get("seed")
    return f", sampled at temperature {temperature}, top_p {top_p}, " + (
        f"seed {seed}" if seed is not None else "seed not recorded"
    )


def _skipped_rows(skipped: dict) -> str:
    """eval.json's rows left out (reason -> count and locations), as one line of HTML."""
    return "; ".join(
        f"{esc(s.get('count'))} {esc(reason)} ({esc(', '.join(s.get('locations') or []))})"
        for reason, s in skipped.items()
    )
