"""`tunelab eval` for a run with a head (classify, reward): scores on a labelled file, saved as eval.json, and the
report's section for them.

Rows (pairs) that training skips as too long are skipped alike and counted with training's reason: with the run's
data.overlong=drop, those longer than its max_length; with truncate, those whose start (BOS, system prompt, template
header) fills it; and pairs whose two sides are the same tokens once rendered (and cut), which reward training
skips. The others are cut as training cuts them. So a file scored here and the same rows held out in training give
the same accuracy.

classify  accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix of the tuned classifier, beside
          the majority-class baseline (always the most frequent training label); the mean cross-entropy. A label
          written another way than the run's (a CSV's 1.0 for 1, 'Spam' for 'spam', as training's label_key tells
          them apart) is read as the run's, counted and said. Rows with a label the run never trained on are skipped
          and counted with training's reason, as its eval split skips them (the head has no output for them), so
          both give one accuracy on one file.
reward    pairwise accuracy (r_chosen > r_rejected), mean margin and mean -log sigmoid(margin) over the file's
          preference pairs, beside the untrained head: the base model with the head the run started from (rebuilt
          from the run's seed), which ranks pairs about as well as a coin. A chat side's thought
          (`<think>...</think>` before its answer) is not scored, as training did not score it; eval.json keeps it.
"""

from __future__ import annotations

import functools
import html
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F

from tunelab.atomic import write_json
from tunelab.config.flags import PYTHON, Spelling
from tunelab.data.render import note_unreadable, pair_text, row_text
from tunelab.data.report import DataReport, Unread, location
from tunelab.data.sources import refuse_missing_file
from tunelab.errors import ConfigError, DataError, article, counted
from tunelab.eval.metrics import UNDEFINED_RULE, label_scores
from tunelab.eval.report_inputs import eval_hint
from tunelab.infer.predict import HeadRun, head_outputs, open_head_run, refuse_other_input_kind
from tunelab.peft.lora import adapters_disabled
from tunelab.places import check_output_file
from tunelab.run_stamp import check_same_run, run_stamp
from tunelab.tasks.classify import UNSEEN, label_key, read_labelled
from tunelab.tasks.head import SequenceClassifier, new_score
from tunelab.tasks.head_data import thought_opener
from tunelab.tasks.head_run import training_skips
from tunelab.tasks.reward import read_pairs
from tunelab.training.build import check_trained_base, trained_base

EVAL_FILE = "eval.json"
UNSEEN_RULE = (
    "a row whose label the run never trained on is skipped, as training's eval skips it: the head has no output for "
    "that label, so both give one accuracy on one file"
)
SHOWN_ROWS = 200  # rows kept in eval.json for the report (the errors first)


@dataclass
class HeadEvalResult:
    task: str
    run_dir: str
    data_file: str
    base_model: str
    method: str
    device: str
    rows_read: int  # rows (classify) or pairs (reward) scored
    truncated: int  # inputs cut to the run's max_length (their last tokens kept)
    tuned: dict  # classify: LabelScores, eval_loss (+ eval_loss_unweighted); reward: accuracy, margin, loss, n
    baseline: dict  # the same numbers for the baseline
    baseline_name: str
    skipped: dict[str, dict] = field(default_factory=dict)  # reason -> {count, locations}
    respelt: dict[str, dict] = field(default_factory=dict)  # classify: a label as the file writes it -> {label, rows}
    rows: list[dict] = field(default_factory=list)  # per row, the errors first, at most SHOWN_ROWS
    created: str = ""
    step: int | None = None  # the training step of the weights scored
    checkpoint: str = ""  # the checkpoint scored, of a run that did not finish; empty: the run's result
    unread: dict = field(default_factory=dict)  # the rows scored holding characters the tokenizer drops, as
    # data_report.json records them (data/report.py Unread); {} where none does

    def to_dict(self) -> dict:
        return asdict(self)


def _skips(report: DataReport) -> dict[str, dict]:
    return {reason: {"count": s.count, "locations": s.locations} for reason, s in report.skips.items()}


def _skipped(report: DataReport) -> str:
    """What the rows of a file that gave nothing to evaluate were skipped for, in words."""
    reasons = "; ".join(f"{s.count} {reason} (e.g. {s.locations[0]})" for reason, s in report.skips.items())
    read = f"{counted(report.total_read, 'row')} read"
    return f"{read}, skipped: {reasons}" if reasons else read


def _read(run: HeadRun, data_file: str, read) -> tuple[list, list[str], DataReport]:
    """The items of `data_file` as the task's reader `read` gives them (read_labelled, read_pairs), read leniently
    with the run's data.fields, system prompt, .csv separator and data.transform, as training read its eval file;
    their file:line locations; the report of what was skipped (the rows data.transform dropped among them)."""
    d, report = run.data, DataReport()
    items = read(
        [data_file], d.fields, d.system_prompt, report, lenient=True, delimiter=d.delimiter, transform=d.transform
    )
    return items, [location(item.path, item.line) for item in items], report


def unread_inputs(run: HeadRun, wheres: list[str], texts: list[str]) -> dict:
    """The inputs at `wheres` whose `texts` hold characters the run's tokenizer drops, as data_report.json records
    them (`note_unreadable`): scored without them; {} where none does."""
    report = DataReport()
    note_unreadable(wheres, texts, run.tokenizer, report, "scored", held=len(wheres))
    return asdict(report.unread) if report.unread.rows else {}


def _classify(run: HeadRun, data_file: str, batch_size: int) -> dict:
    rows, wheres, report = _read(run, data_file, functools.partial(read_labelled, evaluating=True))
    if rows:
        refuse_other_input_kind(run, [r.input for r in rows], wheres)
        ours = {label_key(label): label for label in run.labels}
        skips = {  # training's order: a label it never trained on first, then the length
            i: f"{UNSEEN} ({r.label!r})"
            for i, r in enumerate(rows)
            if r.label not in run.labels and label_key(r.label) not in ours
        }
        kept = [i for i in range(len(rows)) if i not in skips]
        lengths = training_skips(run, [rows[i].input for i in kept], [wheres[i] for i in kept])
        skips |= {kept[j]: reason for j, reason in lengths.items()}
        for i in sorted(skips):
            report.skip(skips[i], rows[i].path, rows[i].line)
        rows, wheres = (
            [r for i, r in enumerate(rows) if i not in skips],
            [w for i, w in enumerate(wheres) if i not in skips],
        )
    if not rows:
        raise DataError(f"{data_file}: no rows to evaluate ({_skipped(report)}).")
    logits, cut = head_outputs(run.model, run, [r.input for r in rows], batch_size, wheres, "scores, tuned model")
    written = [r.label for r in rows]
    expected = [label if label in run.labels else ours[label_key(label)] for label in written]
    respelt = Counter((w, e) for w, e in zip(written, expected) if w != e)
    predicted = [run.labels[i] for i in logits.argmax(dim=-1).tolist()]
    index = {label: i for i, label in enumerate(run.labels)}
    targets = torch.tensor([index[label] for label in expected])
    losses = _losses(logits, targets, expected, run.info.extra.get("class_weights"))
    labels = run.labels
    counts = run.info.extra.get("label_counts") or {}
    majority = max(run.labels, key=lambda label: counts.get(label, 0))
    probs = logits.softmax(dim=-1)
    table = [
        {"where": w, "input": _shown(r.input), "expected": e, "predicted": p, "p": round(float(pr.max()), 4)}
        for w, r, e, p, pr in zip(wheres, rows, expected, predicted, probs)
    ]
    table.sort(key=lambda t: t["expected"] == t["predicted"])  # errors first, file order otherwise
    return {
        "rows_read": len(rows),
        "truncated": cut,
        "tuned": label_scores(expected, predicted, labels).to_dict() | losses,
        "baseline": label_scores(expected, [majority] * len(expected), labels).to_dict(),
        "baseline_name": _majority_name(majority, counts),
        "skipped": _skips(report),
        "respelt": {w: {"label": e, "rows": n} for (w, e), n in respelt.items()},
        "rows": table[:SHOWN_ROWS],
        "unread": unread_inputs(run, wheres, [row_text(r.input.text, r.input.messages) for r in rows]),
    }


def _majority_name(majority: str, counts: dict) -> str:
    """The baseline's name: the most frequent training label, and where several share its count, that they tie (the
    first by name is the baseline; naming it alone read as the most frequent of all)."""
    top = counts.get(majority, 0)
    tie = sum(1 for n in counts.values() if n == top)
    if not counts or tie < 2:
        return f"majority class ({majority})"
    return f"majority class ({majority}, first by name of {tie} tied at {top} rows)"


def _losses(logits: torch.Tensor, targets: torch.Tensor, expected: list[str], weights: dict | None) -> dict:
    """The eval loss as training logs it: the mean over rows of each row's cross-entropy times its class weight
    (`tasks.classify.evaluate`); with class or label weights also the plain mean cross-entropy, under its own name."""
    ce = F.cross_entropy(logits, targets, reduction="none")  # (N,)
    if not weights:
        return {"eval_loss": ce.mean().item()}
    w = torch.tensor([float(weights.get(label, 1.0)) for label in expected], dtype=ce.dtype)
    return {"eval_loss": (ce * w).sum().item() / len(expected), "eval_loss_unweighted": ce.mean().item()}


def _loss_rows(tuned: dict) -> list[tuple[str, str]]:
    """(name, value) of the classify loss rows: the class-weighted loss named so, beside the plain one, where the
    run weighted its classes."""
    if "eval_loss_unweighted" not in tuned:
        return [("eval loss", _num(tuned.get("eval_loss")))]
    return [
        ("eval loss (class-weighted)", _num(tuned["eval_loss"])),
        ("eval loss (unweighted)", _num(tuned["eval_loss_unweighted"])),
    ]


def _shown(item) -> str:
    if item.messages is None:
        return item.text or ""
    return next(m["content"] for m in reversed(item.messages) if m["role"] != "system")


@contextmanager
def untrained_model(run: HeadRun):
    """The model the run started from: the base body (adapters off, or the base weights loaded) and the head drawn
    from the run's seed, as a SequenceClassifier."""
    model = run.model
    config = model.body.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    score = new_score(
        model.score.in_features, len(run.labels), run.seed, getattr(config, "initializer_range", 0.02), run.device
    )
    if run.info.is_adapter:
        with adapters_disabled(model):
            yield SequenceClassifier(model.body, score, model.prefix).eval()
        return
    dtype = next(model.parameters()).dtype
    lm = trained_base(run.info, dtype, run.device, quantize=False)  # the untrained rows training repaired, repaired
    yield SequenceClassifier(lm.base_model, score, lm.base_model_prefix).eval()


def _pair_scores(margins: torch.Tensor) -> dict:
    n = margins.numel()
    return {
        "n": n,
        "accuracy": float((margins > 0).float().mean()) if n else None,
        "margin": float(margins.mean()) if n else None,
        "loss": float(F.softplus(-margins).mean()) if n else None,
    }


def _reward(run: HeadRun, data_file: str, batch_size: int, spelling: Spelling = PYTHON) -> dict:
    opens = thought_opener(run.tokenizer, run.template)  # a thought the template opens is read apart as in training
    pairs, wheres, report = _read(
        run,
        data_file,
        functools.partial(read_pairs, evaluating=True, opens=opens, spelling=spelling, run_dir=run.run_dir),
    )
    if pairs:
        sides = [p.chosen for p in pairs] + [p.rejected for p in pairs]
        refuse_other_input_kind(run, sides, wheres + wheres, pairs=True)
        skips = training_skips(run, sides, wheres + wheres, pairs=True)
        for i, reason in skips.items():
            report.skip(reason, pairs[i].path, pairs[i].line)
        pairs, wheres = (
            [p for i, p in enumerate(pairs) if i not in skips],
            [w for i, w in enumerate(wheres) if i not in skips],
        )
    if not pairs:
        raise DataError(f"{data_file}: no preference pairs to evaluate ({_skipped(report)}).")
    inputs = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    n = len(pairs)
    rewards, cut = head_outputs(run.model, run, inputs, batch_size, wheres + wheres, "scores, tuned model")
    with untrained_model(run) as untrained:
        base, _ = head_outputs(untrained, run, inputs, batch_size, wheres + wheres, "scores, untrained head")
    margins, base_margins = rewards[:n, 0] - rewards[n:, 0], base[:n, 0] - base[n:, 0]
    table = [
        {
            "where": w,
            "chosen": _shown(p.chosen),
            "rejected": _shown(p.rejected),
            "chosen_thought": p.thoughts[0],  # a reasoning model's thought, not scored (None: none)
            "rejected_thought": p.thoughts[1],
            "chosen_reward": float(rewards[i, 0]),
            "rejected_reward": float(rewards[n + i, 0]),
            "margin": float(margins[i]),
            "untrained_margin": float(base_margins[i]),
        }
        for i, (w, p) in enumerate(zip(wheres, pairs))
    ]
    table.sort(key=lambda t: t["margin"] > 0)
    return {
        "rows_read": n,
        "truncated": cut,
        "tuned": _pair_scores(margins),
        "baseline": _pair_scores(base_margins),
        "baseline_name": "untrained head",
        "skipped": _skips(report),
        "rows": table[:SHOWN_ROWS],
        "unread": unread_inputs(
            run,
            wheres,
            [
                pair_text(row_text(p.chosen.text, p.chosen.messages), row_text(p.rejected.text, p.rejected.messages))
                for p in pairs
            ],
        ),
    }


def refuse_text_options(
    run_dir,
    task: str,
    settings,
    refusal,
    base_precision: str,
    show_answers: bool,
    spelling: Spelling = PYTHON,
    seed: int | None = None,
) -> None:
    """ConfigError naming the options of `tunelab eval` that only a run generating text reads, when given for a head
    run: they were dropped without a word (--base-precision 16bit scored the NF4 base all the same). `spelling`: named
    as flags, or as the Python API's arguments."""
    given = [  # (flag, the Python API's argument, given)
        ("--max-new-tokens", "settings.max_new_tokens", settings is not None and settings.max_new_tokens is not None),
        ("--temperature", "settings.temperature", settings is not None and settings.temperature != 0),
        ("--top-p", "settings.top_p", settings is not None and settings.top_p != 1),
        (
            "--repetition-penalty",
            "settings.repetition_penalty",
            settings is not None and settings.repetition_penalty != 1,
        ),
        ("--refusal", "refusal=", refusal is not None),
        ("--base-precision", "base_precision=", base_precision != "trained"),
        ("--show-answers", "show_answers=", show_answers),
        ("--seed", "seed=", seed is not None),
    ]
    unused = [flag if spelling.flags else argument for flag, argument, is_given in given if is_given]
    if unused:
        one = len(unused) == 1
        raise ConfigError(
            f"{run_dir}: {article(task)} run is evaluated by its head's outputs and generates no text, so "
            f"{', '.join(unused)} {'does' if one else 'do'} not apply; drop {'it' if one else 'them'}."
            + (" eval.json keeps the rows it scored, the errors first." if show_answers else "")
        )


def evaluate_head_run(
    run: str | Path | HeadRun,
    data_file: str | Path,
    device: str = "auto",
    *,
    batch_size: int = 16,
    save: bool = True,
    out: str | Path | None = None,
    overwrite: bool = False,
    spelling: Spelling = PYTHON,
) -> HeadEvalResult:
    """Scores of a classify or reward run (its folder, or the run opened already) on `data_file`; with `save`, written
    to `out` (default RUN_DIR/eval.json)."""
    opened = run if isinstance(run, HeadRun) else None
    run_dir = Path(opened.run_dir if opened else run)
    stamp = run_stamp(run_dir)
    target = Path(out) if out is not None else run_dir / EVAL_FILE
    refuse_missing_file(data_file, "eval", flags=spelling.flags)
    if save:
        check_output_file(target, overwrite, run_dir, EVAL_FILE, (data_file,), suffix=".json", spelling=spelling)
    run = opened or open_head_run(run_dir, device, from_checkpoint=True, spelling=spelling)
    if run.info.task == "reward" and not run.info.is_adapter:  # the untrained-head baseline loads the base last
        check_trained_base(run.info)
    if run.info.task == "classify":
        parts = _classify(run, str(data_file), batch_size)
    else:  # a row of one answer is told of predict as the caller names it
        parts = _reward(run, str(data_file), batch_size, spelling)
    result = HeadEvalResult(
        task=run.info.task,
        run_dir=str(run_dir),
        data_file=str(data_file),
        base_model=run.info.base_model,
        method=run.info.method,
        device=str(run.device),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        step=run.step,
        checkpoint=str(run.checkpoint) if run.checkpoint else "",
        **parts,
    )
    if save:
        check_same_run(run_dir, stamp, "eval")  # the scores are of the model opened, not of what the run holds now
        write_json(target, result.to_dict())
    return result


def _count(n, noun: str) -> str:
    """`counted`, or what an eval.json edited by hand holds beside the plural."""
    return counted(n, noun) if isinstance(n, int) else f"{n} {noun}s"


def _truncated(n) -> str:
    """The inputs cut to the run's max_length, in words."""
    one = n == 1
    return (
        f"{_count(n, 'input')} {'was' if one else 'were'} longer than the run's max_length: "
        f"{'its' if one else 'their'} last tokens were kept"
    )


def _defined(value) -> str:
    """A per-class precision, recall or F1; None (undefined: no answer predicted the class, or no row has it) is n/a."""
    return "n/a" if value is None else f"{value:.3f}"


def _any_undefined(classes) -> bool:
    """Whether a per-class table shows n/a in some cell: only then does it need the rule that explains n/a."""
    return any(k in c and c[k] is None for c in classes for k in ("precision", "recall", "f1"))


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _scored(n, task: str) -> str:
    """'1 row scored', '12 preference pairs scored': the rows skipped are listed after it, not among them."""
    return f"{_count(n, 'row' if task == 'classify' else 'preference pair')} scored"


def format_head_eval(r: HeadEvalResult) -> str:
    """The scores as text tables for the terminal."""
    weights = weights_scored(asdict(r))
    lines = [
        f"eval of {r.run_dir} ({r.task}) on {r.data_file}: {_scored(r.rows_read, r.task)}"
        + (f", by {weights}" if weights else "")
    ]
    if r.truncated:
        lines.append(f"  {_truncated(r.truncated)}")
    for reason, s in r.skipped.items():
        lines.append(f"  skipped {s['count']}: {reason} ({', '.join(s['locations'])})")
    if any(reason.startswith(UNSEEN) for reason in r.skipped):
        lines.append(f"  ({UNSEEN_RULE})")
    if r.unread:
        lines.append(Unread.saved(r.unread).line())
    t, b = r.tuned, r.baseline
    name = r.baseline_name
    width = max(len(name), 10)
    if r.task == "reward":
        table = [
            ("pairwise accuracy", _pct(b["accuracy"]), _pct(t["accuracy"])),
            ("mean margin", _num(b["margin"]), _num(t["margin"])),
            ("loss (-log sigmoid)", _num(b["loss"]), _num(t["loss"])),
        ]
    else:
        table = [
            ("accuracy", _pct(b["accuracy"]), _pct(t["accuracy"])),
            ("macro F1", _num(b["macro_f1"], 3), _num(t["macro_f1"], 3)),
            *((name, "-", value) for name, value in _loss_rows(t)),
        ]
    first = max(20, *(len(k) for k, _, _ in table))
    lines.append(f"  {'':<{first}}  {name:>{width}}  {'tuned':>10}")
    lines += [f"  {k:<{first}}  {bv:>{width}}  {tv:>10}" for k, bv, tv in table]
    if r.task == "classify":
        lines += ["", "  per class (tuned)        precision   recall       F1  support  predicted"]
        for label, c in t["per_class"].items():
            p, rc, f1 = (_defined(c[k]) for k in ("precision", "recall", "f1"))
            lines.append(f"  {label[:24]:<24} {p:>9} {rc:>8} {f1:>8} {c['support']:>8} {c['predicted']:>10}")
        if _any_undefined(t["per_class"].values()):
            lines.append(f"  ({UNDEFINED_RULE})")
        lines += ["", "  confusion (rows: expected, columns: predicted)", _confusion_text(t["labels"], t["confusion"])]
        if r.respelt:
            shown = ", ".join(f"{w} as {v['label']} ({v['rows']})" for w, v in r.respelt.items())
            lines.append(
                f"  labels written another way than the run's (case, spacing, 1.0 for 1), read as its: {shown}"
            )
    return "\n".join(lines)


def _confusion_text(labels: list[str], confusion: dict[str, dict[str, int]]) -> str:
    short = [label[:10] for label in labels]
    width = max(6, *(len(s) for s in short))
    head = " " * (width + 2) + " ".join(f"{s:>{width}}" for s in short)
    rows = [
        f"  {s:<{width}}" + " ".join(f"{confusion.get(label, {}).get(other, 0):>{width}}" for other in labels)
        for s, label in zip(short, labels)
    ]
    return "\n".join(["  " + head] + rows)


# ---------------------------------------------------------------- the report's section (eval/report.py calls it)


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _notes_html(data: dict) -> str:
    """What `format_head_eval` says beside the scores: inputs cut, rows skipped (with where), inputs holding
    characters the tokenizer drops, labels read another way, labels the run never trained on."""
    notes = []
    if data.get("truncated"):
        notes.append(_e(_truncated(data["truncated"])))
    for reason, skip in (data.get("skipped") or {}).items():
        notes.append(f"skipped {_e(skip.get('count'))}: {_e(reason)} ({_e(', '.join(skip.get('locations') or []))})")
    if (data.get("unread") or {}).get("rows"):
        notes.append(_e(Unread.saved(data["unread"]).line().strip()))
    if data.get("respelt"):
        shown = ", ".join(f"{w} as {v['label']} ({v['rows']})" for w, v in data["respelt"].items())
        notes.append(f"labels written another way than the run's (case, spacing, 1.0 for 1), read as its: {_e(shown)}")
    if any(str(reason).startswith(UNSEEN) for reason in data.get("skipped") or {}):
        notes.append(_e(UNSEEN_RULE))
    if data.get("unseen"):  # an eval.json of an earlier tunelab, which scored these rows as errors
        shown = ", ".join(f"{label} ({n})" for label, n in data["unseen"].items())
        notes.append(f"labels the run never trained on, scored as errors (not in the matrix below): {_e(shown)}")
    return f"<ul>{''.join(f'<li>{n}</li>' for n in notes)}</ul>" if notes else ""


def weights_scored(data: dict) -> str:
    """Which weights an eval.json (a dict) scored, in words: a checkpoint of a run that had not finished, with its
    step, or the run's result at its step; empty for an eval.json that says neither (written before they were)."""
    step, checkpoint = data.get("step"), data.get("checkpoint")
    at = f"step {step}" if isinstance(step, int) and not isinstance(step, bool) else ""
    if isinstance(checkpoint, str) and checkpoint:
        return f"the checkpoint{' of ' + at if at else ''} ({checkpoint}; the run had not finished)"
    return f"the run's result ({at})" if at else ""


def head_eval_html(data: dict | None, problem: str | None = None, run_dir: Path | None = None) -> str:
    """The report's evaluation section for a head run's eval.json (a dict as `HeadEvalResult.to_dict` wrote it);
    where there is none, how to write it for `run_dir`."""
    if not isinstance(data, dict) or data.get("task") not in ("classify", "reward"):
        why = problem or "eval.json holds no scores of a classify or reward run"
        why += f"; {eval_hint(run_dir)}" if run_dir is not None else ""
        return f'<p class="missing">No evaluation: {_e(why)}.</p>'
    t, b, name = data["tuned"], data["baseline"], data.get("baseline_name", "baseline")
    head = (
        f"<p>{_e(_scored(data.get('rows_read'), data['task']))} of <code>{_e(data.get('data_file'))}</code>"
        + (f", by {_e(weights)}" if (weights := weights_scored(data)) else "")
        + ".</p>"
    )

    def row(label: str, bv: str, tv: str) -> str:
        return f'<tr><th>{_e(label)}</th><td class="num">{_e(bv)}</td><td class="num">{_e(tv)}</td></tr>'

    if data["task"] == "reward":
        rows = [
            row("pairwise accuracy", _pct(b["accuracy"]), _pct(t["accuracy"])),
            row("mean margin", _num(b["margin"]), _num(t["margin"])),
            row("loss (-log sigmoid margin)", _num(b["loss"]), _num(t["loss"])),
        ]
    else:
        rows = [
            row("accuracy", _pct(b["accuracy"]), _pct(t["accuracy"])),
            row("macro F1", _num(b["macro_f1"], 3), _num(t["macro_f1"], 3)),
            *(row(name, "-", value) for name, value in _loss_rows(t)),
        ]
    parts = [
        head,
        f"<table><thead><tr><th></th><th>{_e(name)}</th><th>tuned</th></tr></thead><tbody>{''.join(rows)}</tbody></table>",
        _notes_html(data),
    ]
    if data["task"] == "classify":
        per = "".join(
            f"<tr><th>{_e(label)}</th>"
            + "".join(f'<td class="num">{_defined(c[k])}</td>' for k in ("precision", "recall", "f1"))
            + f'<td class="num">{c["support"]}</td><td class="num">{c["predicted"]}</td></tr>'
            for label, c in t["per_class"].items()
        )
        parts.append(
            "<h3>Per class (tuned)</h3><table><thead><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th>"
            f"<th>support</th><th>predicted</th></tr></thead><tbody>{per}</tbody></table>"
            + (f'<p class="sub">{_e(UNDEFINED_RULE)}.</p>' if _any_undefined(t["per_class"].values()) else "")
        )
        labels, confusion = t["labels"], t["confusion"]
        cells = "".join(
            f"<tr><th>{_e(a)}</th>"
            + "".join(f'<td class="num">{confusion.get(a, {}).get(p, 0) or ""}</td>' for p in labels)
            + "</tr>"
            for a in labels
        )
        parts.append(
            "<h3>Confusion matrix (rows: expected, columns: predicted)</h3><table><thead><tr><th></th>"
            + "".join(f"<th>{_e(p)}</th>" for p in labels)
            + f"</tr></thead><tbody>{cells}</tbody></table>"
        )
        errors = [r for r in data.get("rows", []) if r["expected"] != r["predicted"]]
        if errors:
            body = "".join(
                f'<tr><td>{_e(r["input"])}<span class="loc">{_e(r["where"])}</span></td><td>{_e(r["expected"])}</td>'
                f'<td>{_e(r["predicted"])}</td><td class="num">{r["p"]:.3f}</td></tr>'
                for r in errors
            )
            parts.append(
                f'<h3>Misclassified rows ({len(errors)} shown)</h3><table class="answers"><thead><tr><th>input</th>'
                f"<th>expected</th><th>predicted</th><th>p</th></tr></thead><tbody>{body}</tbody></table>"
            )
    else:
        wrong = [r for r in data.get("rows", []) if r["margin"] <= 0]
        if wrong:
            body = "".join(
                f'<tr><td>{_e(r["chosen"])}<span class="loc">{_e(r["where"])}</span></td><td>{_e(r["rejected"])}</td>'
                f'<td class="num">{r["margin"]:+.3f}</td></tr>'
                for r in wrong
            )
            parts.append(
                f'<h3>Pairs ranked the wrong way ({len(wrong)} shown)</h3><table class="answers"><thead><tr>'
                f"<th>chosen</th><th>rejected</th><th>margin</th></tr></thead><tbody>{body}</tbody></table>"
            )
    return "".join(parts)
