"""Question files: the one reader behind `tunelab compare`, `tunelab eval` and the comparison after training.

A row is one of
  question + expected   `question` (or `prompt`, `instruction`, as mapped by the run's data.fields) and the text a
                        correct answer contains (`expected`); optional `kind` (scores per kind) and `system` (the
                        column data.fields maps system to, or `system` itself, in every kind of row);
  question + label      a label task: the answer must name the label (`label`, or a `kind` of label/classification);
  a training row        any format `tunelab train` reads (question/answer, messages, ...): the last assistant turn is
                        the expected answer, a whole answer rather than a text to find in one; a row that holds
                        the fields of the run's data.format is read in it, as training read it;
  a conversation        `messages` ending with a user turn + `expected`: the conversation is asked as it is (the
                        earlier turns are its history), and the answer to its last question must contain `expected`;
  a text row            continued pretraining text: no question, so it counts for `tunelab eval`'s loss only.
`expected` wins over `label` and over a training row's answer when a row has both. A question without any expected
answer is asked and shown, but not scored (an error where scores are required).

Every row first goes through the run's data.transform, as training's rows do; its column names are then matched
whatever their case (`data.case`), as every reader of rows matches them.
Every question carries the conversation it is asked as (the run's system prompt unless the row has its own), and the
example the eval loss is taken on: that conversation with the expected answer as the assistant's turn.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
from dataclasses import dataclass
from pathlib import Path

from tunelab.config import DataConfig, DataSource, RunConfig, TrainConfig
from tunelab.config.flags import PYTHON, Spelling
from tunelab.data.case import CaseMatch
from tunelab.data.entries import source_config, source_name
from tunelab.data.formats import (
    CANONICAL,
    FORMATS,
    Example,
    row_fields,
    scalar_text,
    text_field,
    to_examples,
    trained_system,
)
from tunelab.data.match import normalize
from tunelab.data.render import ControlTokenText, render_prompt
from tunelab.data.report import DataReport, location
from tunelab.data.sources import iter_records
from tunelab.data.templates import resolve_template
from tunelab.data.transform import apply_transform, load_transform
from tunelab.errors import ConfigError, DataError, counted
from tunelab.infer.generate import GenerationSettings, check_seed, refuse_no_room, say
from tunelab.models.load import ModelSource, load_hf_config
from tunelab.run_info import RunInfo
from tunelab.rundir import CONFIG_FILE, read_config, saved_config, saved_config_file

LABEL_KINDS = ("label", "labels", "classification")
PROMPT_FIELDS = ("question", "prompt", "instruction")  # a row with one of these is meant to be answered
ANSWER_FIELDS = ("answer", "completion", "output", "messages", "conversations")  # a row with one is training data


@dataclass
class Question:
    """One row of a question file (or one question given directly)."""

    prompt: list[dict] | None
    """The conversation up to the answer, ending with a user turn; None for a text row (loss only)."""
    expected: str | None
    """What a correct answer contains (or, for a label task, the label it names); None: not scored."""
    kind: str = "all"
    is_label: bool = False
    whole_answer: bool = False
    """The expected text is a complete answer (a training row's, or a label), so exact match can mean something;
    an `expected` column is only a text a correct answer contains."""
    example: Example | None = None
    """What the eval loss is taken on; None when there is no expected answer (or no file)."""
    where: str = ""
    """file:line of the row; empty for a question given directly."""

    @property
    def text(self) -> str:
        """The question: the last user turn."""
        return next(m["content"] for m in reversed(self.prompt or []) if m["role"] == "user")

    @classmethod
    def ask(cls, text: str, system_prompt: str | None = None, expected: str | None = None, where: str = "") -> Question:
        """A question given directly (no file): asked with the run's system prompt; `where` names it in errors."""
        system = [{"role": "system", "content": system_prompt}] if trained_system(system_prompt) else []
        return cls(system + [{"role": "user", "content": text}], expected, where=where)


def task_labels(questions: list[Question]) -> dict[str, list[str]]:
    """kind -> the labels its label questions expect, in order of appearance: an answer to a label question is judged
    by the label it names among those of its kind (`eval.metrics.correct`)."""
    kinds = dict.fromkeys(q.kind for q in questions if q.is_label)
    return {k: list(dict.fromkeys(q.expected for q in questions if q.is_label and q.kind == k)) for k in kinds}


def _text_field(row: dict, key: str, where: str) -> str | None:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):  # NaN: pandas' and parquet's missing value
        return None
    if isinstance(value, float) and math.isinf(value):
        raise DataError(f"{where}: field '{key}' is {value}, a number with no text to compare answers with.")
    if isinstance(value, bool | int | float):
        value = scalar_text(value)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field '{key}' must be non-empty text, got {value!r}.")
    return value.strip()


QUESTION_KEYS = (*PROMPT_FIELDS, "expected", "label", "kind", "system")  # what a question row is read for


def _refuse_misspelt(row: dict, fields: dict[str, str], where: str) -> None:
    """DataError for a column of a question row that is not read but is spelt like one that is ('expect', 'Kind'):
    the row would be asked without being scored, or scored under 'all'. Other extra columns (an id) are left alone."""
    read = {fields.get(k, k) for k in QUESTION_KEYS}
    known = {*CANONICAL, "chosen", "rejected", "label", "id"}  # names of the data formats are not misspellings
    for key in row:
        if key in read or key in known:
            continue
        near = difflib.get_close_matches(key.lower(), sorted(read), n=1, cutoff=0.8)
        if near:
            raise DataError(
                f"{where}: column '{key}' is not read; did you mean '{near[0]}'? A question row reads "
                f"{', '.join(sorted(read))}."
            )


def _columns_read(fields: dict[str, str]) -> set[str]:
    """The column names a question row is read from: the question keys, the training formats' fields (as the run's
    data.fields maps them, and under their own names), and the preference and id columns."""
    names = {*QUESTION_KEYS, *ANSWER_FIELDS, *CANONICAL, "chosen", "rejected", "label", "id"}
    names |= {n for required, _ in FORMATS.values() for n in required}
    return names | {v for v in fields.values() if isinstance(v, str)}


def _no_question(where: str, row: dict, fields: dict[str, str], path: Path) -> DataError:
    """DataError for a row that is neither a question nor a training row: it names the columns a question file is
    read from (the run's data.fields mapping them), not data.fields or data.format, which the file cannot set."""
    names = [*PROMPT_FIELDS, *(n for required, _ in FORMATS.values() for n in required)]
    mapped = ", ".join(f"{k} -> {v}" for k, v in fields.items() if k in names)
    also = f" (or the columns the run's data.fields maps them to: {mapped})" if mapped else ""
    return DataError(
        f"{where}: the row holds no question: give it in a column named question, prompt or instruction (with the "
        "text a right answer contains in 'expected'), or give a whole training row (messages, conversations, "
        f"instruction + output, prompt + completion, question + answer, or text){also}. This row has "
        f"{', '.join(map(str, row)) or 'no fields'}. Rename its columns in {path}."
    )


def file_data_config(data: DataConfig, path: Path) -> DataConfig:
    """The data options the rows of `path` are read with: for a file of a mixture's source (its eval file, its
    training file, or a file in its folder) that source's own format, fields and system prompt, as training read and
    rendered them (`entries.source_config`); for any other file the top-level ones, as training reads a mixture's
    data.eval. Two sources that read the file with different options are a ConfigError naming both: which of
    them a row is cannot be told, and reading it one source's way would score the other's rows as it was not
    trained."""
    target = path.resolve()
    found: dict[int, DataSource] = {}  # entry number -> the source whose file (or folder, or eval file) it is
    for i, entry in enumerate(data.train, 1):
        if isinstance(entry, DataSource):
            for own in (entry.eval, entry.path):
                if own and (Path(own).resolve() == target or Path(own).resolve() in target.parents):
                    found.setdefault(i, entry)
    configs = {i: source_config(data, entry) for i, entry in found.items()}
    first = next(iter(configs), None)
    other = next((i for i, c in configs.items() if c != configs[first]), None)
    if other is not None:
        differ = [
            name
            for name in ("format", "fields", "system_prompt", "delimiter")
            if getattr(configs[first], name) != getattr(configs[other], name)
        ]
        raise ConfigError(
            f"{path} is read by two sources of the run's data.train, entries {first} and {other} "
            f"({source_name(found[first], first)}, {source_name(found[other], other)}), with different "
            f"{' and '.join(differ)}: which source a row belongs to cannot be told, so it cannot be read as training "
            "read it. Give the questions in a file of their own (a file of no source is read with the top-level "
            "data options), or give each source a file of its own."
        )
    return configs[first] if first is not None else data


def system_column(row: dict, fields: dict[str, str]) -> str:
    """The column of a question row that holds its system message: the one the run's data.fields maps system to, as
    in its training rows, else 'system' (a question file written apart from the training data)."""
    mapped = fields.get("system", "system")
    return mapped if mapped in row else "system"


def read_questions(
    path: str | Path,
    data: DataConfig | None = None,
    need_expected: bool = False,
    dropped: DataReport | None = None,
    rows: int | None = None,
) -> list[Question]:
    """The rows of a question file; DataError (naming file and line) for rows that cannot be asked.

    `data` is the run's data config: its `fields` map column names (a row may give a field under its canonical name
    instead, 'question' or 'system': `row_fields`, `system_column`), its system prompt is asked with every question
    that has none, its data.delimiter separates a .csv file's values, and its data.transform takes every row first,
    as it takes training's rows and eval file (the rows it drops are said on stderr, with their count); a mixture
    source's file is read with that source's options (`file_data_config`). `need_expected`: a question row without an
    expected answer is an error (eval scores every one). `dropped`: where the rows data.transform drops are counted,
    for a caller that records them (eval.json). `rows`: only the file's first this many rows are read (a .jsonl or
    .csv file no further), for a caller that asks a few."""
    path = Path(path)
    data = file_data_config(data or DataConfig(), path)
    if not path.exists():
        raise DataError(f"{path}: question file not found.")
    records = list(itertools.islice(iter_records([str(path)], data.delimiter), rows))
    if not records:
        raise DataError(f"{path}: the question file holds no rows.")
    dropped = dropped if dropped is not None else DataReport()
    records = apply_transform(records, load_transform(data.transform), data.transform, dropped, questions=True)
    case = CaseMatch(_columns_read(data.fields), data.fields.values())  # after data.transform, as training
    records = [case.match(record) for record in records]
    for line in case.notes():
        say(line)
    for reason, skip in dropped.skips.items():
        say(f"{path}: {counted(skip.count, 'row')} {reason}, as training drops them (e.g. {skip.locations[0]})")
    if not records:
        raise DataError(f"{path}: data.transform {data.transform} dropped every row of the question file.")
    questions: list[Question | None] = [None] * len(records)
    training = []  # (index, record, expected, kind, is_label, fields) of rows that to_examples converts
    for i, record in enumerate(records):
        row, where = record.row, location(record.path, record.line)
        fields = row_fields(row, data.fields)
        key = "label" if "label" in row and _text_field(row, "expected", where) is None else "expected"
        expected = _text_field(row, key, where)
        if not isinstance(row.get("kind"), str | None):
            raise DataError(
                f"{where}: field 'kind' must be text (the name of the question's group, 'label' for a label "
                f"question), got {row['kind']!r}."
            )
        kind = str(row.get("kind") or ("label" if key == "label" and expected else "all"))
        is_label = (key == "label" and expected is not None) or kind in LABEL_KINDS
        if any(fields.get(f, f) in row for f in ANSWER_FIELDS):
            mapped = fields.get("system", "system")
            if system_column(row, fields) != mapped and "system" in row:  # to_examples reads the mapped column
                record = dataclasses.replace(record, row=row | {mapped: row["system"]})
            training.append((i, record, expected, kind, is_label, fields))
            continue
        asks = [k for k in PROMPT_FIELDS if fields.get(k, k) in row]
        if not asks:
            if expected is not None:
                names = " or ".join(f"'{fields.get(k, k)}'" for k in PROMPT_FIELDS)
                mapped = (
                    " (the run's data.fields maps the question's column)"
                    if any(k in fields for k in PROMPT_FIELDS)
                    else ""
                )
                raise DataError(
                    f"{where}: the row has an expected answer but no question; give it a {names} field{mapped}."
                )
            if not any(all(fields.get(n, n) in row for n in required) for required, _ in FORMATS.values()):
                raise _no_question(where, row, fields, path)
            training.append(
                (i, record, None, kind, False, fields)
            )  # a text row, or a conversation of a training format
            continue
        if expected is None and need_expected and fields.get("chosen", "chosen") in row:
            raise _pair_without_expected(where)
        if expected is None and need_expected:
            raise DataError(
                f"{where}: the row has no expected answer. Give it an 'expected' field (or 'label' for a label task), "
                "or an answer in a training format (e.g. question + answer)."
            )
        _refuse_misspelt(row, fields, where)
        question = _text_field(row, fields.get(asks[0], asks[0]), where)
        if question is None:
            raise DataError(f"{where}: field '{fields.get(asks[0], asks[0])}' must be non-empty text, got None.")
        key = system_column(row, fields)
        system = text_field(row.get(key), where, key)
        system = system if system.strip() else (data.system_prompt or "")
        prompt = ([{"role": "system", "content": system}] if system.strip() else []) + [
            {"role": "user", "content": question}
        ]
        answer = [{"role": "assistant", "content": expected}] if expected is not None else []
        example = Example(prompt + answer, None, record.path, record.line) if answer else None
        questions[i] = Question(prompt, expected, kind, is_label, is_label, example, where)

    report = DataReport()
    # One record at a time: a row that holds the fields of the run's data.format is read in it, as training read its
    # rows (a text row that also has prompt and completion is a text); another row's format is detected on its own,
    # so one file may mix formats; data.fields still maps column names. A dpo run's data.fields may map chosen and
    # rejected, which the sft formats do not read: they are left out here.
    examples = []
    for _, record, _, _, _, fields in training:
        fields = {k: v for k, v in fields.items() if k in CANONICAL}
        fmt = data.format if _holds_format(record.row, data.format, fields) else "auto"
        examples += to_examples([record], fmt, fields, data.system_prompt, report, questions=True)
    if report.skips:
        reasons = "; ".join(f"{reason} at {', '.join(s.locations)}" for reason, s in report.skips.items())
        raise DataError(f"{path}: rows cannot be used: {reasons}. Fix or remove them.")
    for (i, record, expected, kind, is_label, fields), ex in zip(training, examples, strict=True):
        if ex.messages is None:
            questions[i] = Question(None, None, kind, False, False, ex, location(ex.path, ex.line))
            continue
        where = location(ex.path, ex.line)
        if ex.messages[-1]["role"] == "user":  # a conversation to go on with: its last user turn is the question
            answer = [{"role": "assistant", "content": expected}] if expected is not None else []
            if expected is None and need_expected and fields.get("chosen", "chosen") in record.row:  # LLaMA-Factory's
                raise _pair_without_expected(where)
            if expected is None and need_expected:
                raise DataError(f"{where}: the conversation ends with a question but the row has no 'expected' answer.")
            example = Example(ex.messages + answer, None, ex.path, ex.line) if answer else None
            questions[i] = Question(ex.messages, expected, kind, is_label, is_label, example, where)
            continue
        last = max(k for k, m in enumerate(ex.messages) if m["role"] == "assistant")
        whole = expected is None or is_label
        answer = expected or ex.messages[last]["content"].strip()
        questions[i] = Question(ex.messages[:last], answer, kind, is_label, whole, ex, where)
    found = [q for q in questions if q is not None]
    _refuse_label_spellings(found)
    return found


def _pair_without_expected(where: str) -> DataError:
    """The error for a preference pair in a file of questions to score: its prompt (a question, or a conversation
    ending with the user's turn, as LLaMA-Factory writes pairs) has no expected answer."""
    return DataError(
        f"{where}: a preference pair (chosen, rejected) holds no expected answer to score generated answers "
        "against. A dpo run scores held-out pairs while it trains (data.eval or data.eval_fraction: eval "
        "loss, accuracy and margin); here give rows of a question and the text a right answer "
        "contains (expected)."
    )


def _holds_format(row: dict, fmt: str, fields: dict[str, str]) -> bool:
    """The row has every required field of format `fmt` (after the data.fields mapping); False for "auto"."""
    return fmt in FORMATS and all(fields.get(name, name) in row for name in FORMATS[fmt][0])


def _refuse_label_spellings(questions: list[Question]) -> None:
    """DataError for two labels of one kind that are one label to the scorer (answers are matched to labels after
    `normalize`: 'Spam' and 'spam'): the first would take every answer, and the other's rows would all count wrong."""
    first: dict[tuple[str, str], Question] = {}
    for q in questions:
        if not q.is_label or q.expected is None:
            continue
        seen = first.setdefault((q.kind, normalize(q.expected)), q)
        if seen.expected != q.expected:
            raise DataError(
                f"{q.where}: the label {q.expected!r} is {seen.expected!r} ({seen.where}) written another way; answers "
                "are matched to labels whatever their case, spacing or final punctuation, so write each label one way."
            )


def refuse_unaskable(questions: list[Question], tokenizer, template, context: int | None = None) -> None:
    """ControlTokenText or ContextTooLong naming the row of the first question whose conversation holds special-token
    text, or leaves a model reading `context` positions no room to answer: the answers after training would stop
    there, so a run checks its eval.questions with this before training."""
    for q in questions:
        if q.prompt is None:
            continue
        try:
            ids = render_prompt(q.prompt, tokenizer, template)
        except ControlTokenText as exc:
            raise ControlTokenText(f"{q.where or 'a question'}: {exc}") from None
        refuse_no_room(len(ids), context, q.where or None)


def check_questions(cfg: RunConfig, source: ModelSource, tokenizer, spelling: Spelling = PYTHON) -> list[Question]:
    """The run's eval.questions, read and rendered with its tokenizer and template within its model's context, as the
    comparison after training will ask them: what it would refuse is refused now (train before training, check)."""
    questions = read_questions(cfg.eval.questions, cfg.data)
    context = getattr(load_hf_config(source, cfg.model.trust_remote_code, spelling), "max_position_embeddings", None)
    refuse_unaskable(questions, tokenizer, resolve_template(cfg.data.template, tokenizer), context)
    return questions


DATA_SETTINGS = (
    "the data settings its questions are read and rendered with (data.fields, data.system_prompt, max_length)"
)


def run_data_config(run_dir: str | Path, info: RunInfo) -> DataConfig:
    """The run's data options, to read its questions and render them as training rendered its data (column mapping,
    system prompt, template, max_length and overlong rule; no packing). RunDirError when its config.yaml is gone."""
    cfg = saved_config(run_dir, DATA_SETTINGS)
    check_saved_transform(run_dir, cfg.data)
    return dataclasses.replace(cfg.data, packing=False, eval=None)


def configured_questions(run_dir: str | Path, spelling: Spelling = PYTHON) -> Path:
    """The questions file `tunelab compare` asks when given none: the run's eval.questions (its config.yaml), the file
    training compared on. DataError when the run sets none, or the file is gone, naming the options as `spelling`
    does (--questions, or questions= in Python)."""
    given = "--questions FILE or --question TEXT" if spelling.flags else "questions= or question="
    path = Path(run_dir) / CONFIG_FILE
    config = read_config(run_dir)
    file = config.eval.questions if config is not None else None
    if not file:
        why = "sets no eval.questions" if config is not None else "(which would name its eval.questions) is missing"
        raise DataError(f"no questions to compare on: give {given}; the run's {path} {why}.")
    if not Path(file).exists():
        raise DataError(
            f"{file}: file not found. Check the path in eval.questions of {path} (asked when no questions are "
            f"given), or give {given}."
        )
    return Path(file)


def check_saved_transform(run_dir: str | Path, data: DataConfig) -> None:
    """ConfigError naming the run's config.yaml when the data.transform it records cannot be loaded from here (a
    module:function found in the working directory of an older run's training, not in this one's)."""
    load_transform(data.transform, f"{saved_config_file(run_dir)}: option 'data.transform'")


def answer_settings(settings: GenerationSettings | None, run_dir: str | Path) -> GenerationSettings:
    """`settings` (default: greedy) with max_new_tokens, where not given, from the run's eval.max_new_tokens: the
    run's questions are answered at the length the run was configured for (RunDirError when its config.yaml is gone:
    --max-new-tokens then says the length). A grpo run's answers are never cut shorter than grpo.max_new_tokens, the
    length its answers were sampled at and its held-out reward judged them at: cut at eval.max_new_tokens (64 by
    default) a reasoning answer would lose its end, and eval would score other answers than training's eval did."""
    settings = settings or GenerationSettings()
    if settings.max_new_tokens is not None:
        return settings
    cfg = saved_config(run_dir, "eval.max_new_tokens, the answer length (--max-new-tokens gives it instead)")
    length = cfg.eval.max_new_tokens
    if cfg.task == "grpo":
        length = max(length, cfg.grpo.max_new_tokens)
    return dataclasses.replace(settings, max_new_tokens=length)


def answer_seed(seed: int | None, run_dir: str | Path, name: str = "seed") -> int:
    """The seed compare's and eval's sampled answers draw from: `seed` where given (checked, as `name`), else the
    run's train.seed (a staged run's last stage's), else, for a run without its config.yaml, train.seed's default
    (42). Two calls then sample the same answers; greedy answers draw nothing, whatever the seed."""
    check_seed(seed, name)
    if seed is not None:
        return int(seed)
    if read_config(run_dir) is None:
        return TrainConfig().seed
    return saved_config(run_dir, "train.seed, the seed sampled answers draw from (--seed gives it instead)").train.seed
