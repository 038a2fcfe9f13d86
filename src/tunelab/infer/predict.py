"""`tunelab predict`: what a head run (classify or reward) says about texts: a label with the probability of every
label, or a reward. The run is opened, and the reward model made a reward function (`load_reward_model`), by
tasks/head_run.py, which task grpo uses too; its names are importable from here as before.

Inputs are rendered exactly as the run rendered its training rows (its template, system prompt, prompt format,
max_length and field mapping): a `--text` given to a run that was trained on prompts becomes that prompt's user turn. Inputs longer
than the run's max_length keep their start and last tokens (`head_fit.fit`) and are counted (prediction never drops a row:
one whose start alone fills max_length, which training skips, is refused by name).

A reward run scores an answer as a chat shows it: a reasoning model's thought (`<think>...</think>` first,
data/reasoning.py) is read apart and not scored, as `tunelab eval` and grpo's rewards read answers, and the
prediction keeps it in `thought`, as eval.json keeps an answer's. An `--answer` to a `--prompt` that the run's
template ends with `<think>` starts inside the thought, as the server reads it.
"""

from __future__ import annotations

import csv
import io
import json
import shlex
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from tunelab.atomic import write_text
from tunelab.config.flags import PYTHON, Spelling
from tunelab.data.reasoning import OPEN, answer_apart
from tunelab.data.render import note_unreadable, row_text
from tunelab.data.report import DataReport, char_names, location
from tunelab.data.sources import is_plain_text, refuse_missing_file
from tunelab.errors import ConfigError, DataError, TunelabError
from tunelab.places import check_output_file, data_of
from tunelab.rundir import HEAD_TASKS, read_info
from tunelab.tasks.classify import label_key, read_labelled
from tunelab.tasks.head_data import Input, Opens, thought_apart, thought_opener, with_system
from tunelab.tasks.head_run import (  # noqa: F401  (RewardModel, load_reward_model: importable from here as before)
    HeadRun,
    RewardModel,
    head_outputs,
    load_reward_model,
    open_head_run,
    opens_thought,
    refuse_other_input_kind,
    scored_input,
)
from tunelab.tasks.reward import read_scored


@dataclass
class Prediction:
    where: str  # file:line of the row, or "text 1" for a text given directly
    input: str  # the input as given (for display): the text, or the last user turn and the answer
    label: str | None = None  # classify: the most probable label
    probabilities: dict[str, float] | None = None  # classify: every label's probability
    reward: float | None = None  # reward: the scalar score
    expected: str | None = None  # classify: the label the row gives, if any
    thought: str | None = None  # reward: the answer's thought, not scored; None: it has none
    dropped: dict[str, int] | None = None  # characters the tokenizer drops, scored without: {"U+0004": times}


def _shown(item: Input) -> str:
    if item.messages is None:
        return item.text or ""
    turns = [m for m in item.messages if m["role"] != "system"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in turns[-2:]) if len(turns) > 1 else turns[0]["content"]


def _refuse_all_thought(thought: str | None, answer: str, where: str, opened: bool = False) -> None:
    """DataError naming `where` for an answer that is all thought: nothing is left to score. `opened`: the prompt
    opened the thought (its template ends it with <think>)."""
    if thought is not None and not answer.strip():
        how = (
            "the run's template ends the prompt with <think>, so the answer starts inside the thought, and no answer "
            "follows a </think>"
            if opened
            else "<think> without an answer after its </think>"
        )
        raise DataError(
            f"{where}: the answer is all thought ({how}), and a thought is not scored: nothing is left to score. Give "
            "the answer the thought led to."
        )


def _thought_apart(item: Input, where: str, opens: Opens) -> tuple[Input, str | None]:
    """(the input with its answer's thought left out, the thought) of a chat ending with the answer to score
    (`head_data.thought_apart`, `opens` the run's template's `thought_opener`, as training read its pairs); DataError
    naming `where` for an answer that is all thought (its words: the template opened the thought where the answer
    does not write <think>)."""
    scored, thought = thought_apart(item, opens)
    if thought is not None:
        opened = not item.messages[-1]["content"].lstrip().startswith(OPEN)
        _refuse_all_thought(thought, scored.messages[-1]["content"], where, opened)
    return scored, thought


def text_input(run: HeadRun, text: str) -> Input:
    """A text given directly, as the run's training rows were given: a user turn for a classify run trained on chats;
    a whole text for a reward run (one trained on chats alone, whose chats end with the answer it scores, is refused
    a text by `predict`)."""
    if not run.chat_input or run.info.task == "reward":
        return Input(text=text)
    return Input(messages=with_system([{"role": "user", "content": text}], {}, {}, "text", run.data.system_prompt))


def predict(
    run: str | Path | HeadRun,
    data: str | Path | None = None,
    texts: list[str] | None = None,
    prompt: str | None = None,
    answers: list[str] | None = None,
    batch_size: int = 16,
    device: str = "auto",
    texts_first: bool = False,
    *,
    spelling: Spelling = PYTHON,
) -> list[Prediction]:
    """Predictions of a head run for the rows of `data` and/or `texts` (classify or reward), or for `answers` to
    `prompt` (reward). The file's rows come first, then the texts; `texts_first` puts the texts before them.
    `spelling`: how errors name the arguments (these, or `tunelab predict`'s flags)."""
    prompt_, answer_, text_ = (
        ("--prompt", "--answer", "--text") if spelling.flags else ("prompt=", "answers=", "texts=")
    )
    if prompt is not None and not answers:  # it was dropped without a word, and the texts predicted without it
        raise TunelabError(
            f"{prompt_} is the prompt that {answer_} texts answer (reward runs), and no {answer_} is given; give the "
            f"answers to score, or drop {prompt_} (a text of its own is given {'with' if spelling.flags else 'in'} "
            f"{text_})."
        )
    if answers and prompt is None:
        raise TunelabError(f"{answer_} needs the {prompt_} it answers.")
    if data is not None:
        refuse_missing_file(data, "predict", flags=spelling.flags)
    if data is None and not texts and not answers:  # said before the model loads, not after
        task = run.info.task if isinstance(run, HeadRun) else read_info(run, require_finished=False).task
        if task in HEAD_TASKS:  # another run is named as such by open_head_run
            raise _nothing_to_predict(task, run.run_dir if isinstance(run, HeadRun) else run, spelling)
    run = run if isinstance(run, HeadRun) else open_head_run(run, device, from_checkpoint=True, spelling=spelling)
    if texts and run.info.task == "reward" and run.info.extra.get("input") == "chat":
        # its chats end with the answer it scores: a text would be a prompt's user turn without one
        raise TunelabError(
            f"{text_} gives a reward run a text to score, but this run was trained on chats, each ending with the "
            "answer it scores: a text alone would be read as a prompt without an answer, a form the head never "
            f"read. Give the prompt with {prompt_} and its answers with {answer_}."
        )
    d = run.data
    items: list[tuple[Input, str, str | None]] = []  # (input, where, expected label)
    if data is not None:
        report = DataReport()
        if run.info.task == "classify":
            rows = read_labelled(  # through the run's data.transform, as its training rows were
                [str(data)],
                d.fields,
                d.system_prompt,
                report,
                require_label=False,
                lenient=True,
                delimiter=d.delimiter,
                transform=d.transform,
            )
            ours = {label_key(label): label for label in run.labels}  # a label spelt another way is the run's
            expected = [
                r.label if r.label is None or r.label in run.labels else ours.get(label_key(r.label), r.label)
                for r in rows
            ]
            items += [(r.input, location(r.path, r.line), e) for r, e in zip(rows, expected)]
        else:
            _refuse_training_pairs(run, data, spelling)
            items += [
                (x, location(p, n), None)
                for x, p, n in read_scored(
                    [str(data)], d.fields, d.system_prompt, report, d.delimiter, d.transform, spelling, run.run_dir
                )
            ]
        if report.skips:
            reasons = "; ".join(f"{reason} at {', '.join(s.locations)}" for reason, s in report.skips.items())
            raise DataError(f"{data}: rows cannot be scored: {reasons}. Fix or remove them.")
        if not items:
            raise DataError(f"{data}: the file holds no rows to predict.")
        refuse_other_input_kind(run, [x for x, _, _ in items], [w for _, w, _ in items])
        _say_one_text(data, items)
        _say_unknown_labels(data, [e for _, _, e in items], run.labels)
    given = [(text_input(run, t), f"text {i + 1}", None) for i, t in enumerate(texts or [])]
    items = given + items if texts_first else items + given
    if answers:
        if run.info.task != "reward":
            raise TunelabError(
                f"{prompt_} and {answer_} score answers with a reward run; this is a classify run: give it texts "
                f"({text_})."
            )
    if not items and not answers:
        raise _nothing_to_predict(run.info.task, run.run_dir, spelling)
    thoughts: list[str | None] = [None] * len(items)
    if run.info.task == "reward":  # the answer is scored without its thought
        opens = thought_opener(run.tokenizer, run.template)
        apart = [_thought_apart(x, w, opens) for x, w, _ in items]
        items = [(x, w, e) for (x, _), (_, w, e) in zip(apart, items)]
        thoughts = [t for _, t in apart]
    opened = bool(answers) and opens_thought(run, prompt, "the prompt")  # its template ends it with <think>
    for i, given in enumerate(answers or []):  # read apart before the prompt is joined to it (a run of texts)
        thought, answer = answer_apart(given, opened)
        _refuse_all_thought(thought, answer, f"answer {i + 1}", opened)
        items.append((scored_input(run, prompt, answer), f"answer {i + 1}", None))
        thoughts.append(thought)
    dropped = _say_unreadable(run, items)
    logits, _ = head_outputs(run.model, run, [x for x, _, _ in items], batch_size, [w for _, w, _ in items])
    if run.info.task == "reward":
        scored = zip(items, logits[:, 0], thoughts)
        predictions = [Prediction(w, _shown(x), reward=float(r), thought=t) for (x, w, _), r, t in scored]
    else:
        probs = logits.softmax(dim=-1)
        predictions = [
            Prediction(w, _shown(x), run.labels[int(p.argmax())], dict(zip(run.labels, map(float, p))), expected=e)
            for (x, w, e), p in zip(items, probs)
        ]
    for i, chars in dropped.items():
        predictions[i].dropped = char_names(chars)
    return predictions


def _say_unreadable(run: HeadRun, items: list[tuple[Input, str, str | None]]) -> dict[int, list[str]]:
    """A note, on stderr, of the inputs holding characters the run's tokenizer drops, as training's data report says
    them (`note_unreadable`): they are scored without them. Returns {item's index: those characters}."""
    report = DataReport()
    texts = [row_text(x.text, x.messages) for x, _, _ in items]
    dropped = note_unreadable([w for _, w, _ in items], texts, run.tokenizer, report, "scored", held=len(items))
    if dropped:
        print(f"note: {report.unread.line().strip()}.", file=sys.stderr, flush=True)
    return dropped


def _refuse_training_pairs(run: HeadRun, data: str | Path, spelling: Spelling) -> None:
    """DataError when `data` is a training or eval file of a reward run that has a data.transform: its rows are what
    the function makes preference pairs of, and predict, which scores one answer a row, does not apply it (a function
    that shapes pairs has nothing to make of an answer), so the raw rows would be refused for columns the user never
    meant for predict, or scored as some other input. The pairs are scored by `tunelab eval`, through the function.
    (A file of pairs as written, without a function, is refused by its rows: `reward.read_scored`.)"""
    if not run.data.transform:
        return
    target = Path(data).resolve()
    option = next(
        (
            o
            for o, p in data_of(run.run_dir)
            if o in ("data.train", "data.eval") and (target == p or target.is_relative_to(p))
        ),
        None,
    )
    if option is None:
        return
    evaluate = (
        f"'tunelab eval {run.run_dir} --data {data}'"
        if spelling.flags
        else f"tunelab.evaluate({str(run.run_dir)!r}, {str(data)!r})"
    )
    raise DataError(
        f"{data} is the run's {'training' if option == 'data.train' else 'eval'} file ({option}), whose rows the run's "
        f"data.transform {run.data.transform} makes preference pairs of; predict scores one answer a row and does not "
        f"apply the function. Score the pairs with {evaluate} (pairwise accuracy, through the function), or give "
        "predict rows of a prompt and an answer, a whole conversation or a text."
    )


def _say_one_text(data: str | Path, items: list[tuple[Input, str, str | None]]) -> None:
    """A note, on stderr, when a .txt file of several lines gave one input: a .txt file is one text record, as in
    training, so a file of one message a line got one prediction for all of them, without a word."""
    if not (is_plain_text(str(data)) and Path(data).is_file() and len(items) == 1):
        return
    lines = sum(1 for line in (items[0][0].text or "").splitlines() if line.strip())
    if lines > 1:
        print(
            f"note: {data} is one input of {lines} lines: a .txt file is one text, as in training. For one input a "
            'line, give a .jsonl file of {"text": ...} rows or a .csv file with a text column.',
            file=sys.stderr,
            flush=True,
        )


def _say_unknown_labels(data: str | Path, expected: list[str | None], labels: list[str]) -> None:
    """A note, on stderr, naming the labels of `data`'s rows that the run never trained on, with their counts: the
    head has no output for them, so such a row is predicted but marked neither right nor wrong (`tunelab eval` skips
    and counts it)."""
    unknown = Counter(e for e in expected if e is not None and e not in labels)
    if not unknown:
        return
    rows = sum(unknown.values())
    named = ", ".join(f"{label!r} ({count})" for label, count in unknown.most_common(10))
    more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
    print(
        f"note: {data}: {rows} row{'s' if rows > 1 else ''} give{'' if rows > 1 else 's'} a label the run never "
        f"trained on: {named}{more} (its labels: {', '.join(labels)}). The head has no output for "
        f"{'them' if len(unknown) > 1 else 'it'}, so {'these rows are' if rows > 1 else 'the row is'} predicted but "
        "not marked right or wrong (tunelab eval skips and counts such rows).",
        file=sys.stderr,
        flush=True,
    )


def _nothing_to_predict(task: str, run_dir: str | Path, spelling: Spelling) -> TunelabError:
    # a classify run is not told of a prompt with answers, which score answers of a reward run only
    if not spelling.flags:
        return TunelabError(
            "nothing to predict: give data= or texts=" + ("." if task == "classify" else ", or prompt= with answers=.")
        )
    texts = f'texts (tunelab predict {shlex.quote(str(run_dir))} "TEXT" ..., or --text TEXT)'
    if task == "classify":
        return TunelabError(f"nothing to predict: give --data FILE or {texts}.")
    return TunelabError(f"nothing to predict: give --data FILE, {texts}, or --prompt TEXT with --answer TEXT.")


def format_predictions(predictions: list[Prediction], width: int = 70) -> str:
    """One line a prediction (a reward's thought on a second): the label with the three most probable labels, or the
    reward, then the input and where it came from; an input the tokenizer read without some of its characters says
    which (`(file:2; scored without U+0004 x2)`), as `--out`'s `dropped` does."""
    lines = []
    for p in predictions:
        shown = " ".join(p.input.split())
        shown = shown if len(shown) <= width else shown[: width - 3] + "..."
        where = p.where + (f"; scored without {_char_counts(p.dropped)}" if p.dropped else "")
        if p.reward is not None:
            lines.append(f"{p.reward:+.4f}  {shown}  ({where})")
            if p.thought is not None:  # shown apart, as eval's --show-answers shows it: not scored
                thought = " ".join(p.thought.split())
                lines.append(
                    f"         (thought, not scored: {thought if len(thought) <= width else thought[: width - 3] + '...'})"
                )
            continue
        top = sorted(p.probabilities.items(), key=lambda kv: -kv[1])[:3]
        probs = ", ".join(f"{label} {value:.3f}" for label, value in top)
        if p.expected is None:
            mark = ""
        elif p.expected not in p.probabilities:  # a label the run never trained on: neither right nor wrong
            mark = f" ? {p.expected} is not a label of the run"
        else:
            mark = " ✓" if p.expected == p.label else f" ✗ expected {p.expected}"
        lines.append(f"{p.label}{mark}  [{probs}]  {shown}  ({where})")
    return "\n".join(lines)


def check_out(
    path: str | Path,
    overwrite: bool,
    run_dir: str | Path,
    data: str | Path | None = None,
    spelling: Spelling = PYTHON,
) -> Path:
    """The predictions file `path`, if it may be written: a .csv or .jsonl, not the input `data` nor a file of the
    run (even with overwrite: both were replaced by predictions), not replacing another file unless overwrite.
    `spelling`: how the caller names the option (--out, or the argument out)."""
    path = Path(path)
    if path.suffix not in (".csv", ".jsonl"):
        raise ConfigError(f"{spelling.option('out')} is {path}; predictions are written as .csv or .jsonl.")
    check_output_file(path, overwrite, Path(run_dir), "", (data,) if data is not None else (), spelling=spelling)
    return path


def save_predictions(
    predictions: list[Prediction],
    path: str | Path,
    run_dir: str | Path,
    overwrite: bool = False,
    data: str | Path | None = None,
) -> Path:
    """A .csv (one column per label's probability) or .jsonl file; an existing file only with overwrite, and never
    the run's own files or the input `data` (`check_out`)."""
    path = check_out(path, overwrite, run_dir, data)
    dropped = any(p.dropped for p in predictions)  # its column or key, where any input held such characters
    if path.suffix == ".jsonl":
        rows = [
            {
                k: v
                for k, v in asdict(p).items()
                if (k != "thought" or p.reward is not None) and (k != "dropped" or dropped)
            }
            for p in predictions
        ]
        return write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    labels = list(predictions[0].probabilities or {}) if predictions else []
    extra = ["dropped"] if dropped else []
    buf = io.StringIO()
    writer = csv.writer(buf)
    if predictions and predictions[0].reward is not None:
        writer.writerow(["where", "input", "reward", "thought", *extra])
        writer.writerows([p.where, p.input, p.reward, p.thought or "", *_dropped(p, extra)] for p in predictions)
    else:
        writer.writerow(["where", "input", "label", *(f"p_{label}" for label in labels), "expected", *extra])
        writer.writerows(
            [
                p.where,
                p.input,
                p.label,
                *(p.probabilities[label] for label in labels),
                p.expected or "",
                *_dropped(p, extra),
            ]
            for p in predictions
        )
    return write_text(path, buf.getvalue())


def _dropped(p: Prediction, extra: list[str]) -> list[str]:
    """A .csv row's `dropped` cell, where the file has the column: the characters as 'U+0004 x1, ...', or empty."""
    return [_char_counts(p.dropped or {})] if extra else []


def _char_counts(chars: dict[str, int]) -> str:
    """{"U+0004": 2, "U+0007": 1} as 'U+0004 x2, U+0007 x1'."""
    return ", ".join(f"{c} x{n}" for c, n in chars.items())
