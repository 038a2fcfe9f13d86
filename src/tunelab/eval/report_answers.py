"""The report's answers section: each question with the base and the tuned answer side by side, the words that
changed marked (`word_diff`), and a mark per answer saying whether it was right.

From eval.json when `tunelab eval` ran, else from compare.json; at most MAX_ANSWER_ROWS rows, the rest counted.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from tunelab.eval.report_html import esc
from tunelab.eval.report_inputs import Input, compare_hint, eval_hint

MAX_ANSWER_ROWS = 500  # answers shown; the rest are counted
_NO_LABEL = "(no label)"
_COMPARED = "correct: contains the expected text (a label task: names the expected label)"  # compare.json's verdict


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


def _answer_cell(
    text_html: str, empty: bool, ok: bool | None, detail: str, tags: list[str], thought: str | None = None
) -> str:
    body = '<span class="empty">(empty answer)</span>' if empty else text_html
    # a reasoning model's thought, folded apart from the answer: not scored, not diffed
    if thought is not None:
        body = f'<details class="thought"><summary>thought (not scored)</summary>{esc(thought)}</details>{body}'
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


def answer_rows(ev: Input, cmp: Input, run_dir: Path) -> str:
    """Answers from eval.json (or compare.json when there is no eval), base beside tuned, word differences marked;
    when neither holds any, the commands that write them for `run_dir`, as the command line and Python spell them."""
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
                    (b.get("thought"), t.get("thought")),
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
                    (r.get("base_ok"), _COMPARED, []),
                    (r.get("tuned_ok"), _COMPARED, []),
                    (r.get("base_thought"), r.get("tuned_thought")),
                )
            )
    if not rows:
        problems = "; ".join(p for p in (ev.problem, cmp.problem) if p) or "eval.json and compare.json hold no answers"
        how = f"To show them, {eval_hint(run_dir)}, or {compare_hint(run_dir)}."
        return f'<p class="missing">No answers to show: {esc(problems)}. {esc(how)}</p>'
    shown = rows[:MAX_ANSWER_ROWS]
    body = []
    for i, (question, expected, kind, where, base, tuned, bv, tv, thoughts) in enumerate(shown, 1):
        base_html, tuned_html = word_diff(base or "", tuned or "")
        meta = f'<span class="expected">expected: {esc(expected)}</span>' if expected is not None else ""
        loc = f'<span class="loc">#{i} · {esc(kind)}{" · " + esc(where) if where else ""}</span>'
        same = ["same as base"] if base == tuned else []
        body.append(
            f'<tr class="answer-row"><td>{esc(question)}{meta}{loc}</td>'
            f"{_answer_cell(base_html, not base, *bv, thoughts[0])}"
            f"{_answer_cell(tuned_html, not tuned, tv[0], tv[1], tv[2] + same, thoughts[1])}</tr>"
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
