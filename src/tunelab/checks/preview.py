"""The first rendered examples with their loss tokens marked: coloured on a terminal, [[bracketed]] otherwise, and as
the HTML page `tunelab check` writes.

Consecutive tokens with and without a label are decoded as groups (special tokens shown as they are), so what is
marked is exactly what the model is trained to produce.
"""

from __future__ import annotations

import html

from tunelab.data.checks import CheckResult
from tunelab.data.render import IGNORE
from tunelab.data.report import location

LOSS_ON, LOSS_OFF = "\033[1;32m", "\033[0m"  # bold green on a terminal
HTML_MARK = '<meta name="generator" content="tunelab check">'  # lets a later check replace its own page


def segments(ids: list[int], labels: list[int], tokenizer) -> list[tuple[str, bool]]:
    """[(text, has loss)] of consecutive tokens with the same loss status."""
    out, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or (labels[i] != IGNORE) != (labels[start] != IGNORE):
            out.append((tokenizer.decode(ids[start:i], skip_special_tokens=False), labels[start] != IGNORE))
            start = i
    return out


def preview_text(rows: list, tokenizer, color: bool) -> str:
    legend = "loss tokens in green" if color else "loss tokens in [[double brackets]]"
    lines = [f"preview of the first {len(rows)} training examples as rendered ({legend}):"]
    for k, row in enumerate(rows, 1):
        lines.append(f"--- example {k} ({location(row.path, row.line)}, {len(row.input_ids)} tokens) ---")
        text = "".join(
            (f"{LOSS_ON}{t}{LOSS_OFF}" if color else f"[[{t}]]") if loss else t
            for t, loss in segments(row.input_ids, row.labels, tokenizer)
        )
        lines.append(text)
    return "\n".join(lines)


_STYLE = """body{font:14px/1.45 system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em;color:#222}
pre{background:#f6f6f6;padding:.8em;white-space:pre-wrap;word-break:break-word}
.loss{background:#c9f2c9;outline:1px solid #7c7}.pass{color:#175}.fail{color:#b00;font-weight:bold}
.warn{color:#a60}.info{color:#555}td{padding:.2em .6em;vertical-align:top}"""


def check_html(result: CheckResult, rows: list, tokenizer, config_text: str, data_text: str, preview: str = "") -> str:
    """The page of a check. rows: sft's rendered examples, their loss tokens highlighted; preview: the rows of the
    other tasks as they read them (checks/heads.py, checks/grpo.py), shown in their place."""
    items = "".join(
        f'<tr><td class="{i.status}">{i.status.upper()}</td><td>{html.escape(i.name)}</td>'
        f"<td>{html.escape(i.summary)}{''.join(f'<br>{html.escape(d)}' for d in i.details)}</td></tr>"
        for i in result.items
    )
    examples = "".join(
        f"<h3>{html.escape(location(row.path, row.line))} ({len(row.input_ids)} tokens)</h3><pre>"
        + "".join(
            f'<span class="loss">{html.escape(t)}</span>' if loss else html.escape(t)
            for t, loss in segments(row.input_ids, row.labels, tokenizer)
        )
        + "</pre>"
        for row in rows
    )
    verdict_class = "pass" if result.passed else "fail"
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{HTML_MARK}<title>tunelab check</title>'
        f"<style>{_STYLE}</style></head><body><h1>tunelab check</h1>"
        f'<p class="{verdict_class}">{html.escape(result.verdict())}</p><table>{items}</table>'
        + (
            f"<h2>Examples as rendered (loss tokens highlighted)</h2>{examples}"
            if rows or not preview
            else f"<h2>Examples as the task reads them</h2><pre>{html.escape(preview)}</pre>"
        )
        + f"<h2>Data</h2><pre>{html.escape(data_text)}</pre>"
        + f"<h2>Resolved config</h2><pre>{html.escape(config_text)}</pre></body></html>\n"
    )
