"""Unpaired feedback for task dpo with loss kto: rows of a prompt, one completion and a label saying whether the
completion is desirable (true: a thumbs up) or undesirable (false: a thumbs down), TRL's unpaired preference format.

Accepted rows (`data.fields` maps the names to your columns; a column named as a field but for its case is read as it):
- `prompt` (or question, instruction + optional input and history, read as sft reads alpaca's; or messages or
  conversations): a text or a message list ending with the user's turn, rendered with the chat template (or
  data.template; the tokenizer's own, else chatml), as dpo renders a prompt with chosen and rejected texts;
- `completion`: a text, one message ({role, content} / ShareGPT {from, value}) or a message list: the answer turns;
- `label`: true or false; also yes/no, 1/0 (numbers or text, any case), as .csv files write them.
A row's `system` (else data.system_prompt) is prepended. A row without a prompt or completion, or with a label that is
none of these, is a DataError naming file, line and field; it says why a whole text (no prompt: the KL estimate puts
another row's completion after a row's prompt, so the two must be apart) and a preference pair (chosen and rejected:
other dpo losses read those) are not rows of kto; a row whose completion is empty is a counted skip. Rows
that give one prompt and completion both labels (train and eval alike) are a data note, counted, with the first two
file:line, as the other tasks' contradicting rows are (`data.repeats.note_conflicting`).

Each row becomes a `FeedbackRow`: the prompt with its completion (`chosen_*`), and the prompt with the completion of
the nearest row before it in the file whose prompt differs (`rejected_*`, cyclically: the first row looks from the
last; `partners`), whose log ratio is what KTO's reference point z0 estimates KL(policy || reference) from: a
completion to another prompt, as TRL shifts a batch's completions by one. The order is fixed when the data is read. The mismatched side is cut to data.max_length (it only feeds the estimate); the row's
own side is dropped or cut as data.overlong says (the prompt whole, the completion's start).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tunelab.config import RunConfig
from tunelab.data.formats import text_field
from tunelab.data.loader import Datasets
from tunelab.data.render import IGNORE, note_unreadable, row_text
from tunelab.data.repeats import note_conflicting
from tunelab.data.report import DataReport, SplitStats, location
from tunelab.data.size_bound import size_bound, surely_longer
from tunelab.data.templates import Template
from tunelab.errors import ConfigError, DataError, counted
from tunelab.tasks.head_data import (
    CHAT_FIELDS,
    PROMPT_FIELDS,
    column,
    counted_records,
    read_task_data,
    refuse_sft_recipes,
    with_system,
)
from tunelab.tasks.pair_data import answer_blank, answer_turns
from tunelab.tasks.preference_data import (
    Preference,
    PreferenceRow,
    Side,
    chat_texts,
    first_label,
    heads,
    note_cut_answers,
    refuse_no_room,
    render_pair,
    side_lengths,
)
from tunelab.tasks.reward import read_prompt

FIELDS = (*PROMPT_FIELDS, *CHAT_FIELDS, "completion", "label", "system", "input", "history")
TRUE = ("true", "yes", "1")
FALSE = ("false", "no", "0")
BALANCE = (1.0, 4 / 3)  # desirable_weight x desirable rows / (undesirable_weight x undesirable rows): KTO's advice


@dataclass
class Feedback:
    context: list[dict]  # the prompt's turns, with the system message
    completion: list[dict]  # the answer turns
    desirable: bool
    path: str
    line: int


@dataclass
class FeedbackRow(PreferenceRow):
    """A feedback row as the dpo machinery carries a pair: chosen_* the prompt with its own completion, rejected_*
    the prompt with another row's completion (the KL estimate's side); reference: their reference log-probs."""

    desirable: bool = True

    @property
    def labels(self) -> list[int]:
        """Both sides' labels, then the row's label (1 desirable, 0 undesirable): what the resume digest compares, so
        a row whose label changed since the run started is a changed row."""
        return self.chosen_labels + self.rejected_labels + [int(self.desirable)]


def read_label(row: dict, fields: dict[str, str], where: str, lenient: bool) -> bool:
    key = column(row, fields, "label", lenient)
    value = row.get(key) if key else None
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
        return value.strip().lower() in TRUE
    named = f"field '{key}'" if key else "field 'label'"
    blank = value is None or (isinstance(value, str) and not value.strip()) or value != value  # NaN: pandas' null
    found = "missing" if blank else f"{value!r}"
    raise DataError(
        f"{where}: {named} is {found}; loss kto needs a label of true (the completion is desirable) or false "
        "(undesirable), also written yes/no or 1/0. Fix the row or remove it."
    )


def read_feedback(
    paths: list[str],
    fields: dict[str, str],
    system: str | None,
    report: DataReport,
    lenient: bool = False,
    delimiter: str = "auto",
    transform: str | None = None,
) -> list[Feedback]:
    """Rows of the files as Feedback; DataError (file:line, field) for a row without prompt, completion or label."""
    out = []
    for record in counted_records(paths, report, "feedback rows", fields, lenient, delimiter, "dpo", FIELDS, transform):
        row, where = record.row, location(record.path, record.line)
        pair = _pair_hint(row)
        prompt = read_prompt(row, fields, where, lenient)
        if prompt is None:
            raise DataError(
                f"{where}: no prompt; loss kto reads rows of prompt, completion and label: it scores the completion "
                "after its prompt and estimates its KL reference point from the prompt with another row's completion, "
                "so each row needs its prompt apart from its completion (a whole text has none). "
                + (pair or "Add the row's prompt, or map its column with data.fields (e.g. {prompt: question}).")
            )
        key = column(row, fields, "completion", lenient)
        if key is None:
            raise DataError(
                f"{where}: field 'completion' is missing; loss kto reads rows of prompt, completion and label. "
                + (pair or "Add it, or map its column with data.fields (e.g. {completion: answer}).")
            )
        value = row[key]
        turns = (
            answer_turns(value, where, key)
            if isinstance(value, list | dict)
            else [{"role": "assistant", "content": text_field(value, where, key)}]
        )
        desirable = read_label(row, fields, where, lenient)
        context = with_system(prompt, row, fields, where, system, lenient)
        if answer_blank(context + turns, len(context)):
            report.skip("empty completion", record.path, record.line)
            continue
        out.append(Feedback(context, turns, desirable, record.path, record.line))
    return out


def _pair_hint(row: dict) -> str | None:
    """What to do with a row of a preference pair (chosen and rejected columns, any case) given to loss kto."""
    if not {"chosen", "rejected"} <= {k.lower() for k in row if isinstance(k, str)}:
        return None
    return (
        "This row is a preference pair (chosen and rejected): loss kto reads unpaired rows. Train pairs with another "
        "dpo.loss (sigmoid, ipo, simpo, orpo), or write each pair as two rows, the chosen completion labelled true "
        "and the rejected one false (examples/kto_feedback/prepare.py does)."
    )


def completion_and_label(item: Feedback) -> tuple[str, str]:
    """(the prompt with its completion, the label's word), for `note_conflicting`: one completion labelled both ways
    is noted, not refused, as sft's prompt answered twice and classify's text labelled twice are."""
    return json.dumps(item.context + item.completion, sort_keys=True), "desirable" if item.desirable else "undesirable"


LOOK_BACK = 64  # rows searched for another prompt before taking the previous row's completion anyway


def partners(items: list[Feedback]) -> list[Feedback]:
    """Each row's mismatched row: the nearest before it (cyclically) whose prompt differs, so that a file of paired
    feedback written row by row (a prompt's desirable completion, then its undesirable one) does not estimate z0 from
    a completion to the same prompt; the row just before where none of the LOOK_BACK before it differs (all rows
    share one prompt: the estimate is then of completions to that prompt)."""
    out = []
    for i, item in enumerate(items):
        back = (items[(i - k) % len(items)] for k in range(1, min(LOOK_BACK, len(items) - 1) + 1))
        out.append(next((other for other in back if other.context != item.context), items[i - 1]))
    return out


def to_rows(
    items: list[Feedback],
    tokenizer,
    template: Template,
    max_length: int,
    overlong: str,
    report: DataReport,
    split: str = "training",
) -> list[FeedbackRow]:
    rows = []
    cut_answers = [0, 0, 0]  # rows cut, completion tokens they lose, completion tokens they had
    bounded, bound = False, size_bound(tokenizer)  # bounded: a cut row was read only to its head (data/leading.py)
    dropped = f"longer than max_length ({max_length} tokens; data.overlong=drop)"
    for item, other in zip(items, partners(items)):
        start = len(item.context)
        pair = Preference(
            Side(item.context + item.completion, start),
            Side(item.context + other.completion, start),
            item.path,
            item.line,
        )
        rendered = chat_texts(pair, tokenizer, template)
        if overlong == "drop" and surely_longer(rendered[0][0], max_length, bound):  # dropped whatever its tokens
            report.add_lengths([bound.least_tokens(rendered[0][0])], at_least=1)
            report.skip(dropped, item.path, item.line)
            continue
        # the mismatched side is cut to max_length whatever data.overlong says: read only to its head where it can be
        ids, labels, kl_ids, kl_labels, _, rests = render_pair(pair, tokenizer, template, rendered, max_length)
        own = [t for t, _ in rendered[:1]]
        report.add_lengths(side_lengths(own, (ids,), rests[:1], 0, tokenizer), heads(rests[:1]))
        refuse_no_room(
            first_label(labels), max_length, overlong, item.path, item.line, "the completion", heads(rests[:1]) > 0
        )
        if len(ids) > max_length:
            if overlong == "drop":
                report.skip(dropped, item.path, item.line)
                continue
            answer = sum(t != IGNORE for t in labels) + (rests[0] or 0)
            ids, labels = ids[:max_length], labels[:max_length]
            report.truncated(item.path, item.line)
            kept = sum(t != IGNORE for t in labels)
            cut_answers = [cut_answers[0] + 1, cut_answers[1] + answer - kept, cut_answers[2] + answer]
            bounded = bounded or rests[0] is not None
        kl_ids, kl_labels = kl_ids[:max_length], kl_labels[:max_length]
        if all(t == IGNORE for t in labels) or all(t == IGNORE for t in kl_labels):
            report.skip("no answer token after rendering", item.path, item.line)
            continue
        report.used(item.path)
        rows.append(FeedbackRow(ids, labels, kl_ids, kl_labels, item.path, item.line, desirable=item.desirable))
    note_cut_answers(*cut_answers, max_length, split, report, bounded)
    return rows


def note_balance(rows: list[FeedbackRow], desirable_weight: float, undesirable_weight: float, report: DataReport):
    """A note when the training rows hold one class only, or when desirable_weight x desirable rows /
    (undesirable_weight x undesirable rows) lies outside [1, 4/3], the range the KTO paper (section 4.2) found to work,
    with the weight that brings it to 1."""
    good = sum(r.desirable for r in rows)
    bad = len(rows) - good
    if not good or not bad:
        missing = "undesirable (false)" if not bad else "desirable (true)"
        report.notes.append(
            f"all {counted(len(rows), 'training row')} are {'desirable' if not bad else 'undesirable'}: no row is "
            f"{missing}, so loss kto only pushes one way, against its KL reference point; add rows of the other label "
            "if you have them"
        )
        return
    ratio = desirable_weight * good / (undesirable_weight * bad) if undesirable_weight else float("inf")
    if not BALANCE[0] <= ratio <= BALANCE[1]:
        report.notes.append(
            f"the training rows are {good} desirable and {bad} undesirable: desirable_weight x desirable rows / "
            f"(undesirable_weight x undesirable rows) is {ratio:.2f}, outside the 1 to 4/3 the KTO paper advises; "
            f"e.g. dpo.undesirable_weight {desirable_weight * good / bad:.3g} (with dpo.desirable_weight "
            f"{desirable_weight:g}) makes it 1"
        )


def _stats(rows: list[FeedbackRow], examples: int) -> SplitStats:
    tokens = sum(len(r.chosen_ids) for r in rows)
    answer = sum(sum(t != IGNORE for t in r.chosen_labels) for r in rows)
    return SplitStats(examples=examples, used=len(rows), rows=len(rows), tokens=tokens, loss_tokens=answer)


def build_feedback(cfg: RunConfig, tokenizer, seed: int) -> Datasets:
    """Train and eval rows of unpaired feedback (loss kto), with the data report."""
    d = cfg.data
    if d.packing:
        raise ConfigError(
            "option 'data.packing' cannot be used with dpo.loss kto: each row is scored whole beside the mismatched "
            "row its KL estimate reads. Set data.packing to false."
        )
    if not d.train:
        raise ConfigError("option 'data.train' is empty; give one or more files of prompt, completion and label rows.")
    refuse_sft_recipes(cfg)
    if d.overlong not in ("drop", "truncate"):
        raise ConfigError(f"option 'data.overlong' is {d.overlong!r}; allowed values: drop, truncate.")
    items, held, report, template = read_task_data(cfg, tokenizer, seed, read_feedback, FIELDS)
    note_conflicting(items + held, report, completion_and_label, kind="feedback")
    note_unreadable(
        items + held, [row_text(it.context, it.completion) for it in items + held], tokenizer, report, held=len(held)
    )
    report.template = template.name
    train = to_rows(items, tokenizer, template, d.max_length, d.overlong, report)
    if not train:
        raise DataError(f"{', '.join(d.train)}: no usable feedback rows. {report.summary()}")
    if len(train) == 1:
        raise DataError(
            f"{', '.join(d.train)}: one usable feedback row; loss kto estimates its KL reference point from a row's "
            "prompt with other rows' completions, so it needs at least two."
        )
    note_balance(train, cfg.dpo.desirable_weight, cfg.dpo.undesirable_weight, report)
    evals = to_rows(held, tokenizer, template, d.max_length, d.overlong, report, "eval")
    report.train, report.eval = _stats(train, len(items)), _stats(evals, len(held))
    weights = [cfg.dpo.desirable_weight if r.desirable else cfg.dpo.undesirable_weight for r in train]
    # kto_weight: the training rows' mean loss weight, twice the loss before training (the verdict's scale)
    facts = {"input": "chat", "pad_id": tokenizer.pad_token_id, "kto_weight": sum(weights) / len(weights)}
    return Datasets(train, evals, template, report, facts=facts)
