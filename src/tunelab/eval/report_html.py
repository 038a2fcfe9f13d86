"""The HTML vocabulary of `tunelab report`: the page around the sections, its inline CSS, escaping, number formats
and the two table shapes the sections share (base / tuned / change, and key / value).

Every piece of user text passes through `esc` (html.escape, quotes included) before it reaches the page.
"""

from __future__ import annotations

import html
from pathlib import Path

_DIGITS = {"loss": 4, "ppl": 2, "rate": 1, "f": 3, "int": 0}  # decimals per number format ("pct" is separate)

CSS = """
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


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt(value, kind: str) -> str:
    if value is None:
        return "–"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "int":
        return f"{value:,}"
    return f"{value:,.{_DIGITS[kind]}f}"


def change(base, tuned, kind: str, higher_is_better: bool | None) -> str:
    if base is None or tuned is None:
        return '<td class="num">–</td>'
    delta = tuned - base
    text = f"{100 * delta:+.1f} pts" if kind == "pct" else f"{delta:+,.{_DIGITS[kind]}f}"
    css = ""
    if higher_is_better is not None and abs(delta) > 1e-12:
        css = "better" if (delta > 0) == higher_is_better else "worse"
    return f'<td class="num {css}">{esc(text)}</td>'


def metric_rows(rows: list[tuple[str, object, object, str, bool | None]]) -> str:
    """(name, base, tuned, format kind, higher is better or None) -> a base / tuned / change table."""
    body = "".join(
        f'<tr><th>{esc(name)}</th><td class="num">{fmt(b, kind)}</td><td class="num">{fmt(t, kind)}</td>{change(b, t, kind, hib)}</tr>'
        for name, b, t, kind, hib in rows
    )
    head = '<tr><th>metric</th><th class="num">base</th><th class="num">tuned</th><th class="num">change</th></tr>'
    return f'<table class="metrics"><thead>{head}</thead><tbody>{body}</tbody></table>'


def kv_table(pairs: list[tuple[str, object]]) -> str:
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in pairs if v is not None)
    return f'<table class="kv"><tbody>{body}</tbody></table>'


def report_mark(where: Path) -> str:
    """The tag in a report page's head naming the run it is of: the page `tunelab report` of that run may replace
    without --overwrite (eval/report.py), being its own output made again."""
    return f'<meta name="generator" content="tunelab report" data-run="{esc(str(where))}">'


def document(title: str, where: Path, when: str, sections: list[tuple[str, str, str]]) -> str:
    """The whole page: a title, where the run is and when the page was made, a link to each section, and the
    sections, each (id, heading, HTML content)."""
    nav = "".join(f'<a href="#{sid}">{esc(name)}</a>' for sid, name, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{esc(name)}</h2>{content}</section>' for sid, name, content in sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{report_mark(where)}<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main><h1>{esc(title)}</h1>"
        f'<p class="sub">{esc(where)} · generated {when}</p><nav>{nav}</nav>{body}</main></body></html>\n'
    )
