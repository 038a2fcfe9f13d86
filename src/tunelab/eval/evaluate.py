"""`tunelab eval`: the base and the tuned model of a run, side by side, on one eval file; saved as eval.json.

Two kinds of numbers per model:
  loss        the file rendered exactly as training renders data (the run's template, system prompt, max_length
              and overlong rule; no packing), mean next-token loss over answer tokens and its perplexity;
  generation  greedy answers (batched, KV cache) scored against the expected answers (see eval/metrics.py), per
              kind of row, with label tasks scored as classification, and the generation speed in tokens/s.

Rows may be in any training format (the last assistant turn is the expected answer; an `expected` column overrides
it) or `question`/`prompt` + `expected` rows as for `tunelab compare`, whose expected text is then also the answer the
loss is taken on. A `label` column (or a `kind` of label/classification) marks a label task: the expected answers are
the labels, and each generated answer is mapped to one. Text rows (continued pretraining) count for the loss only.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from tunelab.atomic import write_json
from tunelab.config import DataConfig, load_config
from tunelab.data.formats import Example, to_examples
from tunelab.data.loader import make_batches
from tunelab.data.render import render_examples
from tunelab.data.report import DataReport, location
from tunelab.data.sources import read_records
from tunelab.errors import ConfigError, DataError, RunDirError
from tunelab.eval.metrics import (
    LabelScores,
    TextScores,
    contains,
    exact_match,
    label_scores,
    predict_label,
    refused,
    rouge_l,
    text_scores,
)
from tunelab.infer.generate import GenerationSettings, generate_answers
from tunelab.infer.run import LoadedRun, open_run
from tunelab.rundir import RunInfo, open_info
from tunelab.training.auto import trained_value
from tunelab.training.step import evaluate, loss_tokens

EVAL_FILE = "eval.json"
LABEL_KINDS = ("label", "labels", "classification")
PROMPT_FIELDS = ("question", "prompt", "instruction")  # a row with one of these is meant to be answered
ANSWER_FIELDS = (
    "answer",
    "completion",
    "output",
    "messages",
    "conversations",
)  # a row with one of these is training data


@dataclass
class EvalItem:
    """One row of the eval file: the example the loss is taken on, and what generation is asked and expected."""

    example: Example
    prompt: list[dict] | None  # the conversation up to the answer (ends with a user turn); None: loss only
    expected: str | None
    kind: str
    is_label: bool

    @property
    def where(self) -> str:
        return location(self.example.path, self.example.line)


@dataclass
class Answer:
    text: str
    exact: bool
    contains: bool
    rouge_l: float
    refused: bool | None = None  # None when no refusal sentence is known
    label: str | None = None  # the label the answer gives, for label tasks


@dataclass
class EvalRow:
    question: str  # the last user turn
    expected: str
    kind: str
    task: str  # "text" or "label"
    location: str  # file:line of the row
    base: Answer
    tuned: Answer


@dataclass
class ModelScores:
    """Everything measured on one model (base or tuned)."""

    eval_loss: float | None  # mean nats per answer token; None when no row could be rendered
    perplexity: float | None  # exp(eval_loss); None when it overflows
    overall: TextScores | None  # all answered rows; None when the file has no rows to answer
    by_kind: dict[str, TextScores] = field(default_factory=dict)
    label_tasks: dict[str, LabelScores] = field(default_factory=dict)  # kind -> scores, for label kinds
    generated_tokens: int = 0  # per answer up to and including its stop token
    generation_s: float = 0.0
    tokens_per_s: float | None = None


@dataclass
class EvalResult:
    run_dir: str
    data_file: str
    base_model: str
    method: str
    refusal: str | None
    settings: dict  # the GenerationSettings used
    device: str
    rows_read: int
    loss_rows: int  # rows rendered for the loss
    loss_tokens: int
    loss_skipped: dict[str, dict]  # reason -> {count, locations}: rows the run's max_length/overlong rule dropped
    base: ModelScores
    tuned: ModelScores
    rows: list[EvalRow]
    created: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path | None = None, overwrite: bool = False) -> Path:
        """Write eval.json (default: in the run directory), atomically."""
        path = Path(path) if path is not None else Path(self.run_dir) / EVAL_FILE
        _check_writable(path, overwrite)
        return write_json(path, self.to_dict())


def _check_writable(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise RunDirError(f"{path} exists. Pass --overwrite to replace it, or --out to write elsewhere.")
    if not path.parent.is_dir():
        raise RunDirError(f"{path.parent}: no such directory to write {path.name} into.")


def _run_data_config(run_dir: Path, info: RunInfo) -> tuple[DataConfig, int]:
    """The run's data options (for rendering exactly as in training) and its micro-batch size."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return DataConfig(system_prompt=info.system_prompt), 8
    try:
        cfg = load_config(path).config
    except ConfigError as exc:
        raise RunDirError(f"{path}: the run's saved config cannot be read ({exc}).") from None
    micro_batch = trained_value(info.extra, "train.micro_batch", cfg.train.micro_batch)
    return dataclasses.replace(cfg.data, packing=False, eval=None), micro_batch


def _text_field(row: dict, key: str, where: str) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, bool | int | float):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field '{key}' must be non-empty text, got {value!r}.")
    return value.strip()


def read_eval_file(path: str | Path, data: DataConfig) -> list[EvalItem]:
    """Rows of an eval file as EvalItems; DataError (naming file and line) for rows that cannot be evaluated."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: eval file not found.")
    records = read_records([str(path)])
    if not records:
        raise DataError(f"{path}: the eval file holds no rows.")
    fields = data.fields
    items: list[EvalItem | None] = [None] * len(records)
    training = []  # (index, record, expected, kind, is_label) of rows that to_examples converts
    for i, record in enumerate(records):
        row, where = record.row, location(record.path, record.line)
        is_label = "label" in row
        expected = _text_field(row, "label" if is_label else "expected", where)
        kind = str(row.get("kind") or ("label" if is_label else "all"))
        is_label = is_label or kind in LABEL_KINDS
        if any(fields.get(f, f) in row for f in ANSWER_FIELDS):
            training.append((i, record, expected, kind, is_label))
            continue
        prompt_keys = [k for k in (*PROMPT_FIELDS, "text") if fields.get(k, k) in row]
        if expected is None and any(k != "text" for k in prompt_keys):
            raise DataError(
                f"{where}: the row has no expected answer. Give it an 'expected' field (or 'label' for a label task), "
                "or an answer in a training format (e.g. question + answer)."
            )
        if expected is None:  # text rows, or rows whose format to_examples will name
            training.append((i, record, None, kind, False))
            continue
        if not prompt_keys:
            raise DataError(
                f"{where}: the row has an expected answer but no question; give it a 'question' (or 'prompt') field."
            )
        question = _text_field(row, fields.get(prompt_keys[0], prompt_keys[0]), where)
        system = (
            row.get("system") if isinstance(row.get("system"), str) and row["system"].strip() else data.system_prompt
        )
        prompt = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
        example = Example(prompt + [{"role": "assistant", "content": expected}], None, record.path, record.line)
        items[i] = EvalItem(example, prompt, expected, kind, is_label)

    report = DataReport()
    # One record at a time, format "auto": each row's format is detected on its own (the run's data.format was
    # chosen for its training files), so one eval file may mix formats; data.fields still maps column names.
    examples = [ex for t in training for ex in to_examples([t[1]], "auto", fields, data.system_prompt, report)]
    if report.skips:
        reasons = "; ".join(f"{reason} at {', '.join(s.locations)}" for reason, s in report.skips.items())
        raise DataError(f"{path}: rows cannot be evaluated: {reasons}. Fix or remove them.")
    for (i, _, expected, kind, is_label), ex in zip(training, examples, strict=True):
        if ex.messages is None:
            items[i] = EvalItem(ex, None, None, kind, False)
            continue
        last = max(k for k, m in enumerate(ex.messages) if m["role"] == "assistant")
        items[i] = EvalItem(ex, ex.messages[:last], expected or ex.messages[last]["content"].strip(), kind, is_label)
    return [item for item in items if item is not None]


class _CountingModel:
    """Stands in for a model in `generate_answers` and counts the tokens it generates: per row, up to and including
    its first stop token (the padding of rows that finished before the longest one is not counted)."""

    def __init__(self, model, stop_ids: set[int]):
        self.model, self.stop_ids, self.tokens = model, stop_ids, 0

    def parameters(self):
        return self.model.parameters()

    def generate(self, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
        out = self.model.generate(input_ids=input_ids, **kwargs)  # (B, T + new)
        for row in out[:, input_ids.shape[1] :].tolist():
            stop = next((k for k, t in enumerate(row) if t in self.stop_ids), None)
            self.tokens += len(row) if stop is None else stop + 1
        return out


def _stop_ids(run: LoadedRun) -> set[int]:
    ids = set(run.template.stop_token_ids)
    for tok in (run.tokenizer.eos_token_id, run.tokenizer.pad_token_id):
        if tok is not None:
            ids.add(tok)
    return ids


def _timed_answers(
    model, run: LoadedRun, prompts: list[list[dict]], settings: GenerationSettings
) -> tuple[list[str], int, float]:
    """Answers, generated tokens and seconds; a 2-token warm-up first so one-time costs are not timed."""
    if not prompts:
        return [], 0, 0.0
    generate_answers(
        model, run.tokenizer, run.template, prompts[:1], dataclasses.replace(settings, max_new_tokens=2, batch_size=1)
    )
    counting = _CountingModel(model, _stop_ids(run))
    tic = time.perf_counter()
    answers = generate_answers(counting, run.tokenizer, run.template, prompts, settings)
    return answers, counting.tokens, time.perf_counter() - tic


def _score_answers(
    answers: list[str], items: list[EvalItem], refusal: str | None, labels: dict[str, list[str]]
) -> list[Answer]:
    rouge = rouge_l(answers, [it.expected for it in items])
    out = []
    for text, item, r in zip(answers, items, rouge):
        label = predict_label(text, labels[item.kind]) if item.is_label else None
        out.append(
            Answer(
                text,
                exact_match(text, item.expected),
                contains(text, item.expected),
                r,
                refused(text, refusal) if refusal else None,
                label,
            )
        )
    return out


def _model_scores(
    loss: float | None,
    answers: list[str],
    items: list[EvalItem],
    refusal: str | None,
    labels: dict[str, list[str]],
    tokens: int,
    seconds: float,
) -> ModelScores:
    scores = ModelScores(
        loss,
        _perplexity(loss),
        None,
        generated_tokens=tokens,
        generation_s=seconds,
        tokens_per_s=tokens / seconds if seconds > 0 else None,
    )
    if not items:
        return scores
    scores.overall = text_scores(answers, [it.expected for it in items], refusal)
    for kind in dict.fromkeys(it.kind for it in items):
        group = [(a, it) for a, it in zip(answers, items) if it.kind == kind]
        scores.by_kind[kind] = text_scores([a for a, _ in group], [it.expected for _, it in group], refusal)
        if kind in labels:
            predicted = [predict_label(a, labels[kind]) for a, _ in group]
            scores.label_tasks[kind] = label_scores([it.expected for _, it in group], predicted, labels[kind])
    return scores


def _perplexity(loss: float | None) -> float | None:
    if loss is None or loss > 700:  # exp overflows a double past ~709
        return None
    return math.exp(loss)


def _question(prompt: list[dict]) -> str:
    return next(m["content"] for m in reversed(prompt) if m["role"] == "user")


def evaluate_run(
    run_dir: str | Path | LoadedRun,
    data_file: str | Path,
    settings: GenerationSettings | None = None,
    refusal: str | None = None,
    device: str = "auto",
    *,
    save: bool = True,
    out: str | Path | None = None,
    overwrite: bool = False,
) -> EvalResult:
    """Base and tuned model of `run_dir` (a path, or a run already opened with `open_run`) on `data_file`: loss,
    perplexity, answer scores, label tasks, speed. `refusal` defaults to the run's eval.refusal. With `save`, writes
    `out` (default RUN_DIR/eval.json); an existing file is an error unless `overwrite`."""
    loaded = run_dir if isinstance(run_dir, LoadedRun) else None
    run_dir = loaded.run_dir if loaded else Path(run_dir)
    info = loaded.info if loaded else open_info(run_dir)
    target = Path(out) if out is not None else run_dir / EVAL_FILE
    if save:
        _check_writable(target, overwrite)
    data, micro_batch = _run_data_config(run_dir, info)
    items = read_eval_file(data_file, data)
    settings = settings or GenerationSettings()
    refusal = refusal if refusal is not None else info.refusal

    run = loaded or open_run(run_dir, device=device)
    report = DataReport(max_length=data.max_length)
    rendered = render_examples([it.example for it in items], run.tokenizer, run.template, data, report)
    batches = [
        {k: v.to(run.device) if torch.is_tensor(v) else v for k, v in b.items()}
        for b in make_batches(rendered, micro_batch, run.tokenizer.pad_token_id, shuffle=False, seed=0, epoch=0)
    ]
    asked = [it for it in items if it.prompt is not None]
    prompts = [it.prompt for it in asked]
    labels = {
        kind: list(dict.fromkeys(it.expected for it in asked if it.kind == kind and it.is_label))
        for kind in dict.fromkeys(it.kind for it in asked if it.is_label)
    }

    tuned_loss = evaluate(run.model, batches) if batches else None
    tuned_answers, tuned_tokens, tuned_s = _timed_answers(run.model, run, prompts, settings)
    with run.base_model() as base_model:
        base_loss = evaluate(base_model, batches) if batches else None
        base_answers, base_tokens, base_s = _timed_answers(base_model, run, prompts, settings)

    base_scored = _score_answers(base_answers, asked, refusal, labels) if asked else []
    tuned_scored = _score_answers(tuned_answers, asked, refusal, labels) if asked else []
    rows = [
        EvalRow(_question(it.prompt), it.expected, it.kind, "label" if it.is_label else "text", it.where, b, t)
        for it, b, t in zip(asked, base_scored, tuned_scored)
    ]
    result = EvalResult(
        run_dir=str(run_dir),
        data_file=str(data_file),
        base_model=info.base_model,
        method=info.method,
        refusal=refusal,
        settings=asdict(settings),
        device=str(run.device),
        rows_read=len(items),
        loss_rows=len(rendered),
        loss_tokens=sum(loss_tokens(b) for b in batches),
        loss_skipped={reason: {"count": s.count, "locations": s.locations} for reason, s in report.skips.items()},
        base=_model_scores(base_loss, base_answers, asked, refusal, labels, base_tokens, base_s),
        tuned=_model_scores(tuned_loss, tuned_answers, asked, refusal, labels, tuned_tokens, tuned_s),
        rows=rows,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    if save:
        result.save(target, overwrite=overwrite)
    return result


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_eval(result: EvalResult) -> str:
    """The numbers as a small text table, base beside tuned, for the terminal."""
    b, t = result.base, result.tuned
    lines = [
        f"eval of {result.run_dir} on {result.data_file}: {result.rows_read} rows, {len(result.rows)} answered, "
        f"loss on {result.loss_rows} rows ({result.loss_tokens:,} answer tokens)"
    ]
    table = [
        ("eval loss", _num(b.eval_loss), _num(t.eval_loss)),
        ("perplexity", _num(b.perplexity, 2), _num(t.perplexity, 2)),
    ]
    scopes = [("", b.overall, t.overall)] + (
        [(f"[{k}] ", b.by_kind[k], t.by_kind[k]) for k in t.by_kind] if len(t.by_kind) > 1 else []
    )
    for prefix, bs, ts in scopes:
        if bs is None or ts is None:
            continue
        table += [
            (f"{prefix}exact match", _pct(bs.exact_match), _pct(ts.exact_match)),
            (f"{prefix}contains", _pct(bs.contains), _pct(ts.contains)),
            (f"{prefix}ROUGE-L F1", _num(bs.rouge_l, 3), _num(ts.rouge_l, 3)),
        ]
        if ts.refusal_rate is not None:
            table.append((f"{prefix}refusal rate", _pct(bs.refusal_rate), _pct(ts.refusal_rate)))
    for kind, ts in t.label_tasks.items():
        bs = b.label_tasks[kind]
        table += [
            (f"[{kind}] accuracy", _pct(bs.accuracy), _pct(ts.accuracy)),
            (f"[{kind}] macro F1", _num(bs.macro_f1, 3), _num(ts.macro_f1, 3)),
        ]
    table.append(("tokens/s (generation)", _num(b.tokens_per_s, 1), _num(t.tokens_per_s, 1)))
    width = max(len(name) for name, _, _ in table)
    lines.append(f"  {'':<{width}}  {'base':>10}  {'tuned':>10}")
    lines += [f"  {name:<{width}}  {bv:>10}  {tv:>10}" for name, bv, tv in table]
    if result.loss_skipped:
        lines.append(
            "  not in the loss: " + "; ".join(f"{s['count']} {reason}" for reason, s in result.loss_skipped.items())
        )
    return "\n".join(lines)
