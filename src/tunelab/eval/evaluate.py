"""`tunelab eval`: the base and the tuned model of a run, side by side, on one eval file; saved as eval.json.

Two kinds of numbers per model:
  loss        the file rendered exactly as training renders data (the run's template, system prompt, max_length
              and overlong rule; texts cut into blocks per document when the run packed; rows not packed), mean next-token loss over the expected answers' tokens and its
              perplexity. It is the training eval loss only when the file holds the run's kind of answers: on
              `expected` key strings ("1997" where training taught "We were founded in 1997.") it is much higher,
              and the table says which it is (`loss_on`) beside the training eval loss from run.json;
  generation  greedy answers (batched, KV cache, the run's eval.max_new_tokens unless given) scored against the
              expected answers (see eval/metrics.py), per kind of row, with label tasks scored as classification,
              and the generation speed in tokens/s. Exact match is scored only where the expected text is a whole
              answer (training rows, labels): an `expected` column is a text to find, never the whole answer.
              Sampled answers (a temperature above 0) draw from a generator seeded with --seed (default: the
              run's train.seed), so two evals of one seed score the same answers.

The rows are read by eval/questions.py, the reader `tunelab compare` uses: question + expected, question + label (a
label task: each generated answer is mapped to one of the labels), any training format (the last assistant turn is
the expected answer), or text rows (continued pretraining), which count for the loss only. Each answer also gets the
verdict `tunelab compare` gives it (`correct`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch
from tqdm import tqdm

from tunelab.atomic import write_json
from tunelab.config.flags import PYTHON, Spelling
from tunelab.data.batches import make_batches
from tunelab.data.match import contains, exact_match
from tunelab.data.reasoning import split_thought
from tunelab.data.render import render_examples
from tunelab.data.report import DataReport, Unread
from tunelab.data.sources import refuse_missing_file
from tunelab.errors import counted
from tunelab.eval.compare import cut_line, dropped_counts, dropped_line, sampled_line
from tunelab.eval.metrics import (
    LabelScores,
    TextScores,
    correct,
    label_scores,
    predict_label,
    refused,
    rouge_l,
    text_scores,
)
from tunelab.eval.questions import (
    DATA_SETTINGS,
    Question,
    answer_seed,
    answer_settings,
    read_questions,
    run_data_config,
    task_labels,
)
from tunelab.infer.generate import (
    GenerationSettings,
    answer_generator,
    answer_progress,
    base_config_notice,
    fit_prompts,
    generate_answers,
    say,
    say_config_notice,
)
from tunelab.infer.run import LoadedRun, check_base_precision, opened
from tunelab.places import check_output_file
from tunelab.run_info import RunInfo
from tunelab.run_stamp import check_same_run, run_stamp
from tunelab.rundir import open_info, saved_config
from tunelab.training.auto import trained_value
from tunelab.training.step import evaluate, loss_tokens

EVAL_FILE = "eval.json"


@dataclass
class Answer:
    text: str
    exact: bool | None  # None where the expected text is not a whole answer (an `expected` column)
    contains: bool
    rouge_l: float
    refused: bool | None = None  # None when no refusal sentence is known
    label: str | None = None  # the label the answer gives, for label tasks
    correct: bool = False  # the verdict `tunelab compare` gives it too (eval.metrics.correct)
    thought: str | None = None  # a reasoning model's <think> thought before `text`, not scored; None: none
    cut: bool = False  # it ran to max_new_tokens without ending its turn, so it may stop mid-way


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

    eval_loss: float | None  # mean nats per expected-answer token (see EvalResult.loss_on); None: no row rendered
    perplexity: float | None  # exp(eval_loss); None when it overflows
    overall: TextScores | None  # all answered rows; None when the file has no rows to answer
    by_kind: dict[str, TextScores] = field(default_factory=dict)
    label_tasks: dict[str, LabelScores] = field(default_factory=dict)  # kind -> scores, for label kinds
    generated_tokens: int = 0  # per answer up to and including its stop token
    cut_answers: int = 0  # answers that ran to max_new_tokens without ending their turn
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
    loss_on: str = "answers"  # what the loss is taken on: "answers", "expected texts", "text" (and combinations, and
    # "with their prompts" where the run trained on them)
    training_eval_loss: float | None = None  # the run's own eval loss (run.json), on its held-out training answers
    training_eval_reward: float | None = (
        None  # a grpo run's instead: its mean eval reward (run.json's eval_loss negated)
    )
    transform_dropped: dict[str, dict] = field(default_factory=dict)  # reason -> {count, locations}: rows the
    # run's data.transform dropped, as training drops them (not in rows_read)
    unread: dict = field(default_factory=dict)  # the loss rows holding characters the tokenizer drops, as
    # data_report.json records them (data/report.py Unread); {} where none does
    base_weights: str = ""  # what the adapter sat on: "nf4" (a QLoRA run evaluated as trained) or the weights' dtype
    seed: int | None = None  # each model's sampled answers drew from a generator seeded with it; greedy ones, nothing

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path | None = None, overwrite: bool = False) -> Path:
        """Write eval.json (default: in the run directory), atomically."""
        path = Path(path) if path is not None else Path(self.run_dir) / EVAL_FILE
        check_output_file(path, overwrite, Path(self.run_dir), EVAL_FILE, (self.data_file,))
        return write_json(path, self.to_dict())


class _CountingModel:
    """Stands in for a model in `generate_answers` and counts the tokens it generates: per row, up to and including
    its first stop token (the padding of rows that finished before the longest one is not counted)."""

    def __init__(self, model, stop_ids: set[int]):
        self.model, self.stop_ids, self.tokens = model, stop_ids, 0

    def parameters(self):
        return self.model.parameters()

    @property
    def config(self):  # generate_answers reads the model's context length from it
        return self.model.config

    @property
    def generation_config(self):  # GenerationSettings.kwargs reads what the model's would change
        return self.model.generation_config

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
    model,
    run: LoadedRun,
    prompts: list[list[dict]],
    settings: GenerationSettings,
    progress,
    names: list[str],
    seed: int,
) -> tuple[list[str], list[bool], int, float]:
    """Answers, whether each was cut at max_new_tokens, generated tokens and seconds; a 2-token warm-up first so
    one-time costs are not timed. Sampled answers draw from a generator seeded with `seed`, the warm-up from another
    (torch's global one is left alone), so the answers are those of the seed alone."""
    if not prompts:
        return [], [], 0, 0.0
    warm_up = dataclasses.replace(settings, max_new_tokens=2, batch_size=1)
    generate_answers(
        model,
        run.tokenizer,
        run.template,
        prompts[:1],
        warm_up,
        names=names[:1],
        generator=answer_generator(seed, model),
    )
    counting = _CountingModel(model, _stop_ids(run))
    generator = answer_generator(seed, model)
    tic = time.perf_counter()
    answers, cut = generate_answers(
        counting, run.tokenizer, run.template, prompts, settings, progress, names, generator
    )
    return answers, cut, counting.tokens, time.perf_counter() - tic


def _score_answers(
    answers: list[str], cut: list[bool], items: list[Question], refusal: str | None, labels: dict[str, list[str]]
) -> list[Answer]:
    read = [split_thought(a) for a in answers]  # a thought that names the expected text is no hit
    answers = [answer for _, answer in read]
    rouge = rouge_l(answers, [it.expected for it in items])
    out = []
    for text, item, r, (thought, _), was_cut in zip(answers, items, rouge, read, cut):
        task = labels[item.kind] if item.is_label else None
        out.append(
            Answer(
                text,
                exact_match(text, item.expected) if item.whole_answer else None,
                contains(text, item.expected),
                r,
                refused(text, refusal) if refusal else None,
                predict_label(text, task) if task else None,
                correct(text, item.expected, task),
                thought,
                was_cut,
            )
        )
    return out


def _model_scores(
    loss: float | None,
    answers: list[str],
    items: list[Question],
    refusal: str | None,
    labels: dict[str, list[str]],
    tokens: int,
    cut: int,
    seconds: float,
) -> ModelScores:
    scores = ModelScores(
        loss,
        _perplexity(loss),
        None,
        generated_tokens=tokens,
        cut_answers=cut,
        generation_s=seconds,
        tokens_per_s=tokens / seconds if seconds > 0 else None,
    )
    if not items:
        return scores
    scores.overall = text_scores(answers, [it.expected for it in items], refusal, [it.whole_answer for it in items])
    for kind in dict.fromkeys(it.kind for it in items):
        group = [(a, it) for a, it in zip(answers, items) if it.kind == kind]
        scores.by_kind[kind] = text_scores(
            [a for a, _ in group], [it.expected for _, it in group], refusal, [it.whole_answer for _, it in group]
        )
        if kind in labels:
            predicted = [predict_label(a, labels[kind]) for a, _ in group]
            scores.label_tasks[kind] = label_scores([it.expected for _, it in group], predicted, labels[kind])
    return scores


def _perplexity(loss: float | None) -> float | None:
    if loss is None or loss > 700:  # exp overflows a double past ~709
        return None
    return math.exp(loss)


def _loss_on_key(q: Question) -> bool:
    """The loss is on the row's `expected` key string (a question row's), not on a whole answer: a training-format
    row that also gives `expected` keeps its own answer for the loss."""
    if q.whole_answer or q.example is None or q.example.messages is None:
        return False
    return q.example.messages[-1]["content"] == q.expected


def _loss_on(items: list[Question], on_prompt: bool = False) -> str:
    """What the loss tokens are: the file's whole answers, its `expected` key strings, plain text, or a mixture; with
    the prompts of its chats where the run put a loss on every token (data.train_on_prompt), as its eval loss did."""
    kinds = {"text" if q.prompt is None else "expected texts" if _loss_on_key(q) else "answers" for q in items}
    said = " and ".join(k for k in ("answers", "expected texts", "text") if k in kinds)
    chats = any(q.prompt is not None for q in items)
    return said + (" with their prompts (data.train_on_prompt)" if on_prompt and chats else "")


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
    base_precision: str = "trained",
    seed: int | None = None,
    spelling: Spelling = PYTHON,
) -> EvalResult:
    """Base and tuned model of `run_dir` (a path, or a run already opened with `open_run`) on `data_file`: loss,
    perplexity, answer scores, label tasks, speed. `refusal` defaults to the run's eval.refusal. With `save`, writes
    `out` (default RUN_DIR/eval.json); an existing file is an error unless `overwrite`. `base_precision`: see
    `infer.run.open_run`. Sampled answers draw from a generator seeded with `seed` (default: the run's train.seed,
    `answer_seed`), a fresh one for each model; eval.json records it. `spelling`: how errors name the arguments
    (these, or `tunelab eval`'s flags)."""
    loaded = run_dir if isinstance(run_dir, LoadedRun) else None
    run_dir = loaded.run_dir if loaded else Path(run_dir)
    stamp = run_stamp(run_dir)
    info = loaded.info if loaded else open_info(run_dir, spelling=spelling)
    target = Path(out) if out is not None else run_dir / EVAL_FILE
    refuse_missing_file(data_file, "eval", flags=spelling.flags)  # the error to fix first, not an existing eval.json
    if save:
        check_output_file(target, overwrite, run_dir, EVAL_FILE, (data_file,), suffix=".json", spelling=spelling)
    data = run_data_config(run_dir, info)
    cfg = saved_config(run_dir, DATA_SETTINGS)
    micro_batch = trained_value(info.extra, "train.micro_batch", cfg.train.micro_batch)
    dropped = DataReport()
    items = read_questions(data_file, data, need_expected=True, dropped=dropped)
    settings = answer_settings(settings, run_dir)
    seed = answer_seed(seed, run_dir, "--seed" if spelling.flags else "evaluate(): argument 'seed'")
    refusal = refusal if refusal is not None else info.refusal

    check_base_precision(base_precision)
    run = opened(loaded or run_dir, device, base_precision, spelling)
    report = DataReport(max_length=data.max_length)
    # texts are cut into blocks as training cut them (a packed run: each document on its own, not run together);
    # the rows are then batched unpacked, which attends within each row as packing does
    cut = dataclasses.replace(data, packing=cfg.data.packing)
    rendered = render_examples([it.example for it in items], run.tokenizer, run.template, cut, report, held=True)
    batches = [
        {k: v.to(run.device) if torch.is_tensor(v) else v for k, v in b.items()}
        for b in make_batches(rendered, micro_batch, run.tokenizer.pad_token_id, shuffle=False, seed=0, epoch=0)
    ]
    asked = [it for it in items if it.prompt is not None]
    prompts, names = [it.prompt for it in asked], [it.where for it in asked]
    fit_prompts(run.model, run.tokenizer, run.template, prompts, settings, names)  # too long: refused before any work
    if asked:  # the base model's is said once it is loaded
        say_config_notice(run.model, whose="the tuned model's")
    run.check_base()  # a full run's base, loaded after the tuned answers: gone or changed is said before them
    labels = task_labels(asked)

    def loss(model, which: str) -> float | None:
        return (
            evaluate(model, tqdm(batches, desc=f"loss, {which} model", unit="batch", leave=False)) if batches else None
        )

    tuned_loss = loss(run.model, "tuned")
    with answer_progress(len(prompts), "answers, tuned model") as step:
        tuned_answers, tuned_cut, tuned_tokens, tuned_s = _timed_answers(
            run.model, run, prompts, settings, step, names, seed
        )
    with run.base_model() as base_model:
        if asked:
            say(base_config_notice(base_model, run.model))
        base_loss = loss(base_model, "base")
        with answer_progress(len(prompts), "answers, base model") as step:
            base_answers, base_cut, base_tokens, base_s = _timed_answers(
                base_model, run, prompts, settings, step, names, seed
            )

    base_scored = _score_answers(base_answers, base_cut, asked, refusal, labels) if asked else []
    tuned_scored = _score_answers(tuned_answers, tuned_cut, asked, refusal, labels) if asked else []
    base_answers, tuned_answers = [a.text for a in base_scored], [a.text for a in tuned_scored]
    rows = [
        EvalRow(it.text, it.expected, it.kind, "label" if it.is_label else "text", it.where, b, t)
        for it, b, t in zip(asked, base_scored, tuned_scored)
    ]
    result = EvalResult(
        run_dir=str(run_dir),
        data_file=str(data_file),
        base_model=run.base_info.base_model,
        method=info.method,
        refusal=refusal,
        settings=asdict(settings),
        device=str(run.device),
        rows_read=len(items),
        loss_rows=len(rendered),
        loss_tokens=sum(loss_tokens(b) for b in batches),
        loss_skipped={reason: {"count": s.count, "locations": s.locations} for reason, s in report.skips.items()},
        transform_dropped=dropped_counts(dropped),
        unread=asdict(report.unread) if report.unread.rows else {},
        loss_on=_loss_on(items, data.train_on_prompt),
        **training_figure(info),
        base_weights="nf4" if run.quantized_base else str(run.dtype).removeprefix("torch."),
        base=_model_scores(base_loss, base_answers, asked, refusal, labels, base_tokens, sum(base_cut), base_s),
        tuned=_model_scores(tuned_loss, tuned_answers, asked, refusal, labels, tuned_tokens, sum(tuned_cut), tuned_s),
        rows=rows,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        seed=seed,
    )
    if save:
        check_same_run(run_dir, stamp, "eval")
        result.save(target, overwrite=overwrite)
    return result


def saved_line(run_dir: str | Path, out: str | Path | None) -> str:
    """Where `tunelab eval` wrote its results, said after the table as `compare` says where its answers went."""
    if out is not None:
        return f"saved to {out}"
    return f"saved to {Path(run_dir) / EVAL_FILE} ('tunelab report {run_dir}' shows it with the run)"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_eval(result: EvalResult, show_answers: bool = False, spelling: Spelling = PYTHON) -> str:
    """The numbers as a small text table, base beside tuned, with what they are taken on; then the answers when
    asked for."""
    b, t = result.base, result.tuned
    lines = [
        f"eval of {result.run_dir} on {result.data_file}: {counted(result.rows_read, 'row')}, {len(result.rows)} answered, "
        f"loss on {counted(result.loss_rows, 'row')} ({result.loss_tokens:,} tokens of {result.loss_on})"
    ]
    table = [
        (f"loss on {result.loss_on}", _num(b.eval_loss), _num(t.eval_loss)),
        ("perplexity", _num(b.perplexity, 2), _num(t.perplexity, 2)),
    ]
    scopes = [("", b.overall, t.overall)] + (
        [(f"[{k}] ", b.by_kind[k], t.by_kind[k]) for k in t.by_kind] if len(t.by_kind) > 1 else []
    )
    for prefix, bs, ts in scopes:
        if bs is None or ts is None:
            continue
        if ts.exact_match is not None:
            table.append((f"{prefix}exact match", _pct(bs.exact_match), _pct(ts.exact_match)))
        table += [
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
    if result.transform_dropped:
        lines.append(dropped_line(result.transform_dropped))
    if result.unread:
        lines.append(Unread.saved(result.unread).line())
    cut = cut_line(b.cut_answers, t.cut_answers, len(result.rows), result.settings.get("max_new_tokens"), spelling)
    if cut:
        lines.append(cut)
    sampled = sampled_line(result.settings, result.seed, spelling)
    if sampled:
        lines.append(sampled)
    lines += _notes(result)
    if show_answers and result.rows:
        lines += ["", _format_answers(result.rows)]
    return "\n".join(lines)


def training_figure(info: RunInfo) -> dict[str, float | None]:
    """The run's own eval figure as EvalResult records it: a grpo run's eval_loss is its mean eval reward negated (for
    keep_best), recorded as the reward; another run's is its eval loss."""
    if info.task == "grpo":
        return {"training_eval_reward": -info.eval_loss if info.eval_loss is not None else None}
    return {"training_eval_loss": info.eval_loss}


def _notes(result: EvalResult) -> list[str]:
    """What the loss and the missing exact match mean, where they could mislead."""
    notes = []
    trained = f" (run.json: {result.training_eval_loss:.4f})" if result.training_eval_loss is not None else ""
    if "expected texts" in result.loss_on:
        notes.append(
            "  loss on expected texts: the file's `expected` strings taken as whole answers. Where they are key "
            "strings a correct answer contains ('1997' for 'We were founded in 1997.') rather than the answers the "
            f"run learned to give, this loss is far above the training eval loss{trained} without the model being "
            "worse: compare base and tuned here, not this with training."
        )
    elif trained and result.loss_on:
        notes.append(f"  training eval loss, on the run's own held-out split{trained}")
    if result.training_eval_reward is not None:
        notes.append(
            "  training eval reward, the mean reward of greedy answers to the run's own eval prompts (run.json: "
            f"{result.training_eval_reward:.4f})"
        )
    overall = result.tuned.overall
    if overall is not None and overall.exact_match is None:
        notes.append(
            "  exact match: not scored, as every expected text here is a string a correct answer contains (an "
            "`expected` column), not a whole answer; it is scored for training-format rows and labels."
        )
    return notes


def _format_answers(rows: list[EvalRow]) -> str:
    mark = {True: "✓", False: "✗"}
    lines = []
    for i, r in enumerate(rows, 1):
        lines.append(f"[{i}] {r.question}   (expected: {r.expected}; {r.location})")
        for name, answer in (("base ", r.base), ("tuned", r.tuned)):
            if answer.thought is not None:
                lines.append(f"  {name}   (thought: {answer.thought})")
            lines.append(
                f"  {name} {mark[answer.correct]} {answer.text}" + (" [cut at max_new_tokens]" if answer.cut else "")
            )
    return "\n".join(lines)
