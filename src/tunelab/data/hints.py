"""What to write instead, for data whose names are not tunelab's: the data.fields mapping a row's columns most likely
need (a spreadsheet's `Task Instruction`, GPTeacher's `response`), and the role a turn spelt as another tool spells
it means (`human`, Gemini's `model`), and the input and label columns of a classifier's row (`Category,Message
Text`). formats.py and the readers of the tasks ask these when they refuse a row; they read nothing but the row."""

from __future__ import annotations

import json
import re

from tunelab.errors import article


def mapping_hint(row: dict, formats: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]) -> str:
    """The data.fields mapping a row most likely needs: the columns that name a format's fields but for their case
    (Question, Answer: {question: Question, answer: Answer}); else the format whose every required field one column
    alone names: as a word of its name (`Task Instruction`, `Model Output`) or by a word other tools use for it
    (`response` for an answer, `query` for a question), however many other columns the row has (an `id`, a
    `source`); the format whose fields the columns name themselves most often wins, as `prompt`, `response` reads
    as prompt_completion. Its optional fields are added where a column's words name them (`Extra Input`)."""
    named = {str(key).strip().lower().replace(" ", "_"): key for key in row}
    for required, _ in formats.values():
        if all(name in named for name in required):  # one at least is named otherwise, or the format was found
            return "{" + ", ".join(f"{name}: {named[name]}" for name in required if named[name] != name) + "}"
    best: tuple[int, int, dict[str, str]] | None = None
    for rank, fmt in enumerate(_HINT_ORDER):
        required, optional = formats[fmt]
        found = {name: _column_for(name, row, own_name_only=False) for name in required}
        if None in found.values() or len(set(found.values())) < len(found):
            continue
        own = sum(_column_for(name, row, own_name_only=True) is not None for name in required)
        if best is None or (own, -rank) > best[:2]:
            extra = {name: col for name in optional if (col := _column_for(name, row, own_name_only=True)) is not None}
            best = (own, -rank, {**found, **{k: v for k, v in extra.items() if v not in found.values()}})
    if best is not None and any(col != name for name, col in best[2].items()):
        return "{" + ", ".join(f"{name}: {_flow(col)}" for name, col in best[2].items() if col != name) + "}"
    return "{prompt: question, completion: answer}"


def nested_hint(row: dict, names: tuple[str, ...]) -> str:
    """Advice for a row whose fields sit inside a list or object of one column (self-instruct's `instances`:
    [{input, output}, ...] beside its `instruction`), which no format reads: a data.transform makes the rows of it.
    Empty when no column holds objects with one of the fields `names`."""
    for key, value in row.items():
        items = [value] if isinstance(value, dict) else value if isinstance(value, list) else []
        inner = [k for k in dict.fromkeys(k for item in items if isinstance(item, dict) for k in item) if k in names]
        if inner:
            each = ", ".join(f"{k!r}: item[{k!r}]" for k in inner)
            return (
                f" The column {str(key)!r} holds {'objects' if isinstance(value, list) else 'an object'} with the "
                f"fields {', '.join(inner)}, which no format reads inside a column: a data.transform can make a row "
                f"of each (return [{{**row, {each}}} for item in row.pop({str(key)!r})], a list of rows)."
            )
    return ""


# the words other tools name a format's fields with (LLaMA-Factory's `response`, GPTeacher's, databricks-dolly's)
_PROMPT_WORDS = ("instruction", "prompt", "question", "query")
_ANSWER_WORDS = ("output", "completion", "answer", "response", "reply", "target")
_SAME_ROLE = {name: words for words in (_PROMPT_WORDS, _ANSWER_WORDS) for name in words}
# on a tie, the format whose fields the columns most likely mean: a query and a response are a prompt and completion
_HINT_ORDER = ("messages", "sharegpt", "prompt_completion", "question_answer", "alpaca", "text")


def _column_for(name: str, row: dict, own_name_only: bool) -> str | None:
    """The one column of `row` that a word of its name calls `name` (or, unless own_name_only, a word of name's
    role, _SAME_ROLE); None where none or several do."""
    words = {key: set(re.findall(r"[a-z]+", str(key).lower())) for key in row}
    hits = [key for key, w in words.items() if name in w]
    if not hits and not own_name_only:
        hits = [key for key, w in words.items() if w & set(_SAME_ROLE.get(name, ()))]
    return hits[0] if len(hits) == 1 else None


def _flow(column: str) -> str:
    """A column name as a YAML flow mapping reads it back: quoted where a character would end or change it."""
    return column if re.fullmatch(r"[A-Za-z_][\w .-]*", column) and column == column.strip() else json.dumps(column)


# words in a column's name that say it holds a classifier's input, or its label (a spreadsheet's `Message Text`)
_INPUT_WORDS = {"text", "message", "sentence", "content", "body", "input", "query", "utterance", "review", "comment"}
_LABEL_WORDS = {"label", "category", "class", "intent", "target", "sentiment", "tag", "domain"}


def _named(row: dict, words: set[str]) -> list:
    """The columns of `row` whose name holds one of `words` (`Message Text`, `sentence1`)."""
    return [key for key in row if words & set(re.findall(r"[a-z]+", str(key).lower()))]


def input_pair_hint(row: dict, fields: dict[str, str]) -> str:
    """What to do with a row of two input columns (GLUE's `sentence1` and `sentence2`): a head reads one a row."""
    label = fields.get("label", "label")
    named = [key for key in _named(row, _INPUT_WORDS) if key != label and isinstance(row[key], str)]
    if len(named) < 2:
        return ""
    return (
        f" The row has {len(named)} input columns ({', '.join(map(str, named))}) and one is read a row: to use them all "
        f"(a sentence pair), join them with a data.transform, e.g. `return {joined_inputs(named, fields.get('text', 'text'))}`."
    )


def joined_inputs(columns: list, into: str) -> str:
    """The row a data.transform returns to read the text `columns` as one input, column `into`, a line break between
    them: `{'text': row.pop('sentence1') + '\\n' + row.pop('sentence2'), **row}` (the joined columns are popped
    before the rest of the row is copied, so none is read, or noted as unread, apart)."""
    joined = " + '\\n' + ".join(f"row.pop({str(c)!r})" for c in columns)
    return f"{{{into!r}: {joined}, **row}}"


def input_mapping(row: dict, fields: dict[str, str]) -> str:
    """The data.fields mapping a classify row most likely needs: its input from the column whose name says so (else
    the one of the longest text), and, where the row has no label column yet, its label from the column whose name
    says so: `Category,Message Text` -> {text: Message Text, label: Category}."""

    label = fields.get("label", "label")
    labels = [] if label in row else _named(row, _LABEL_WORDS)
    free = [key for key in row if key != label and key not in labels and isinstance(row[key], str)]
    inputs = [key for key in _named(row, _INPUT_WORDS) if key in free] or sorted(free, key=lambda k: -len(row[k]))[:1]
    if not inputs:
        return "{text: message}"
    pairs = [("text", inputs[0])] + ([("label", labels[0])] if len(labels) == 1 else [])
    return "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"


# roles other tools write for a user or an assistant turn (Gemini's `model`, chat exports' `bot`)
OTHER_ROLE_NAMES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant", "ai": "assistant"}


def role_advice(role, roles: dict[str, str], tools: str) -> str:
    """What to do with a turn's unknown role: the allowed spelling of a user or assistant turn written another way
    ('User', 'human' in a messages row, Gemini's 'model'); else the tool turns, which no format reads."""
    spelt = str(role).strip().lower() if isinstance(role, str) else None
    meant = spelt if spelt in roles else OTHER_ROLE_NAMES.get(spelt or "")
    if meant is None:
        return tools
    allowed = next((name for name in roles if roles[name] == roles.get(meant, meant)), meant)
    return (
        f"{role!r} is how other tools write {article(roles.get(meant, meant))} turn: write it as {allowed!r} (data.transform "
        "can rewrite the roles of every row)."
    )
