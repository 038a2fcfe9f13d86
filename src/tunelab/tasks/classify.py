"""Sequence classification: the body of the LM and a linear head on each row's last real token (`tasks/head.py`).

Rows are an input (`tasks/head_data.py`: a text, a chat, or a prompt) and a `label` (a string; numbers are read as
their text). The label set is collected from the training rows, sorted, saved with the run (config.json's id2label,
run.json's facts) and printed when the head is attached. The loss is the cross-entropy of the head's logits, summed
over the step's rows and divided once by their number; with class weights each row's term is multiplied by its
class's weight (still divided by the rows, not by the sum of weights as torch's weighted mean does: with balanced
weights the two agree over the whole data set, and the step keeps one unit).

Eval rows whose label the training rows never had cannot enter a cross-entropy over the known classes: they are
skipped and counted in the data report (`tunelab eval` scores them, as errors). An eval label written another way
than a training label (`label_key`: 'Spam' for 'spam') is read as that label and counted, as `tunelab eval` reads it. Packing is refused: each row is one
example whose last token is read.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shlex
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.config import ClassifyConfig, RunConfig
from tunelab.config.flags import CLI, Spelling
from tunelab.data.batches import epoch_chunks
from tunelab.data.formats import scalar_text
from tunelab.data.loader import Datasets, note_system_on_texts
from tunelab.data.render import note_templated_inputs, note_unreadable, row_text
from tunelab.data.repeats import note_conflicting
from tunelab.data.report import DataReport, SplitStats, location
from tunelab.errors import ConfigError, DataError, article, counted
from tunelab.tasks.head import attach_head, continue_head, head_learning_rates, save_head_run
from tunelab.tasks.head_data import (
    INPUT_FIELDS,
    Input,
    chat_flaw,
    column,
    counted_records,
    input_kind,
    is_empty,
    no_input_error,
    pad_rows,
    read_input,
    read_task_data,
    refuse_chat_format,
    refuse_sft_recipes,
    render_within,
)
from tunelab.tasks.head_fit import Keep, fit, overlong_reason, starts
from tunelab.tasks.task import Task, eval_mode
from tunelab.training.build import BuiltModel

FIELDS = (*INPUT_FIELDS, "system", "input", "history", "label")
UNSEEN = "label not among the training labels"


@dataclass
class Labelled:
    """One row as read: its input and label (None when the file has no label column: prediction only)."""

    input: Input
    label: str | None
    path: str
    line: int


@dataclass
class LabelledRow:
    """One row as the head sees it."""

    input_ids: list[int]
    label: int  # index into the run's labels; -1 for a label the run does not know (or none given)
    weight: float  # the loss weight of its class (1 without class weights)
    path: str
    line: int

    @property
    def labels(self) -> list[int]:
        """The row's target, as the resume digest reads every task's rows."""
        return [self.label]


def refuse_head_options(cfg: RunConfig, spelling: Spelling = CLI) -> None:
    """The options a head run cannot honour: packing (one example per row), eval.questions (answered by text
    generation after training), and the sft data recipes (weighted sources, group_by_length; data.transform is read).
    `spelling`: how the way to score held-out rows is named, as tunelab eval's command or as the API's evaluate, of
    the run's output_dir."""
    if cfg.data.packing:
        raise ConfigError(
            f"option 'data.packing' cannot be used with task {cfg.task}: the head reads each row's last token, so every "
            "row must hold one example. Set data.packing to false."
        )
    if cfg.eval.questions:
        run = cfg.output_dir
        score = (
            f"`tunelab eval {shlex.quote(run)} --data FILE`"
            if spelling.flags
            else f"tunelab.evaluate({run!r}, data=FILE)"
        )
        raise ConfigError(
            f"option 'eval.questions' cannot be used with task {cfg.task}: its questions are answered by generating "
            f"text, which {article(cfg.task)} run does not do. Remove it and score held-out rows after training "
            f"with {score}."
        )
    refuse_sft_recipes(cfg)


def label_text(value, where: str, key: str) -> str:
    """A label as text: strings stripped, integers and booleans as written; DataError when missing or empty."""
    if isinstance(value, float) and not math.isfinite(value):  # NaN: a missing value as pandas and parquet write it
        value = None if math.isnan(value) else value
    if isinstance(value, bool | int) or (isinstance(value, float) and math.isfinite(value)):
        value = scalar_text(value)
    if not isinstance(value, str):
        got = "nothing (null)" if value is None else article(type(value).__name__)
        got = f"{value}, a number that names no label" if isinstance(value, float) else got
        raise DataError(
            f"{where}: field '{key}' must be a label (text or a number), got {got}. Give every row a label."
        )
    if not value.strip():
        raise DataError(f"{where}: field '{key}' is empty. Give every row a label, or remove the row.")
    return value.strip()


def read_labelled(
    paths: list[str],
    fields: dict[str, str],
    system_prompt: str | None,
    report: DataReport,
    *,
    require_label: bool = True,
    lenient: bool = False,
    evaluating: bool = False,
    delimiter: str = "auto",
    transform: str | None = None,
) -> list[Labelled]:
    """Rows of the files as Labelled; DataError (file:line and field) for a row without input or label, whose message
    says what `tunelab eval` needs when `evaluating`, and `tunelab predict` without `require_label` (their file is not
    a training file: data.fields cannot be changed)."""
    out = []
    checked = fields if require_label else {}  # rows to predict may come without the training rows' columns
    command = "tunelab eval" if evaluating else (None if require_label else "tunelab predict")  # run's data.fields
    for record in counted_records(
        paths,
        report,
        "label rows",
        checked,
        lenient,
        delimiter,
        "classify" if require_label else None,
        FIELDS,
        transform,
    ):
        where = location(record.path, record.line)
        item = read_input(record.row, fields, where, system_prompt, lenient)
        if item is None:
            raise no_input_error(where, record.row, fields, "classify", command)
        key = column(record.row, fields, "label", lenient)
        if key is None and require_label:
            raise _missing_label(where, record.row, fields, evaluating, lenient)
        value = record.row[key] if key is not None else None
        if not require_label and (
            value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""
        ):
            value, key = None, None  # rows to predict may leave the label blank (a CSV's empty cell)
        label = label_text(value, where, key) if key is not None else None
        if is_empty(item):
            report.skip("empty input", record.path, record.line)
            continue
        if flaw := chat_flaw(item.messages):
            report.skip(flaw, record.path, record.line)
            continue
        out.append(Labelled(item, label, record.path, record.line))
    return out


def _missing_label(where: str, row: dict, fields: dict[str, str], evaluating: bool, held: bool) -> DataError:
    """`held`: a row of data.eval (read leniently), which the run's eval loss and accuracy score."""
    name = fields.get("label", "label")
    has = ", ".join(map(str, row)) or "no fields"
    if evaluating:
        named = f"'{name}' (the run's data.fields) or 'label'" if name != "label" else "'label'"
        hint = (
            " 'expected' is what eval reads of a run that generates text; for a classifier, name that column 'label'."
            if "expected" in row
            else " Add the column, or use 'tunelab predict' for rows without labels."
        )
        return DataError(
            f"{where}: field '{name}' is missing; tunelab eval of a classify run scores the label it predicts for each "
            f"row against the row's own, so every row needs its expected label in a column {named}. This row has "
            f"{has}.{hint}"
        )
    mapped = f" (data.fields maps label to '{fields['label']}')" if "label" in fields else ""
    if held:
        named = f"'{name}' or 'label'" if name != "label" else "'label'"
        return DataError(
            f"{where}: field '{name}' is missing{mapped}; every row of the eval file (data.eval) needs its label, in "
            f"a column {named}: the eval loss and accuracy score the head against it. This row has {has}. Add the "
            "label, or remove the row."
        )
    read = set(FIELDS) | set(fields.values())
    others = [str(key) for key in row if key not in read]  # a column no field reads: the label, most likely
    column = others[0] if len(others) == 1 else "category"
    return DataError(
        f"{where}: field '{name}' is missing{mapped}; every training row needs a label. This row has {has}. Add the "
        f"label, or map your column with data.fields (e.g. {{label: {column}}})."
    )


WHOLE_NUMBER = re.compile(r"([+-]?\d+)\.0+")  # 1.0: how a CSV or a float column writes JSON's 1 ("1" here)


def label_key(label: str) -> str:
    """What two spellings of one label share: a whole number's digits (a CSV's 1.0 is JSON's 1, which label_text
    reads as "1"), a text's lowercase words. Other numbers stay as written: 01 and 1, 3.1 and 3.10 may be codes."""
    whole = WHOLE_NUMBER.fullmatch(label)
    return whole.group(1) if whole else " ".join(label.lower().split())


def text_and_label(item: Labelled) -> tuple[str, str] | None:
    """(the row's input, its label as label_key spells it), for `note_conflicting`: a text labelled twice otherwise."""
    if item.label is None:
        return None
    return json.dumps(dataclasses.asdict(item.input), sort_keys=True), label_key(item.label)


def note_repeated_texts(items: list[Labelled], report: DataReport) -> None:
    """A note in `report` when rows of the training files repeat another row word for word, text and label (a text
    labelled otherwise is `note_conflicting`'s), with how many rows, how many texts and the most repeated one: each
    copy trains again, weighing its text more, and where data.eval_fraction holds a copy out, the eval accuracy
    scores a text the head trained on, above what it does on new ones."""
    files = {path: k for k, path in enumerate(dict.fromkeys(item.path for item in items))}
    groups: dict[tuple[str, str], list[Labelled]] = {}
    for item in sorted(items, key=lambda item: (files[item.path], item.line)):  # the split's two sides in file order
        if (key := text_and_label(item)) is not None:
            groups.setdefault(key, []).append(item)
    repeated = [group for group in groups.values() if len(group) > 1]
    if not repeated:
        return
    copies = sum(len(group) - 1 for group in repeated)
    most = max(repeated, key=len)
    shown = most[0].input.text if most[0].input.text is not None else most[0].input.messages[-1].get("content", "")
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    first = min(repeated, key=lambda group: (files[group[1].path], group[1].line))  # the first copy of the files
    report.notes.append(
        f"{copies} of the {len(items)} rows of the training files repeat another row word for word, text and label "
        f"({counted(len(repeated), 'text')} given more than once, e.g. {location(first[1].path, first[1].line)} "
        f"repeats {location(first[0].path, first[0].line)}; the most repeated, {shown!r}, {len(most)} times): each "
        "copy trains again, weighing its text more, and a copy held out for eval is scored on a text the head "
        "trained on, so the eval accuracy reads higher than on new texts; remove the copies (keep one row a text)"
    )


def refuse_label_spellings(items: list[Labelled]) -> None:
    """DataError when training labels differ only in case, spacing or the way a number is written ('Spam' and 'spam',
    1 and 1.0): each spelling would train as a class of its own, splitting one class's rows between them."""
    first: dict[str, dict[str, Labelled]] = {}
    for item in items:
        first.setdefault(label_key(item.label), {}).setdefault(item.label, item)
    for spellings in first.values():
        if len(spellings) > 1:
            shown = " and ".join(f"{label!r} ({location(it.path, it.line)})" for label, it in spellings.items())
            raise DataError(
                f"the training labels {shown} differ only in case, spacing or how a number is written; each would be "
                "a class of its own. Write each label one way in every row."
            )


def class_weights(cfg: ClassifyConfig, labels: list[str], counts: Counter) -> dict[str, float]:
    """Per-label loss weights: 1, or balanced n / (K * n_c), then label_weights for the labels it names."""
    n, k = sum(counts.values()), sum(1 for c in labels if counts[c])  # a label without rows weighs none of them
    balanced = cfg.class_weights == "balanced"
    weights = {c: (n / (k * counts[c]) if balanced and counts[c] else 1.0) for c in labels}
    for label, value in cfg.label_weights.items():
        if label not in weights:
            raise ConfigError(
                f"option 'classify.label_weights' names the label {label!r}, which no training row has; the labels "
                f"are {', '.join(labels)}."
            )
        try:
            weights[label] = float(value)
        except ValueError:
            raise ConfigError(
                f"option 'classify.label_weights': the weight of {label!r} must be a number, got {value!r}."
            ) from None
        if not (math.isfinite(weights[label]) and weights[label] >= 0):
            raise ConfigError(
                f"option 'classify.label_weights': the weight of {label!r} must be a finite number >= 0, got {value}."
            )
    return weights


def used_counts(rows: list[LabelledRow], labels: list[str], items: list[Labelled], report: DataReport) -> Counter:
    """How many of the rows training uses (overlong ones dropped) each label has: what class_weights balances and the
    run records. DataError naming a label all of whose rows were dropped (`items`: the training rows as read): the
    head would have an output for it that no row trains, and predict it from its random start."""
    counts = Counter({label: 0 for label in labels}) + Counter(labels[r.label] for r in rows)
    lost = [label for label in labels if not counts[label]]
    if lost:
        shown = "; ".join(
            f"{label!r}: {sum(it.label == label for it in items)} rows (e.g. "
            f"{location(*next((it.path, it.line) for it in items if it.label == label))})"
            for label in lost
        )
        skips = "; ".join(f"{s.count} {reason}" for reason, s in report.skips.items())
        raise DataError(
            f"{counted(len(lost), 'label')} ({', '.join(map(repr, lost))}) {'has' if len(lost) == 1 else 'have'} "
            "no training row left: every row of theirs was skipped as too "
            f"long ({shown}; skipped: {skips}), so the head would have an output that no row trains. Raise "
            "data.max_length, set data.overlong=truncate, or remove the label's rows."
        )
    return counts


def to_rows(
    items: list[Labelled],
    labels: list[str],
    weights: dict[str, float],
    tokenizer,
    template,
    max_length: int,
    overlong: str,
    report: DataReport,
    *,
    skip_unseen: bool,
    text_format: str | None = None,
) -> list[LabelledRow]:
    """Render (text inputs put into `text_format`, classify.prompt_format), fit to max_length and index the labels;
    drops are counted in `report`."""
    index = {label: i for i, label in enumerate(labels)}
    spelled = {label_key(label): label for label in labels}
    wheres = [location(it.path, it.line) for it in items]
    # over max_length by size: dropped whatever their tokens, or read from their ends alone (see render_within)
    limits = (max_length, None) if overlong == "drop" else (None, max_length)
    encoded, over, tails = render_within([it.input for it in items], tokenizer, template, wheres, text_format, *limits)
    report.add_lengths([over.get(n, len(ids)) for n, ids in enumerate(encoded)], at_least=len(over))
    inputs = [it.input for it in items]
    kept = (
        starts(inputs, encoded, tokenizer, template, max_length, text_format, tails) if overlong == "truncate" else None
    )
    rows, respelt = [], []  # respelt: (item, the run's label) of rows that write a training label otherwise
    for n, (item, ids) in enumerate(zip(items, encoded)):
        if item.label is not None and item.label not in index and skip_unseen:
            near = spelled.get(label_key(item.label))
            if near is None:
                report.skip(f"{UNSEEN} ({item.label!r})", item.path, item.line)
                continue
            respelt.append((item, near))
            item = dataclasses.replace(item, label=near)
        keep = kept[n] if kept else Keep()
        fitted = None if n in over and overlong == "drop" else fit(ids, max_length, overlong, keep)
        if fitted is None:
            report.skip(overlong_reason(max_length, keep), item.path, item.line)
            continue
        if len(fitted) < len(ids):
            report.truncated(item.path, item.line)
        report.used(item.path)
        label = index.get(item.label, -1) if item.label is not None else -1
        rows.append(LabelledRow(fitted, label, weights.get(item.label, 1.0), item.path, item.line))
    if respelt:
        (item, near), more = respelt[0], ", ..." if len(respelt) > 1 else ""
        report.notes.append(
            f"{len(respelt)} eval rows write their label otherwise than the training rows ({item.label!r} for "
            f"{near!r}, e.g. {location(item.path, item.line)}{more}): read as the training label, as `tunelab eval` "
            "reads it"
        )
    return rows


def label_words(tokenizer, label: str) -> list[int]:
    """The token ids of a label read as words (' credit cards' for credit_cards), as they follow a cue like 'Domain:'."""
    return tokenizer.encode(" " + label.replace("_", " ").strip(), add_special_tokens=False)


def _stats(rows: list[LabelledRow], examples: int) -> SplitStats:
    tokens = sum(len(r.input_ids) for r in rows)
    return SplitStats(examples=examples, used=len(rows), rows=len(rows), tokens=tokens, loss_tokens=len(rows))


def build_data(cfg: RunConfig, tokenizer, seed: int, spelling: Spelling = CLI) -> Datasets:
    refuse_head_options(cfg, spelling)
    d = cfg.data
    if not d.train:
        raise ConfigError("option 'data.train' is empty; give one or more files of rows with a text and a label.")
    items, held, report, template = read_task_data(cfg, tokenizer, seed, read_labelled, FIELDS)
    refuse_chat_format([it.input for it in items + held], cfg)
    chat = any(it.input.is_chat for it in items + held)
    texts = [it for it in items + held if not it.input.is_chat]
    note_system_on_texts(d.system_prompt, texts, report)
    note_templated_inputs(
        texts,
        lambda it: (it.input.text,),
        tokenizer,
        report,
        "text inputs",
        "a text is read as it is, its markup plain characters, not control tokens, so the head learns from inputs in "
        "a form the chat template never writes; give such inputs as chats (a message list, or a prompt), so the "
        "template writes the markup, or keep them as text knowingly",
    )
    read = [row_text(it.input.text, it.input.messages) for it in items + held]
    note_unreadable(items + held, read, tokenizer, report, "scored", len(held))
    text_format = cfg.classify.prompt_format
    if not items:  # every row skipped (empty input, ...): the report says why
        raise DataError(f"{', '.join(d.train)}: no usable training rows. {report.summary()}")
    counts = Counter(it.label for it in items)
    labels = sorted(counts)
    if len(labels) < 2:
        found = f"only the label {labels[0]!r}" if labels else "no labelled rows"
        raise DataError(
            f"{', '.join(d.train)}: the training rows have {found}; a classifier needs at least two classes. Add rows "
            "of the other classes (or check that data.fields maps the right column to label)."
        )
    refuse_label_spellings(items + held if report.eval_source == "fraction" else items)  # the training files' rows
    note_conflicting(items + held, report, text_and_label, kind="label")
    note_repeated_texts(items + held if report.eval_source == "fraction" else items, report)
    report.template = template.name if chat else "none (text only)"
    args = (tokenizer, template, d.max_length, d.overlong, report)
    train = to_rows(items, labels, {}, *args, skip_unseen=False, text_format=text_format)
    if not train:
        raise DataError(f"{', '.join(d.train)}: no usable training rows. {report.summary()}")
    counts = used_counts(train, labels, items, report)
    weights = class_weights(cfg.classify, labels, counts)
    for row in train:
        row.weight = weights[labels[row.label]]
    evals = to_rows(held, labels, weights, *args, skip_unseen=True, text_format=text_format)
    report.train, report.eval = _stats(train, len(items)), _stats(evals, len(held))
    facts = {
        "labels": labels,
        "label_counts": {label: counts[label] for label in labels},
        "input": input_kind([it.input for it in items]),
    }
    if cfg.classify.class_weights != "none" or cfg.classify.label_weights:
        facts["class_weights"] = weights
    if cfg.classify.head_init == "label_words":
        facts["label_tokens"] = {label: label_words(tokenizer, label) for label in labels}
    return Datasets(train, evals, template, report, facts=facts)


def make_batches(
    rows: list[LabelledRow], micro_batch: int, pad_id: int, *, shuffle: bool, seed: int, epoch: int
) -> list[dict]:
    """Right-padded batches: input_ids, attention_mask, position_ids (B, T); targets (B,) int64; weights (B,) fp32;
    sources, per row its file:line (in a list, as sft batches give a packed row's several)."""
    batches = []
    for chunk in epoch_chunks(rows, micro_batch, shuffle=shuffle, seed=seed, epoch=epoch):
        batch = pad_rows([r.input_ids for r in chunk], pad_id)
        batch["targets"] = torch.tensor([r.label for r in chunk], dtype=torch.long)
        batch["weights"] = torch.tensor([r.weight for r in chunk], dtype=torch.float32)
        batch["sources"] = [[location(r.path, r.line)] for r in chunk]
        batches.append(batch)
    return batches


def count(batch: dict) -> int:
    return int(batch["targets"].shape[0])


def loss(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
    """Sum over rows of weight[y] * -log softmax(logits)[y]; the metric is the number of rows predicted right."""
    logits = model(batch["input_ids"], batch["attention_mask"], batch["position_ids"])  # (B, K) fp32
    ce = F.cross_entropy(logits, batch["targets"], reduction="none")  # (B,)
    correct = (logits.argmax(dim=-1) == batch["targets"]).sum()
    return (ce * batch["weights"]).sum(), {"accuracy": correct.detach()}


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[dict]) -> dict[str, float]:
    """Mean loss, accuracy and macro-F1 (over the classes that occur or are predicted) on the eval rows."""
    total, expected, predicted = 0.0, [], []
    with eval_mode(model):
        for batch in batches:
            logits = model(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
            total += (F.cross_entropy(logits, batch["targets"], reduction="none") * batch["weights"]).sum().item()
            expected += batch["targets"].tolist()
            predicted += logits.argmax(dim=-1).tolist()
    if not expected:
        return {}
    accuracy, macro_f1 = accuracy_and_macro_f1(torch.tensor(expected), torch.tensor(predicted))
    return {"eval_loss": total / len(expected), "eval_accuracy": accuracy, "eval_macro_f1": macro_f1}


def accuracy_and_macro_f1(expected: torch.Tensor, predicted: torch.Tensor) -> tuple[float, float]:
    """Accuracy and macro-F1 of class indices (N,), the mean of the per-class F1 over the classes that occur in
    either; `tunelab eval` reports the same two numbers through eval/metrics.label_scores (a test holds them equal).

        C[i, j] = rows of class i predicted j;  tp = diag(C);  F1_c = 2 tp_c / (rows of c + predictions of c)
    """
    classes, index = torch.unique(torch.cat([expected, predicted]), return_inverse=True)
    k, n = len(classes), len(expected)
    confusion = torch.bincount(index[:n] * k + index[n:], minlength=k * k).reshape(k, k).double()
    tp = confusion.diag()
    f1 = 2 * tp / (confusion.sum(dim=1) + confusion.sum(dim=0))  # both sums > 0 for every class in `classes`
    return float(tp.sum() / n), float(f1.mean())


def prepare(built: BuiltModel, data: Datasets, cfg: RunConfig) -> None:
    labels = data.facts["labels"]
    words = data.facts.get("label_tokens")
    attach_head(built, len(labels), cfg.train.seed, [words[label] for label in labels] if words else None)
    continued = continue_head(built, cfg.model.adapter, labels)
    counts = data.facts["label_counts"]
    weights = data.facts.get("class_weights")
    shown = ", ".join(
        f"{label} {counts[label]}" + (f" (weight {weights[label]:.3g})" if weights else "") for label in labels
    )
    start = f"; the head continues {cfg.model.adapter}'s" if continued else ""
    start = start or ("; the head starts from the label words" if words else "")
    print(
        f"head: {len(labels)} labels on the last real token ({data.facts['input']} input){start}: {shown}", flush=True
    )


def save(folder: Path, built: BuiltModel, tokenizer, cfg: RunConfig, data: Datasets) -> None:
    save_head_run(folder, built, tokenizer, cfg, data, data.facts["labels"])


CLASSIFY = Task(
    name="classify",
    build_data=build_data,
    make_batches=make_batches,
    count=count,
    loss=loss,
    prepare=prepare,
    save=save,
    evaluate=evaluate,
    learning_rates=head_learning_rates,
)
