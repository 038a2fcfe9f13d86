"""Records -> examples: every supported record format becomes either a chat (`messages`) or a raw `text`.

Formats, tried in this order when detecting (each names canonical fields; `data.fields` maps them to your columns,
and the formats whose required fields it maps are tried first):

    messages           messages: [{role: system|developer|user|assistant, content}]   (+ optional system)
    sharegpt           conversations: [{from: system|human|gpt, value}]   (+ optional system)
    alpaca             instruction, output, optional input (joined to the instruction by a blank line) (+ optional system,
                       and history: LLaMA-Factory's earlier [instruction, response] pairs, turns before the row's own)
    prompt_completion  prompt, completion (+ optional system)
    question_answer    question, answer (+ optional system)
    text               text (continued pretraining; loss on every token)

The format is detected from the first record of each file (or forced by data.format) and then required of every
record of that file. Column names are matched whatever their case (`Question` is the question: `data.case`). Problems with the data's shape are `DataError`s naming file, line and field; examples that are
well formed but unusable (empty answer, no assistant turn) are skipped and counted in the report; a column of
alpaca's input or history beside a row of another format, which is left out, is counted in a note.
"""

from __future__ import annotations

import difflib
import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path

from tunelab.config.flags import Spelling
from tunelab.data.case import CaseMatch
from tunelab.data.columns import UnreadColumns
from tunelab.data.hints import mapping_hint, nested_hint, role_advice
from tunelab.data.report import DataReport, location
from tunelab.data.sources import Record, headerless, is_plain_text, note_rows_as_text
from tunelab.errors import ConfigError, DataError, TunelabError, article, counted, not_text

# format -> (required canonical fields, optional canonical fields); dict order is the detection order
FORMATS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "messages": (("messages",), ("system",)),
    "sharegpt": (("conversations",), ("system",)),
    "alpaca": (("instruction", "output"), ("input", "system", "history")),
    "prompt_completion": (("prompt", "completion"), ("system",)),
    "question_answer": (("question", "answer"), ("system",)),
    "text": (("text",), ()),
}
CANONICAL = tuple(dict.fromkeys(name for req, opt in FORMATS.values() for name in req + opt))

LATE_SYSTEM = "system message that is not the first message"  # reasons of skips, in every task
EMPTY_QUESTION = "empty question"
NO_USER_START = "conversation does not start with a user message"
# OpenAI's `developer` role is its newer name for the system message; tunelab serve reads it so too


def trained_system(system_prompt: str | None) -> str | None:
    """data.system_prompt as training adds it: a blank one (spaces only, which runs of older versions recorded) is
    none. Every reader of the option (training, eval questions, generate, chat, serve, export) asks this."""
    return system_prompt if (system_prompt or "").strip() else None


MESSAGE_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


@dataclass
class Example:
    messages: list[dict] | None  # [{"role": "system"|"user"|"assistant", "content": str}]
    text: str | None
    path: str
    line: int


PREFERENCE_ADVICE = (  # said of rows an sft format cannot read; tunelab federate, which trains sft alone, says its own
    " Rows of chosen and rejected are preference pairs: train them with task: dpo (or a reward model, task: reward)."
)
# company_faq's heldout.jsonl given as data.eval: a mapping {answer: expected} is no fix. Said by the data reader,
# which does not know how its caller runs eval: it names eval's data file, and the callers that do know (train and
# check, where they catch the reader's errors) name eval's call in its place (`eval_said_as`). The words are matched,
# not a subclass: the reader's error is raised again as a new DataError with its file and line, keeping only its text.
QUESTIONS_LATER = "(or, once the run is trained, as eval's data file)"
QUESTIONS_ADVICE = (
    " A row with an 'expected' text is a question for compare and eval, which score answers that contain it:"
    f" give the file as eval.questions, asked after training {QUESTIONS_LATER};"
    " data.train and data.eval take rows with whole answers, whose loss they measure."
)


def eval_said_as(error: TunelabError, spelling: Spelling, run_dir: str | Path) -> TunelabError:
    """`error` of the data reader with QUESTIONS_ADVICE naming eval of `run_dir` (the run the config trains) as the
    caller runs it: `tunelab eval RUN_DIR --data FILE` for the command line, tunelab.evaluate(RUN_DIR, data=FILE) in
    Python; any other error as it is."""
    text = str(error)
    if QUESTIONS_LATER in text:
        run = str(run_dir)
        call = (
            f"'tunelab eval {shlex.quote(run)} --data FILE'"
            if spelling.flags
            else f"tunelab.evaluate({run!r}, data=FILE)"
        )
        error.args = (text.replace(QUESTIONS_LATER, f"(or, once the run is trained, score them with {call})"),)
    return error


FIELDS_OPTION = "option 'data.fields'"  # where a mapping comes from; a mixture's source names its entry


def check_fields(fields: dict[str, str], option: str = FIELDS_OPTION) -> None:
    unknown = [k for k in fields if k not in CANONICAL]
    if unknown:
        near = [(k, m[0]) for k in unknown if (m := difflib.get_close_matches(str(k), CANONICAL, n=1))]
        hint = "".join(f" Did you mean {m!r} for {k!r}?" for k, m in near)
        if not near and all(fields[k] in CANONICAL for k in unknown):  # {response: output}: column -> field
            turned = ", ".join(f"{fields[k]}: {k}" for k in unknown)
            hint = f" A mapping names the field first, then your column: {{{turned}}}?"
        raise ConfigError(
            f"{option} maps {counted(len(unknown), 'unknown field')} ({', '.join(map(str, unknown))}); the fields "
            f"you can map are {', '.join(CANONICAL)} (e.g. {{prompt: question, completion: answer}}).{hint}"
        )


def row_fields(row: dict, fields: dict[str, str]) -> dict[str, str]:
    """data.fields for one row of an eval or question file, which is read with the run's mapping: a field whose mapped
    column the row lacks but whose own (canonical) column it has (a file with `question` for a run that mapped
    question to `q`) is read from its own column, as every task reads such a file (`tasks.head_data.column`); unless
    data.fields gives that column to another field."""
    claimed = set(fields.values())
    return {k: v for k, v in fields.items() if v in row or k not in row or (k in claimed and k != v)}


def detect_format(row: dict, fields: dict[str, str], option: str = FIELDS_OPTION) -> str:
    """The first format whose required fields (after the data.fields mapping) are all keys of `row`; the formats
    whose required fields data.fields maps are tried first, and one of them must match ({text: prompt} reads a
    prompt/completion row as a text). A mapping of a required field to a column the row lacks is an error of the
    mapping (else another format could match quietly)."""
    required_names = {name for req, _ in FORMATS.values() for name in req}
    unmapped = [f"{name} -> '{col}'" for name, col in fields.items() if name in required_names and col not in row]
    if unmapped:
        raise DataError(
            f"{option} maps {', '.join(unmapped)}, but the record has no such column; its columns are "
            f"{', '.join(map(repr, row)) or '(none)'}. Fix the mapping to name columns of your file."
        )
    mapped = [fmt for fmt, (required, _) in FORMATS.items() if any(name in fields for name in required)]
    for fmt in mapped or FORMATS:
        if all(fields.get(name, name) in row for name in FORMATS[fmt][0]):
            return fmt
    if mapped:
        fmt = mapped[0]
        given = ", ".join(f"{name} -> '{fields[name]}'" for name in FORMATS[fmt][0] if name in fields)
        absent = [name for name in FORMATS[fmt][0] if fields.get(name, name) not in row]
        lacks = ", ".join(absent)
        raise DataError(
            f"{option} maps {given}, a field of the {fmt} format, but the record has no column for its other "
            f"{'field' if len(absent) == 1 else 'fields'} {lacks}; its columns are "
            f"{', '.join(map(repr, row)) or '(none)'}. Map {'it' if len(absent) == 1 else 'them'} too (e.g. "
            f"{{{lacks.split(', ')[0]}: your_column}}), or remove the mapping."
        )
    known = "; ".join(f"{fmt} ({', '.join(req)})" for fmt, (req, _) in FORMATS.items())
    raise DataError(
        f"cannot tell the data format from the fields {', '.join(map(repr, row)) or '(none)'}; known formats and their "
        f"fields: {known}. Rename your columns, map them with {_short(option)} (e.g. {mapping_hint(row, FORMATS)}), "
        "or set data.format."
        + nested_hint(row, CANONICAL)
        + (PREFERENCE_ADVICE if "chosen" in row and "rejected" in row else "")
        + (QUESTIONS_ADVICE if "expected" in row else "")
    )


# the words other tools name a format's fields with (LLaMA-Factory's `response`, GPTeacher's, databricks-dolly's)
_PROMPT_WORDS = ("instruction", "prompt", "question", "query")
_ANSWER_WORDS = ("output", "completion", "answer", "response", "reply", "target")
_SAME_ROLE = {name: words for words in (_PROMPT_WORDS, _ANSWER_WORDS) for name in words}
# on a tie, the format whose fields the columns most likely mean: a query and a response are a prompt and completion
_HINT_ORDER = ("messages", "sharegpt", "prompt_completion", "question_answer", "alpaca", "text")


def _short(option: str) -> str:
    """How advice names the mapping: data.fields, or a source's "option 'data.train', entry 2, fields"."""
    return "data.fields" if option == FIELDS_OPTION else option


class UnusedMappings:
    """The data.fields mappings that no record of a file has used yet, per file: a mapping to a column that no record
    of a file has (`{system: sytem}`, a typo for 'sys') would leave its field out of every example, silently, so it is
    an error once the files are read (`refuse`). The sft formats and the readers of the other tasks share it.
    `lenient` (eval and predict files of a task, read with its training file's mapping): a record that has the
    field's own name uses the mapping too. `together`: the files are checked as one (a task's training files, read
    as one data set: each mapping needs a column in one of them)."""

    def __init__(self, lenient: bool = False, together: bool = False, option: str = FIELDS_OPTION) -> None:
        self.lenient, self.together, self.option = lenient, together, option
        self.files: dict[str, tuple[Record, dict[str, str]]] = {}  # file -> its first record, mappings not used yet
        self.paths: list[str] = []

    def see(self, record: Record, mapped: dict[str, str]) -> None:
        """Count `record`'s columns as used; `mapped` (name -> column) is what its file is checked for, read at the
        file's first record."""
        if not self.paths or self.paths[-1] != record.path:
            self.paths.append(record.path)
        key = "" if self.together else record.path
        unused = self.files.setdefault(key, (record, dict(mapped)))[1]
        for name in [n for n, column in unused.items() if column in record.row or (self.lenient and n in record.row)]:
            del unused[name]

    def refuse(self) -> None:
        for key, (first, unused) in self.files.items():
            if unused:
                paths = list(dict.fromkeys(self.paths)) if self.together else [key]
                files, its = ("the file", "its") if len(paths) == 1 else ("these files", "the first one's")
                also = " (nor the field's own name)" if self.lenient else ""
                raise DataError(
                    f"{', '.join(paths)}: {self.option} maps "
                    f"{', '.join(f'{n} -> {c!r}' for n, c in unused.items())}, but no record of {files} has such a "
                    f"column{also}, so the field would be left out of every example; {its} columns are "
                    f"{', '.join(map(repr, first.row)) or '(none)'}. Fix the mapping to name a column of the data."
                )


EXACT_INTEGERS = 2**53  # a float holds every whole number below this exactly; above, its digits are rounding


def scalar_text(value: bool | int | float) -> str:
    """A JSON scalar as the text to compare an answer with (the one rule for labels, expected answers and number
    fields): true and false as JSON writes them, a whole number without its fraction (1000.0, how a float column or
    a tool writes 1000, is "1000", so 1, 1.0 and "1" are one label), other numbers as Python writes them (2.5,
    1e+20: a float that large is not exact digits)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer() and abs(value) < EXACT_INTEGERS:
        return str(int(value))
    return str(value)


def text_field(value, where: str, field: str, named: str | None = None) -> str:
    """A string field; numbers are accepted as their text (`scalar_text`: 1000.0 is "1000"), null (and NaN, how
    pandas and parquet write a missing value) as empty; an infinite number and true/false are refused. `named`: how
    messages name it where it is not a column of the row (a turn's content: `turn_name`), else `field 'FIELD'`."""
    named = named or f"field '{field}'"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and math.isinf(value):
        raise DataError(f"{where}: {named} is {value}, a number with no text to train on; give it text or null.")
    if isinstance(value, str):
        if problem := not_text(value):
            raise DataError(f"{where}: {named}: {problem}. Fix the text or remove the row.")
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return scalar_text(value)
    shown = json.dumps(value, ensure_ascii=False, default=str) if isinstance(value, (list, dict)) else repr(value)
    fix = (
        "join its items into one string"
        if isinstance(value, list)
        else "put the text itself there, not an object holding it"
        if isinstance(value, dict)
        else "store the text itself there"
    )
    raise DataError(
        f"{where}: {named} must be a string, got {article(type(value).__name__)} ({_cut(shown)}); {fix} (a data.transform "
        "can do so for every row)."
    )


def _cut(text: str, most: int = 80) -> str:
    return text if len(text) <= most else text[: most - 3] + "..."


def text_alone(row: dict, key: str, system: str | None, where: str) -> str:
    """The text of a raw text input (column `key`), read as it is, without the chat template; DataError when the row
    also gives a system message (column `system`, None for none): a text has no turn to put it in, and it would be
    left out without a word. Every task reads its texts so."""
    text = text_field(row[key], where, key)
    if system is not None and system in row and text_field(row[system], where, system).strip():
        raise DataError(
            f"{where}: field '{system}' gives a system message, but the row's input (field '{key}') is a text, read "
            "as it is without the chat template, so the message would be left out. Give the input as a chat (a "
            "prompt or messages), or leave the system field empty."
        )
    return text


class _Skip(Exception):
    """An example that is well formed but cannot be used; the message is the report's reason."""


def turn_name(field: str, index: int, key: str | None = None) -> str:
    """How messages name the turn at `index` (from 0) of a row's list of turns, counted from 1 as a reader counts
    them: `field 'messages', turn 2`, with one of its keys: `field 'messages', turn 2, key 'content'`."""
    return f"field '{field}', turn {index + 1}" + (f", key '{key}'" if key else "")


TOOLS = "Tool and function turns are not supported: remove them or rewrite them as user/assistant turns."


def parse_turns(value, where: str, field: str, role_key: str, content_key: str, weights: bool = False) -> list[dict]:
    """A list of turns; each may be spelled {role, content} (OpenAI) or {from, value} (ShareGPT), in either format.
    `weights`: an assistant turn's OpenAI `weight` (0 or 1) is read, and a turn of weight 0 keeps `"weight": 0` (no
    loss on it, `data.render`); elsewhere a `weight` is refused rather than ignored. A null weight is no weight: Arrow
    (parquet, the datasets library) gives every turn of a column the keys of all of them, null where a turn had none."""
    if not isinstance(value, list):
        raise DataError(
            f"{where}: field '{field}' must be a list of turns [{{{role_key}: ..., {content_key}: ...}}], got {article(type(value).__name__)}."
        )
    messages = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise DataError(
                f"{where}: {turn_name(field, i)} must be an object {{{role_key}: ..., {content_key}: ...}}, got {article(type(turn).__name__)}."
            )
        rk, ck = (
            (role_key, content_key)
            if role_key in turn
            else (("role", "content") if "role" in turn else ("from", "value"))
        )
        roles = MESSAGE_ROLES if rk == "role" else SHAREGPT_ROLES
        if rk not in turn or ck not in turn:
            raise DataError(
                f"{where}: {turn_name(field, i)} needs the keys '{role_key}' and '{content_key}', has {', '.join(turn) or 'none'}."
            )
        role = turn[rk]
        if not isinstance(role, str) or role not in roles:
            raise DataError(
                f"{where}: {turn_name(field, i)} has the unknown role {role!r}; allowed roles: {', '.join(roles)}. "
                + role_advice(role, roles, TOOLS)
            )
        if turn.get("tool_calls") or turn.get("function_call"):
            raise DataError(
                f"{where}: {turn_name(field, i)} is a turn that calls tools ('tool_calls'/'function_call'). {TOOLS}"
            )
        message = {"role": roles[role], "content": _content(turn[ck], where, turn_name(field, i, ck))}
        if turn.get("weight") is not None:
            message |= _weight(turn["weight"], message["role"], where, turn_name(field, i), weights)
        messages.append(message)
    return messages


# roles other tools write for a user or an assistant turn (Gemini's `model`, chat exports' `bot`)
OTHER_ROLE_NAMES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant", "ai": "assistant"}


def _content(value, where: str, named: str) -> str:
    """A turn's content (`named` as `turn_name` names it): text, or OpenAI's list of content parts, whose text parts
    are joined (as `tunelab serve` reads a request's); a part of another type (an image) is refused, not dropped."""
    if not (isinstance(value, list) and value and all(isinstance(part, dict) for part in value)):
        return text_field(value, where, "content", named)
    texts = []
    for k, part in enumerate(value, 1):
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise DataError(
                f"{where}: {named}, part {k} is {str(part)[:60]!r}; a content part must be text "
                '({"type": "text", "text": ...}): this model reads text only. Remove the row, or that part.'
            )
        texts.append(text_field(part["text"], where, "text", f"{named}, part {k}, key 'text'"))
    return "".join(texts)


def _weight(value, role: str, where: str, item: str, read: bool) -> dict:
    """{"weight": 0} for a turn left out of the loss, {} for weight 1; DataError for anything else."""
    if not read:
        raise DataError(
            f"{where}: {item} has a 'weight', which only the chats of an sft run read (OpenAI's fine-tuning format: "
            "an assistant turn of weight 0 gets no loss); remove it."
        )
    if role != "assistant" or value not in (0, 1):
        raise DataError(
            f"{where}: {item} has weight {value!r}; a weight is 0 (no loss on this answer) or 1, on assistant turns only."
        )
    return {"weight": 0} if value == 0 else {}


def _single_turn(prompt: str, answer: str, system: str, history: list[dict] = ()) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system.strip() else []
    return messages + [*history, {"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def history_turns(value, where: str, field: str) -> list[dict]:
    """An alpaca row's `history` (LLaMA-Factory's multi-turn alpaca): [instruction, response] pairs before its own."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(pair, list) and len(pair) == 2 for pair in value):
        raise DataError(
            f"{where}: field '{field}' must be a list of [instruction, response] pairs (the turns before this row's "
            f"own), got {str(value)[:60]!r}."
        )
    turns = []
    for i, (question, answer) in enumerate(value, 1):  # named from 1, as a reader counts them
        turns.append(
            {"role": "user", "content": text_field(question, where, field, f"field '{field}', pair {i}, instruction")}
        )
        turns.append(
            {"role": "assistant", "content": text_field(answer, where, field, f"field '{field}', pair {i}, response")}
        )
    return turns


def _messages(row: dict, fmt: str, fields: dict[str, str], where: str) -> list[dict]:
    def get(name: str) -> str:
        return text_field(row.get(fields.get(name, name)), where, fields.get(name, name))

    if fmt in ("messages", "sharegpt"):  # the turns, and a system field beside them
        name, spelling = (
            ("messages", ("role", "content")) if fmt == "messages" else ("conversations", ("from", "value"))
        )
        key = fields.get(name, name)
        messages = parse_turns(row[key], where, key, *spelling, weights=True)
        system = get("system")
        own = [m["content"] for m in messages if m["role"] == "system" and m["content"].strip()]
        if system.strip() and own and own != [system]:
            raise DataError(
                f"{where}: the row gives its system message twice, differently: field "
                f"'{fields.get('system', 'system')}' and a system turn in '{key}'; keep one."
            )
        if system.strip() and not own:  # an empty system turn gives way to the field
            messages = [{"role": "system", "content": system}] + [m for m in messages if m["role"] != "system"]
        return messages
    if fmt == "alpaca":
        instruction, extra = get("instruction"), get("input")
        prompt = "\n\n".join(part for part in (instruction, extra) if part.strip()) or instruction
        history = history_turns(row.get(fields.get("history", "history")), where, fields.get("history", "history"))
        return _single_turn(prompt, get("output"), get("system"), history)
    if fmt == "prompt_completion":
        return _single_turn(get("prompt"), get("completion"), get("system"))
    return _single_turn(get("question"), get("answer"), get("system"))


def _check_chat(messages: list[dict], questions: bool = False) -> None:
    """Raise _Skip for conversations that a prompt template cannot turn into a useful example. `questions`: a
    conversation ending with the user's turn is a question to answer (eval rows), which needs no assistant turn."""
    if any(m["role"] == "system" for m in messages[1:]):
        raise _Skip(LATE_SYSTEM)
    rest = messages[1:] if messages and messages[0]["role"] == "system" else messages
    asked = questions and bool(rest) and rest[-1]["role"] == "user"
    if not asked and not any(m["role"] == "assistant" for m in rest):
        raise _Skip("no assistant message to learn from")
    if not asked and not any(m["role"] == "assistant" and m.get("weight", 1) for m in rest):
        raise _Skip("every assistant message has weight 0: nothing to learn from")
    if rest[0]["role"] != "user":
        raise _Skip(NO_USER_START)
    if any(m["role"] == "assistant" and not m["content"].strip() for m in rest):
        raise _Skip("empty answer")
    if any(m["role"] == "user" and not m["content"].strip() for m in rest):
        raise _Skip(EMPTY_QUESTION)


def _example(
    record: Record, fmt: str, fields: dict[str, str], system_prompt: str | None, questions: bool = False
) -> Example:
    where = location(record.path, record.line)
    if fmt == "text":
        plain = is_plain_text(record.path)
        key = "text" if plain else fields.get("text", "text")
        text = text_alone(record.row, key, None if plain else fields.get("system", "system"), where)
        if not text.strip():
            raise _Skip("empty text")
        return Example(None, text, record.path, record.line)
    messages = _messages(record.row, fmt, fields, where)
    if messages and messages[0]["role"] == "system" and not str(messages[0]["content"]).strip():
        messages = messages[1:]  # an empty system message is none, as "system": "" is in the other formats
    if trained_system(system_prompt) and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    _check_chat(messages, questions)
    return Example(messages, None, record.path, record.line)


def refuse_unread(record: Record, fmt: str, fields: dict[str, str], option: str = FIELDS_OPTION) -> None:
    """DataError when data.fields maps a field that format `fmt` does not read to a column the record has: the
    column would be left out of the example without a word (a prompt_completion row's `past` with {history: past}). A file of
    another format, without the column, leaves the mapping to the files that use it."""
    required, optional = FORMATS[fmt]
    read = required + optional + (("system",) if fmt == "text" else ())  # a text refuses a system message
    unread = [name for name, column in fields.items() if name not in read and column in record.row]
    if unread:
        name = unread[0]
        raise DataError(
            f"{location(record.path, record.line)}: {option} maps {name} -> {fields[name]!r}, which the {fmt} format "
            f"of this file does not read (its fields: {', '.join(required + optional)}), so the column would be "
            f"left out of every example. Remove the mapping, or give the rows in a format with a {name} field."
        )


def _check_required(record: Record, fmt: str, fields: dict[str, str], option: str = FIELDS_OPTION) -> None:
    required, optional = FORMATS[fmt]
    for name in required:
        key = fields.get(name, name)
        if key not in record.row:
            expected = ", ".join(list(required) + [f"optional {o}" for o in optional])
            mapped = f" ({_short(option)} maps {name} to '{key}')" if key != name else ""
            raise DataError(
                f"{location(record.path, record.line)}: field '{key}' is missing{mapped}. The {fmt} format expects the "
                f"fields {expected}; this record has {', '.join(map(str, record.row)) or 'no fields'}. Add the field, or "
                f"map your column names with {_short(option)} (e.g. {{{name}: your_column}})."
            )


def to_examples(
    records: list[Record],
    fmt: str,
    fields: dict[str, str],
    system_prompt: str | None,
    report: DataReport,
    questions: bool = False,
    option: str = FIELDS_OPTION,
    lenient: bool = False,
) -> list[Example]:
    """Convert records; fmt "auto" detects the format per file from its first record. Counts reads and skips in report.
    A data.fields mapping of an optional field (system, input) to a column that no record of a file has is an error,
    as one of a required field is: it would be left out of every example. `questions`: rows to ask (eval), where a
    conversation may end with the user's question and no answer, read one at a time (not checked so). `option` names
    where `fields` was set in the messages (a mixture's source: its entry of data.train). `lenient` (an eval file):
    a row may give a field under its own name instead of the mapped column (`row_fields`)."""
    check_fields(fields, option)
    if fmt != "auto" and fmt not in FORMATS:
        raise ConfigError(f"option 'data.format' is {fmt!r}; allowed values: auto, {', '.join(FORMATS)}.")
    examples = []
    file_format: dict[str, str] = {}
    unused = UnusedMappings(lenient=lenient, option=option)
    unread = UnreadColumns()
    mapping = fields
    case = CaseMatch(CANONICAL, mapping.values())
    for record in records:
        record = record if is_plain_text(record.path) else case.match(record)
        report.read(record.path)
        fields = row_fields(record.row, mapping) if lenient else mapping
        chosen = file_format.get(record.path)
        if chosen is None:
            if is_plain_text(record.path):
                chosen = "text"
            elif fmt == "auto":
                try:
                    chosen = detect_format(record.row, fields, option)
                except DataError as exc:
                    hint = headerless(record.path, record.row)
                    raise DataError(f"{location(record.path, record.line)}: {exc}{hint}") from None
            else:
                chosen = fmt
            file_format[record.path] = report.formats[record.path] = chosen
        unused.see(record, {name: mapping[name] for name in FORMATS[chosen][1] if name in mapping})
        if not is_plain_text(record.path):
            _check_required(record, chosen, fields, option)
            if not questions:  # a question file is read with the mapping of the run's training files
                refuse_unread(record, chosen, fields, option)
            unread.see(record, chosen, FORMATS[chosen], fields, questions)
        elif "text" not in record.row:  # a data.transform's row
            raise DataError(
                f"{location(record.path, record.line)}: a .txt file is one record whose text is its field 'text', but "
                f"data.transform returned a row without it ({', '.join(map(str, record.row)) or 'no fields'}). Keep "
                "the field 'text' in the rows of .txt files."
            )
        try:
            examples.append(_example(record, chosen, fields, system_prompt, questions))
        except _Skip as skip:
            report.skip(str(skip), record.path, record.line)
    if not questions:
        unused.refuse()
    report.notes += case.notes()
    note_rows_as_text(records, report)
    report.notes += unread.notes(
        file_format, _short(option), {f for f, (_, optional) in FORMATS.items() if "input" in optional}
    )
    return examples
