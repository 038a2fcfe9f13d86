"""Base model beside tuned model on the same questions, with scores where expected answers are given.

Questions come from a question file (`eval.questions`: see eval/questions.py for the rows it takes) or are given
directly. Each answer gets the verdict `eval.metrics.correct` gives it, as in `tunelab eval`: it contains the expected
text as a whole phrase, or, for a label task, it names the expected label (among the file's labels). Scores are given
per kind (e.g. fact / off_topic), so "answers the facts" and "refuses the rest" read separately.

The result is saved as compare.json in the run directory, which the report reads. The comparison after training
writes it first; `tunelab compare` refuses to replace it unless asked (`overwrite`), like every other command. The
terminal gets the scores; the answers go to the file (or to the terminal too, with `show_answers`).
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunelab.atomic import check_can_write, write_json
from tunelab.config import RunConfig
from tunelab.config.flags import CLI, PYTHON, Spelling
from tunelab.data.reasoning import split_thought
from tunelab.data.render import note_unreadable, row_text
from tunelab.data.report import DataReport, Unread
from tunelab.errors import DataError, Interrupted, RunDirError
from tunelab.eval.metrics import correct, refused
from tunelab.eval.questions import (
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
    generate_answers,
    longer_answers,
    samples,
    say,
    say_config_notice,
)
from tunelab.infer.run import LoadedRun, open_run

COMPARE_FILE = "compare.json"


@dataclass
class Row:
    question: str
    expected: str | None
    kind: str
    base: str
    tuned: str
    base_ok: bool | None = None
    tuned_ok: bool | None = None
    # a reasoning model's <think> thought before the answer, which is scored without it; None: none
    base_thought: str | None = None
    tuned_thought: str | None = None
    # the answer ran to max_new_tokens (or the room the context left) without ending its turn: it may stop mid-way
    base_cut: bool = False
    tuned_cut: bool = False


@dataclass
class Comparison:
    rows: list[Row]
    scores: dict[str, dict] = field(default_factory=dict)
    """kind -> {n, base, tuned[, base_refused, tuned_refused]}: shares of correct (and refusing) answers"""
    settings: dict = field(default_factory=dict)  # the GenerationSettings the answers were generated with
    base: str = ""  # what the adapter sat on: "nf4" for a QLoRA run evaluated as trained, else the weights' dtype
    transform_dropped: dict[str, dict] = field(default_factory=dict)
    """reason -> {count, locations}: question rows the run's data.transform dropped (as eval.json counts them)"""
    seed: int | None = None
    """The seed each model's sampled answers drew from (`answer_seed`); greedy answers draw nothing"""
    unread: dict = field(default_factory=dict)
    """The questions holding characters the tokenizer drops, as data_report.json records them (data/report.py
    Unread): answered without them; {} where none does"""

    def to_dict(self) -> dict:
        return {
            "rows": [asdict(r) for r in self.rows],
            "scores": self.scores,
            "settings": self.settings,
            "seed": self.seed,
            "base": self.base,
            "transform_dropped": self.transform_dropped,
            "unread": self.unread,
        }


def compare_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / COMPARE_FILE


def check_writable(path: Path, overwrite: bool, spelling: Spelling = PYTHON) -> None:
    """Refuse to replace an earlier comparison (the report reads it) unless asked; say how to keep both. WriteFailed
    when the run's folder cannot be written (read-only), before the answers rather than after them. A folder (or a
    device or pipe) at the path is refused even with overwrite: the result is a file, and --overwrite replaces files.
    `spelling`: --overwrite and --no-save, or overwrite=True and save=False in Python."""
    unsaved = "--no-save" if spelling.flags else "save=False"
    if path.exists() and not path.is_file():
        raise RunDirError(
            f"{path}: is {'a folder' if path.is_dir() else 'not a regular file (a device, pipe or socket)'}, where "
            f"compare writes its result file; move it away, or pass {unsaved} to print the scores without saving."
        )
    if path.exists() and not overwrite:
        raise RunDirError(
            f"{path} exists (an earlier comparison, which the report shows). Pass "
            f"{'--overwrite' if spelling.flags else 'overwrite=True'} to replace it, or {unsaved} to print the scores "
            "without saving."
        )
    check_can_write(path)


def compare(
    run: LoadedRun,
    questions: list[Question],
    settings: GenerationSettings | None = None,
    refusal: str | None = None,
    dropped: DataReport | None = None,
    seed: int | None = None,
) -> Comparison:
    """Answer every question with the tuned and the base model, a progress bar on stderr meanwhile. `settings`
    default to greedy with the run's eval.max_new_tokens; `refusal`, when known, adds refusal rates per kind;
    `dropped`: the rows data.transform dropped while the questions were read (`read_questions`), recorded. Sampled
    answers draw from a generator seeded with `seed` (default: the run's train.seed, `answer_seed`), a fresh one for
    each model, so the same seed gives the same answers and the base's do not depend on the tuned model's."""
    for q in questions:
        if q.prompt is None:
            raise DataError(f"{q.where}: a text row holds no question to ask; compare needs question rows.")
    unread = DataReport()  # the questions holding characters the tokenizer drops, answered without them
    wheres = [q.where or f"question {i}" for i, q in enumerate(questions, 1)]
    note_unreadable(wheres, [row_text(q.prompt) for q in questions], run.tokenizer, unread, "answered")
    settings = answer_settings(settings, run.run_dir)
    seed = answer_seed(seed, run.run_dir)
    say_config_notice(run.model, whose="the tuned model's")  # the base's is said once it is loaded
    run.check_base()  # a full run's base, loaded after the tuned answers: gone or changed is said before them

    def answers(model, which: str) -> tuple[list[str], list[bool]]:
        """Every question's answer by `model` and whether it was cut, from a generator of its own seeded `seed`."""
        with answer_progress(len(questions), f"answers, {which} model") as step:
            conversations, names = [q.prompt for q in questions], [q.where for q in questions]
            generator = answer_generator(seed, model)
            return generate_answers(model, run.tokenizer, run.template, conversations, settings, step, names, generator)

    tuned, tuned_cut = answers(run.model, "tuned")
    with run.base_model() as base_model:
        say(base_config_notice(base_model, run.model))
        base, base_cut = answers(base_model, "base")
    labels = task_labels(questions)
    rows = []
    for q, base_text, tuned_text, b_cut, t_cut in zip(questions, base, tuned, base_cut, tuned_cut):
        (base_thought, b), (tuned_thought, t) = split_thought(base_text), split_thought(tuned_text)
        row = Row(q.text, q.expected, q.kind, b, t, base_thought=base_thought, tuned_thought=tuned_thought)
        row.base_cut, row.tuned_cut = b_cut, t_cut
        if q.expected is not None:
            task = labels[q.kind] if q.is_label else None
            row.base_ok, row.tuned_ok = correct(b, q.expected, task), correct(t, q.expected, task)
        rows.append(row)
    weights = "nf4" if run.quantized_base else str(run.dtype).removeprefix("torch.")
    return Comparison(
        rows,
        score(rows, refusal),
        asdict(settings),
        weights,
        dropped_counts(dropped),
        seed,
        asdict(unread.unread) if unread.unread.rows else {},
    )


def dropped_counts(dropped: DataReport | None) -> dict[str, dict]:
    """reason -> {count, locations} of a DataReport's skips: eval.json's and compare.json's `transform_dropped`."""
    return (
        {} if dropped is None else {r: {"count": s.count, "locations": s.locations} for r, s in dropped.skips.items()}
    )


def dropped_line(dropped: dict[str, dict]) -> str | None:
    """The printed line of `transform_dropped` (eval's and compare's), None when nothing was dropped."""
    if not dropped:
        return None
    return "  not read: " + "; ".join(f"{s['count']} {reason}" for reason, s in dropped.items())


def cut_line(
    base: int, tuned: int, answers: int, max_new_tokens: int | None, spelling: Spelling | None = CLI
) -> str | None:
    """The printed line of the answers cut at max_new_tokens (eval's and compare's), None when none was: such an
    answer may stop before the text it would have reached, which 'contains' and exact match then miss. `spelling`:
    how the caller gives more room (None: the comparison after training, which reads eval.max_new_tokens alone)."""
    if not base and not tuned:
        return None
    return (
        f"  cut at max_new_tokens ({max_new_tokens}): base {base} of {answers} answers, tuned {tuned} of {answers} "
        "ran to the limit without ending their turn and may stop before the expected text; "
        f"{f'{longer_answers(spelling)} (or eval.max_new_tokens)' if spelling else 'eval.max_new_tokens'} gives them "
        "more room"
    )


def sampled_line(settings: dict, seed: int | None, spelling: Spelling | None = CLI) -> str | None:
    """The printed line of sampled answers (eval's and compare's): their temperature, top_p and seed, which gives
    the same answers again; None for greedy answers, which draw nothing. `spelling`: how the caller names the seed."""
    temperature, top_p = settings.get("temperature", 0.0), settings.get("top_p", 1.0)
    if seed is None or not samples(temperature, top_p):
        return None
    other = "seed=N" if spelling is not None and not spelling.flags else "--seed N"
    return (
        f"  sampled at temperature {temperature}, top_p {top_p}, seed {seed}: the same seed, settings and device "
        f"give the same answers, {other} others"
    )


def score(rows: list[Row], refusal: str | None = None) -> dict[str, dict]:
    scores = {}
    for kind in dict.fromkeys(r.kind for r in rows):
        group = [r for r in rows if r.kind == kind]
        scored = [r for r in group if r.expected is not None]
        entry: dict = {"n": len(group)}
        if 0 < len(scored) < len(group):  # 'base' and 'tuned' are shares of these rows, not of n
            entry["scored"] = len(scored)
        if scored:
            entry["base"] = sum(r.base_ok for r in scored) / len(scored)
            entry["tuned"] = sum(r.tuned_ok for r in scored) / len(scored)
        if refusal:
            entry["base_refused"] = sum(refused(r.base, refusal) for r in group) / len(group)
            entry["tuned_refused"] = sum(refused(r.tuned, refusal) for r in group) / len(group)
        if "tuned" in entry or "tuned_refused" in entry:
            scores[kind] = entry
    return scores


def format_answers(result: Comparison) -> str:
    """Side by side as text: each question, then the base and the tuned answer, marked when they can be scored."""
    mark = {True: "✓", False: "✗", None: " "}
    lines = []
    for i, r in enumerate(result.rows, 1):
        lines.append(f"[{i}] {r.question}" + (f"   (expected: {r.expected})" if r.expected else ""))
        for name, answer, ok, thought, cut in (
            ("base ", r.base, r.base_ok, r.base_thought, r.base_cut),
            ("tuned", r.tuned, r.tuned_ok, r.tuned_thought, r.tuned_cut),
        ):
            if thought is not None:
                lines.append(f"  {name}   (thought: {thought})")
            lines.append(f"  {name} {mark[ok]} {answer}" + (" [cut at max_new_tokens]" if cut else ""))
    return "\n".join(lines)


def format_scores(scores: dict[str, dict]) -> str:
    """One line per kind: share of answers judged correct, and the refusal rate when known."""
    lines = [
        "scores: 'correct' = the answer contains the expected text (a label task: names the expected label); "
        "'refused' = it contains the refusal sentence"
    ]
    for kind, s in scores.items():
        parts = [f"  {kind:<12} (n={s['n']:>3})"]
        if "tuned" in s:
            if "scored" in s:
                parts.append(f"{s['scored']} with an expected answer")
            parts.append(f"correct: base {100 * s['base']:5.1f}% -> tuned {100 * s['tuned']:5.1f}%")
        if "tuned_refused" in s:
            parts.append(f"refused: base {100 * s['base_refused']:5.1f}% -> tuned {100 * s['tuned_refused']:5.1f}%")
        lines.append("   ".join(parts))
    return "\n".join(lines)


def format_comparison(
    result: Comparison, saved: Path | None = None, show_answers: bool = False, spelling: Spelling | None = CLI
) -> str:
    """The scores first; then the answers when asked for (or when nothing could be scored), else where they are.
    `spelling`: as cut_line's."""
    parts = [format_scores(result.scores)] if result.scores else []
    cut = cut_line(
        sum(r.base_cut for r in result.rows),
        sum(r.tuned_cut for r in result.rows),
        len(result.rows),
        result.settings.get("max_new_tokens"),
        spelling,
    )
    unread = Unread.saved(result.unread).line() if result.unread else None
    for line in (
        dropped_line(result.transform_dropped),
        unread,
        cut,
        sampled_line(result.settings, result.seed, spelling),
    ):
        if line:
            parts = ["\n".join([*parts, line])] if parts else [line.strip()]
    shown = show_answers or not result.scores
    if shown:
        parts.append(format_answers(result))
    if saved is not None:  # said also after the answers shown: a later compare refuses to replace it unasked
        parts.append(
            f"answers of base and tuned model: {saved} ('tunelab report {saved.parent}' shows them side by side)"
        )
    elif not shown:
        parts.append("answers not saved; --show-answers prints them")
    return "\n\n".join(parts)


def save_comparison(
    result: Comparison, run_dir: str | Path, overwrite: bool = False, spelling: Spelling = PYTHON
) -> Path:
    path = compare_file(run_dir)
    check_writable(path, overwrite, spelling)
    return write_json(path, result.to_dict())


def compare_after_training(run_dir: Path, cfg: RunConfig) -> Comparison:
    """Answer the run's eval.questions with the base and the saved tuned model, save compare.json (the run's first:
    training has just written the directory), print the scores. The questions are read with the data settings of
    the result (a staged run's last stage's), as `tunelab compare` reads them. Ctrl-C meanwhile is Interrupted
    saying that the run is saved and how to compare it later (it was a bare "interrupted", as if training was lost)."""
    try:
        run = open_run(run_dir, device=cfg.model.device)
        print(f"comparing base and tuned model on {cfg.eval.questions}", flush=True)
        dropped = DataReport()
        questions = read_questions(cfg.eval.questions, run_data_config(run_dir, run.info), dropped=dropped)
        result = compare(run, questions, answer_settings(None, run_dir), run.info.refusal, dropped)
    except KeyboardInterrupt as stop:  # 130, or 143 after SIGTERM (errors.Terminated)
        raise Interrupted(
            f"The run is finished and saved in {run_dir}; {COMPARE_FILE} was not written. Compare it with:\n"
            f"  tunelab compare {shlex.quote(str(run_dir))} --questions {shlex.quote(str(cfg.eval.questions))}",
            step=0,
            checkpoint=None,
            signum=getattr(stop, "exit_code", 130) - 128,
            at="training, in the comparison of eval.questions",
            resumable=False,
        ) from None
    path = save_comparison(result, run_dir, overwrite=True)
    print(format_comparison(result, path, spelling=None), flush=True)
    return result
