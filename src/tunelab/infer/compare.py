"""Base model beside tuned model on the same questions, with scores when expected answers are given.

A question file holds `question` (or `prompt`) and optionally `expected` (or `label`) and `kind` columns (jsonl, json, csv).
An answer is correct when it contains the expected text, compared case-insensitively with whitespace collapsed; in a
label file (a `label` column) when the label it gives (`eval.metrics.predict_label` over the file's labels: whole
words, the earliest named) is the expected one, as `tunelab eval` scores it.
Scores are given per kind (e.g. fact / off_topic), so "answers the facts" and "refuses the rest" read separately.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunelab.config import RunConfig
from tunelab.data.sources import read_records
from tunelab.errors import DataError
from tunelab.eval.metrics import predict_label
from tunelab.infer.generate import GenerationSettings, generate_answers
from tunelab.infer.run import LoadedRun, open_run

COMPARE_FILE = "compare.json"


@dataclass
class Question:
    text: str
    expected: str | None = None
    kind: str = "all"
    is_label: bool = False  # the expected answer is a label of a label task


@dataclass
class Row:
    question: str
    expected: str | None
    kind: str
    base: str
    tuned: str
    base_ok: bool | None = None
    tuned_ok: bool | None = None


@dataclass
class Comparison:
    rows: list[Row]
    scores: dict[str, dict] = field(
        default_factory=dict
    )  # kind -> {n, base, tuned[, base_refused, tuned_refused]} fractions

    def to_dict(self) -> dict:
        return {"rows": [asdict(r) for r in self.rows], "scores": self.scores}


def read_questions(path: str | Path) -> list[Question]:
    questions = []
    for record in read_records([str(path)]):
        row = record.row
        text = row.get("question", row.get("prompt"))
        if not isinstance(text, str) or not text.strip():
            raise DataError(
                f"{record.path}, line {record.line}: field 'question' is missing or empty (a questions file needs a question or prompt column)."
            )
        key = "expected" if "expected" in row else "label"  # a label task's label is the answer it expects
        expected = row.get(key)
        if expected is not None and (not isinstance(expected, str) or not expected.strip()):
            raise DataError(f"{record.path}, line {record.line}: field '{key}' must be non-empty text when present.")
        questions.append(
            Question(text.strip(), expected, str(row.get("kind") or "all"), key == "label" and expected is not None)
        )
    if not questions:
        raise DataError(f"{path}: no questions found.")
    return questions


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def is_correct(answer: str, expected: str) -> bool:
    return _normal(expected) in _normal(answer)


def answers_correctly(question: Question, answer: str, labels: list[str]) -> bool:
    """A label question: the answer gives its label (among `labels`, the file's); else it contains the expected text."""
    if question.is_label:
        return predict_label(answer, labels) == question.expected
    return is_correct(answer, question.expected or "")


def compare(
    run: LoadedRun, questions: list[Question], settings: GenerationSettings, refusal: str | None = None
) -> Comparison:
    """Answer every question with the tuned and the base model. `refusal`, when known, adds refusal rates per kind."""
    conversations = [_conversation(q.text, run.system_prompt) for q in questions]
    tuned = generate_answers(run.model, run.tokenizer, run.template, conversations, settings)
    with run.base_model() as base_model:
        base = generate_answers(base_model, run.tokenizer, run.template, conversations, settings)
    labels = list(dict.fromkeys(q.expected for q in questions if q.is_label))
    rows = []
    for q, b, t in zip(questions, base, tuned):
        row = Row(q.text, q.expected, q.kind, b, t)
        if q.expected is not None:
            row.base_ok, row.tuned_ok = answers_correctly(q, b, labels), answers_correctly(q, t, labels)
        rows.append(row)
    return Comparison(rows, score(rows, refusal))


def score(rows: list[Row], refusal: str | None = None) -> dict[str, dict]:
    scores = {}
    for kind in dict.fromkeys(r.kind for r in rows):
        group = [r for r in rows if r.kind == kind]
        scored = [r for r in group if r.expected is not None]
        entry: dict = {"n": len(group)}
        if scored:
            entry["base"] = sum(r.base_ok for r in scored) / len(scored)
            entry["tuned"] = sum(r.tuned_ok for r in scored) / len(scored)
        if refusal:
            entry["base_refused"] = sum(is_correct(r.base, refusal) for r in group) / len(group)
            entry["tuned_refused"] = sum(is_correct(r.tuned, refusal) for r in group) / len(group)
        if len(entry) > 1:
            scores[kind] = entry
    return scores


def _conversation(question: str, system_prompt: str | None) -> list[dict]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": question}]


def format_comparison(result: Comparison) -> str:
    """Side by side as text: each question, then the base and the tuned answer, marked when they can be scored."""
    mark = {True: "✓", False: "✗", None: " "}
    lines = []
    for i, r in enumerate(result.rows, 1):
        lines.append(f"[{i}] {r.question}" + (f"   (expected: {r.expected})" if r.expected else ""))
        lines.append(f"  base  {mark[r.base_ok]} {r.base}")
        lines.append(f"  tuned {mark[r.tuned_ok]} {r.tuned}")
    if result.scores:
        lines.append("")
        lines.append(format_scores(result.scores))
    return "\n".join(lines)


def format_scores(scores: dict[str, dict]) -> str:
    """One line per kind: share of answers containing the expected text, and the refusal rate when known."""
    lines = ["scores: 'correct' = the answer contains the expected text; 'refused' = it contains the refusal sentence"]
    for kind, s in scores.items():
        parts = [f"  {kind:<12} (n={s['n']:>3})"]
        if "tuned" in s:
            parts.append(f"correct: base {100 * s['base']:5.1f}% -> tuned {100 * s['tuned']:5.1f}%")
        if "tuned_refused" in s:
            parts.append(f"refused: base {100 * s['base_refused']:5.1f}% -> tuned {100 * s['tuned_refused']:5.1f}%")
        lines.append("   ".join(parts))
    return "\n".join(lines)


def save_comparison(result: Comparison, run_dir: Path) -> Path:
    path = Path(run_dir) / COMPARE_FILE
    path.write_text(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    return path


def compare_after_training(run_dir: Path, cfg: RunConfig) -> Comparison:
    """Answer the run's eval.questions with the base and the saved tuned model, save compare.json, print the scores."""
    run = open_run(run_dir, device=cfg.model.device)
    result = compare(
        run,
        read_questions(cfg.eval.questions),
        GenerationSettings(max_new_tokens=cfg.eval.max_new_tokens),
        cfg.eval.refusal,
    )
    save_comparison(result, run_dir)
    print(format_comparison(result), flush=True)
    return result
