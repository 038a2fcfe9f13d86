"""What a head reads (the classify and reward tasks): a raw text or a chat, rendered to token ids, and right-padded.

An input is one of (the first present wins; `data.fields` maps these names to your columns):

    text                               raw text, tokenized as it is (with BOS when the tokenizer adds one); no system
                                       message (a row's `system` beside it is refused: `plain_text`)
    messages | conversations           a chat: [{role, content}] or ShareGPT's [{from, value}]
    prompt | question | instruction    one user turn (+ the row's `system`, else data.system_prompt); an instruction
                                       takes the row's `input` and `history` as sft's alpaca rows do (beside
                                       another input they are left out, and counted in a note: `counted_records`)

A chat is rendered with the run's prompt template: one that ends with a user turn gets the assistant prefix
(`add_generation_prompt`), so the pooled last token is where the model would start its answer; one that ends with an
answer is rendered whole (its end-of-turn marker included). Nothing is appended to a raw text: its last token is the
pooled one, unless classify.prompt_format puts it into a fixed text first: "Request: {text}\nDomain:" makes the
last token a cue whose hidden state sums the request up (as PromptEOL does for sentence embeddings, Jiang et al. 2023,
"Scaling Sentence Embeddings with Large Language Models"). Training, predict and eval format alike (`render`).

Inputs longer than data.max_length are dropped or cut: `tasks/head_fit.py`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from tunelab.config import PLACEHOLDER, RunConfig
from tunelab.data.case import CaseMatch
from tunelab.data.columns import ALPACA_ONLY, UnreadColumns, filled
from tunelab.data.formats import (
    EMPTY_QUESTION,
    LATE_SYSTEM,
    NO_USER_START,
    UnusedMappings,
    history_turns,
    parse_turns,
    text_alone,
    text_field,
)
from tunelab.data.hints import input_mapping, input_pair_hint, joined_inputs
from tunelab.data.leading import ends
from tunelab.data.loader import refuse_special_system, split_eval
from tunelab.data.reasoning import CLOSE, answer_apart, prompt_opens_thought
from tunelab.data.render import encode, special_text_in, special_texts
from tunelab.data.repeats import note_repeated_eval
from tunelab.data.report import DataReport, location, location_path
from tunelab.data.size_bound import size_bound, surely_longer
from tunelab.data.sources import Record, headerless, note_held_out_files, read_records
from tunelab.data.templates import Template, default_bos, resolve_template
from tunelab.data.transform import apply_transform, load_transform
from tunelab.errors import ConfigError, DataError, article, counted

TEXT_FIELDS = ("text",)
CHAT_FIELDS = ("messages", "conversations")
PROMPT_FIELDS = ("prompt", "question", "instruction")
INPUT_FIELDS = TEXT_FIELDS + CHAT_FIELDS + PROMPT_FIELDS
OPTIONAL_FIELDS = (
    "system",
    "input",
    "history",
)  # what a row may leave out: a mapping of one to no column would drop it silently


@dataclass
class Input:
    """One input of a head: a raw text or a chat (exactly one is set)."""

    text: str | None = None
    messages: list[dict] | None = None

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


Opens = Callable[[list[dict]], bool]  # a prompt's turns -> its template ends their generation prompt with <think>


def thought_apart(item: Input, opens: Opens | None = None) -> tuple[Input, str | None]:
    """(the input with its answer's thought left out, the thought) of a chat ending with the assistant's answer: a
    reward model scores the answer, not the thought a reasoning model writes before it (data/reasoning.py). An input
    without one is given back as it is; one that is all thought keeps an empty answer. `opens` (`thought_opener`):
    whether the run's template ends the answer's prompt with `<think>`; there an answer that closes a thought it
    never opened (`...</think>answer`, as a model writes it after such a prompt) has its text up to `</think>` read as
    the thought, as the server, predict's `--answer` and the reward function read it. An answer without `</think>` is
    the answer as written: a row's answer, not a sample cut inside its thought."""
    last = item.messages[-1] if item.messages else None
    if last is None or last["role"] != "assistant" or not isinstance(last["content"], str):
        return item, None
    opened = opens is not None and CLOSE in last["content"] and opens(item.messages[:-1])
    thought, answer = answer_apart(last["content"], opened)
    if thought is None:
        return item, None
    return dataclasses.replace(item, messages=[*item.messages[:-1], {**last, "content": answer}]), thought


def column(row: dict, fields: dict[str, str], name: str, lenient: bool = False) -> str | None:
    """The column holding canonical field `name` in `row` (data.fields applied), or None when absent. `lenient`
    (eval and predict files) falls back to the canonical name when the mapped column is missing, so a test file with
    a `label` column serves a run that mapped label to another column of its training file. A column that data.fields
    maps to another field is that field's only: with {prompt: text}, the column `text` is the prompt, not a text."""
    key = fields.get(name, name)
    claimed = {other for field, other in fields.items() if field != name}  # columns that data.fields gives others
    if key in row and (name in fields or key not in claimed):
        return key
    return name if lenient and name in row and name not in claimed else None


def in_order(names: tuple[str, ...], fields: dict[str, str]) -> tuple[str, ...]:
    """A task's input fields `names` (alternatives: a row's input is the first of them it has) in the order they are
    tried: those data.fields maps first, since a mapping says which column the input is ({prompt: q} over a row that
    also has a `text` column reads q), then the others in their own order."""
    return tuple(n for n in names if n in fields) + tuple(n for n in names if n not in fields)


def check_fields(fields: dict[str, str], allowed: tuple[str, ...], task: str) -> None:
    unknown = [k for k in fields if k not in allowed]
    if unknown:
        raise ConfigError(
            f"option 'data.fields' maps {counted(len(unknown), 'unknown field')} ({', '.join(unknown)}) for task "
            f"{task}; the fields you can map are {', '.join(allowed)}."
        )


def as_turns(value, where: str, key: str) -> list[dict]:
    """A message list in either spelling ({role, content} or {from, value}), or one such message on its own."""
    if isinstance(value, dict):
        value = [value]
    sharegpt = isinstance(value, list) and value and isinstance(value[0], dict) and "from" in value[0]
    return parse_turns(value, where, key, *(("from", "value") if sharegpt else ("role", "content")))


def with_system(
    messages: list[dict],
    row: dict,
    fields: dict[str, str],
    where: str,
    system_prompt: str | None,
    lenient: bool = False,
):
    """Prepend the row's system field (`column`, `lenient` as there), else data.system_prompt, unless the chat starts
    with a system message, as sft does (`data.formats`): an empty system message is none (never an empty block), and a
    system field beside another system message of the chat is refused (which one was meant?)."""
    if messages and messages[0]["role"] == "system" and not messages[0]["content"].strip():
        messages = messages[1:]
    key = column(row, fields, "system", lenient)
    system = text_field(row[key], where, key) if key else ""
    if messages and messages[0]["role"] == "system":
        if system.strip() and system != messages[0]["content"]:
            raise DataError(
                f"{where}: the row gives its system message twice, differently: field '{key}' and the chat's system "
                "turn; keep one."
            )
        return messages
    system = system if system.strip() else (system_prompt or "")
    return ([{"role": "system", "content": system}] if system.strip() else []) + messages


def plain_text(row: dict, fields: dict[str, str], where: str, key: str, lenient: bool = False) -> str:
    """The text of a raw text input (field `key`); DataError when the row gives a system message too (its `system`
    field, `column`, `lenient` as there), as sft refuses it (`data.formats.text_alone`)."""
    return text_alone(row, key, column(row, fields, "system", lenient), where)


def user_turns(row: dict, fields: dict[str, str], where: str, name: str, key: str, lenient: bool = False) -> list[dict]:
    """The turns of a prompt field `name` (PROMPT_FIELDS) in column `key`: one user turn, which for an `instruction`
    is joined to the row's `input` by a blank line and follows the turns of its `history` ([instruction, response]
    pairs), as sft reads alpaca's (`data.formats`)."""
    prompt = text_field(row[key], where, key)
    if name != "instruction":
        return [{"role": "user", "content": prompt}]
    if extra := column(row, fields, "input", lenient):
        more = text_field(row[extra], where, extra)
        prompt = "\n\n".join(part for part in (prompt, more) if part.strip()) or prompt
    history = column(row, fields, "history", lenient)
    earlier = history_turns(row[history], where, history) if history else []
    return [*earlier, {"role": "user", "content": prompt}]


def read_input(
    row: dict, fields: dict[str, str], where: str, system_prompt: str | None, lenient: bool = False
) -> Input | None:
    """The row's input, the first of INPUT_FIELDS (`in_order`) it has, or None when it has none; DataError for a field of
    the wrong type."""
    for name in in_order(INPUT_FIELDS, fields):
        key = column(row, fields, name, lenient)
        if key is None:
            continue
        if name == "text":
            return Input(text=plain_text(row, fields, where, key, lenient))
        if name in CHAT_FIELDS:
            turns = as_turns(row[key], where, key)
            return Input(messages=with_system(turns, row, fields, where, system_prompt, lenient))
        turns = user_turns(row, fields, where, name, key, lenient)
        return Input(messages=with_system(turns, row, fields, where, system_prompt, lenient))
    return None


def chat_flaw(*chats: list[dict] | None) -> str | None:
    """Why sft would skip one of these chats (`data.formats`), which every task skips too: a system message after the
    first turn (a template may refuse it, or render it in the middle of the conversation), a first turn (after the
    system message) that is not the user's (many templates refuse it; the others render an answer to no question),
    or a blank user turn. None for chats without any, and for texts (None)."""
    for messages in (m for m in chats if m is not None):
        if any(m["role"] == "system" for m in messages[1:]):
            return LATE_SYSTEM
        rest = messages[1:] if messages and messages[0]["role"] == "system" else messages
        if rest and rest[0]["role"] != "user":
            return NO_USER_START
        if any(m["role"] == "user" and not m["content"].strip() for m in messages):
            return EMPTY_QUESTION
    return None


def is_empty(item: Input) -> bool:
    if item.messages is not None:
        return not any(m["content"].strip() for m in item.messages if m["role"] != "system")
    return not (item.text or "").strip()


def formatted(text: str, text_format: str | None) -> str:
    """`text` put into classify.prompt_format's {text} (str.replace: other braces stay as written), or as it is."""
    return text_format.replace(PLACEHOLDER, text) if text_format else text


def input_kind(inputs: list[Input]) -> str:
    """What the inputs are, as a run's facts record it: chat, text or mixed."""
    kinds = {"chat" if item.is_chat else "text" for item in inputs}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def refuse_chat_format(items: list[Input], cfg: RunConfig) -> None:
    """ConfigError when classify.prompt_format is set and the inputs (those of data.train and data.eval) are chats:
    the template already ends a chat at the answer's position, and wrapping the rendered template in more text would
    not be a chat any more."""
    if cfg.classify.prompt_format and any(item.is_chat for item in items):
        where = ", ".join(cfg.data.train + ([cfg.data.eval] if cfg.data.eval else []))
        raise ConfigError(
            f"option 'classify.prompt_format' formats text inputs, but {where} holds chats (messages, prompts or "
            "questions, rendered with the prompt template). Remove the option, or give the rows as text (data.fields, "
            "e.g. {text: question}); in a chat, data.system_prompt says the same."
        )


def render(
    inputs: list[Input],
    tokenizer,
    template: Template,
    wheres: list[str] | None = None,
    text_format: str | None = None,
) -> list[list[int]]:
    """Token ids of each input (see the module docstring); `wheres` (file:line per input) locates template errors;
    `text_format` (classify.prompt_format) wraps each text input."""
    return render_within(inputs, tokenizer, template, wheres, text_format)[0]


def render_within(
    inputs: list[Input],
    tokenizer,
    template: Template,
    wheres: list[str] | None = None,
    text_format: str | None = None,
    drop_over: int | None = None,
    keep_over: int | None = None,
) -> tuple[list[list[int]], dict[int, int], dict[int, tuple[int, int]]]:
    """`render`, but an input of more than `drop_over` tokens by its size alone (data/size_bound.py), which the
    caller drops whatever its tokens, is not tokenized: its ids are [] and it is in the first dict returned, index ->
    the fewest tokens it can have. An input over `keep_over` tokens by its size, which the caller cuts to `keep_over`
    (data.overlong=truncate), is read from its head and its tail alone where that is proven (data/leading.py `ends`):
    its ids are its first `keep_over` + 1 or more tokens then its last `keep_over` or more, all that `head_fit.fit`
    keeps of it; it is in the first dict too, and in the second, index -> (where its tail starts in its ids, in its
    rendered text), which `head_fit.starts` reads the answer's cue by. A chat ending with an answer is read so only
    where its tail starts before the place its text and the text of its prompt alone part (the tail then holds the
    cue); else it is tokenized whole."""
    bos = [tokenizer.bos_token_id] if default_bos(tokenizer) else []
    chats, plain, specials = {}, {}, special_texts(tokenizer)
    for i, item in enumerate(inputs):
        where = f"{wheres[i]}: " if wheres else ""
        if item.messages is None:
            plain[i] = formatted(item.text, text_format)  # special-token text stays characters
            continue
        found = special_text_in(item.messages, specials)
        if found:
            raise DataError(f"{where}{found} would be read as a control token; remove it from the row.")
        try:
            chats[i] = template.render(item.messages, add_generation_prompt=item.messages[-1]["role"] == "user")[0]
        except ConfigError as exc:
            raise ConfigError(f"{where}{exc}") from None
    over = {}
    if drop_over is not None:
        bound = size_bound(tokenizer)
        for i, text in (chats | plain).items():
            lead = len(bos) if i in plain else 0  # BOS goes before a text input
            if surely_longer(text, drop_over - lead, bound):
                over[i] = bound.least_tokens(text) + lead
    ids, tails = dict.fromkeys(over, []), {}
    if keep_over is not None:
        read, least, tails = _ends(tokenizer, inputs, template, chats, plain, keep_over, bos)
        ids, over = ids | read, over | least
    for texts, is_plain in ((chats, False), (plain, True)):
        texts = {i: text for i, text in texts.items() if i not in ids}
        encoded = encode(tokenizer, list(texts.values()), [[] for _ in texts], plain=is_plain)
        ids |= {i: (bos if is_plain else []) + row for i, (row, _) in zip(texts, encoded)}
    return [ids[i] for i in range(len(inputs))], over, tails


def _ends(
    tokenizer, inputs: list, template: Template, chats: dict, plain: dict, limit: int, bos: list[int]
) -> tuple[dict, dict, dict]:
    """Of the inputs over `limit` tokens by their size that `render_within` reads from their head and tail (its
    docstring): their ids, the fewest tokens each can have, and where each tail starts (in its ids, in its text)."""
    bound, out, over, tails = size_bound(tokenizer), {}, {}, {}
    for i, text in (chats | plain).items():
        lead = bos if i in plain else []  # BOS goes before a text input
        if not surely_longer(text, limit - len(lead), bound):
            continue
        cut = ends(tokenizer, text, limit + 1, limit, plain=i in plain)
        if cut is None or (i in chats and not _cue_in_tail(inputs[i].messages, template, text, cut[3])):
            continue
        head, tail, end, start = cut
        out[i] = lead + head + tail
        over[i] = len(out[i]) + bound.least_tokens(text[end:start])
        tails[i] = (len(lead) + len(head), start)
    return out, over, tails


def _cue_in_tail(messages: list[dict], template: Template, text: str, start: int) -> bool:
    """Whether the tail of a chat's rendered `text` from `start` (a break) holds what `head_fit.starts` reads its
    answer's cue by: true of a chat ending with the user's turn (no cue), and of one ending with an answer where the
    texts of its prompt alone, with and without the assistant cue, are the chat's text up to and past `start`."""
    if messages[-1]["role"] != "assistant":
        return True
    prompts = [template.render(messages[:-1], add_generation_prompt=cue)[0] for cue in (False, True)]
    return all(len(p) > start and p[: start + 1] == text[: start + 1] for p in prompts)


def thought_opener(tokenizer, template: Template) -> Opens:
    """Whether `template` ends a prompt's generation prompt with `<think>` (DeepSeek-R1's later templates), so that
    an answer to it starts inside the thought (data/reasoning.py `prompt_opens_thought`), as a function of the prompt's
    turns (a system message first, as the rows give it). A prompt that does not end with the user's turn has no
    generation prompt."""

    def opens(prompt: list[dict], where: str | None = None) -> bool:
        if not prompt or prompt[-1]["role"] != "user":
            return False
        ids = render([Input(messages=prompt)], tokenizer, template, [where] if where else None)[0]
        return prompt_opens_thought(tokenizer, ids)

    return opens


def pad_rows(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and position_ids, all (B, T) int64, T the longest row."""
    shape = (len(rows), max(len(r) for r in rows))
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    for b, ids in enumerate(rows):
        input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[b, : len(ids)] = 1
    position_ids = torch.arange(shape[1]).expand(shape).clone()
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}


def no_input_error(where: str, row: dict, fields: dict[str, str], what: str, command: str | None = None) -> DataError:
    """DataError for a row without an input. `command` (tunelab eval, tunelab predict): the file is read with the
    run's data.fields, which cannot be changed for it, so the message names the columns it may hold instead."""
    mapped = ", ".join(f"{k} -> {v}" for k, v in fields.items() if k in INPUT_FIELDS)
    has = ", ".join(map(str, row)) or "no fields"
    if command:
        also = f" (or a column the run's data.fields maps one of them to: {mapped})" if mapped else ""
        return DataError(
            f"{where}: the row has no input to {what}: {command} reads each row's input from a column named "
            f"{', '.join(INPUT_FIELDS)}{also}; this row has {has}. Rename the column in {location_path(where)} to "
            "one of those names."
        )
    mapped = ", ".join(f"{k} -> {v}" for k, v in fields.items())
    return DataError(
        f"{where}: the row has no input to {what}: give it one of the fields {', '.join(INPUT_FIELDS)} (this row has "
        f"{has}{'; data.fields maps ' + mapped if mapped else ''})."
        + (
            headerless(location_path(where), row)  # its column names are data: no mapping of them helps
            or f" Rename the column or map it with data.fields, e.g. {input_mapping(row, fields)}."
            + input_pair_hint(row, fields)
        )
    )


def counted_records(
    paths: list[str],
    report: DataReport,
    kind: str,
    fields: dict[str, str],
    lenient: bool = False,
    delimiter: str = "auto",
    task: str | None = None,
    names: tuple[str, ...] = (),
    transform: str | None = None,
) -> Iterator[Record]:
    """The records of `paths` (`data.sources`) for a task's reader, each counted as read in `report`, which names the
    files' format `kind` (label rows, preference pairs, prompts). Once they are all read, a mapping in `fields`
    (data.fields) of an optional field (OPTIONAL_FIELDS) to a column that no record of the files has is a DataError
    naming them, as in sft (`data.formats.UnusedMappings`; `lenient`: the field's own name serves too). The other
    fields are an input or a target, which every row needs: a row without one is refused on its own. `delimiter`:
    data.delimiter, the separator of the training files' .csv rows. `task` (classify, reward, dpo) reads the fields
    `names`: the columns of text, lists and objects that neither these nor `fields` name are noted in `report`, as
    sft notes them (`data.columns`); without `task` (grpo, whose reward functions may read any column; the new rows
    of tunelab predict) none are. A column named as one of `names` or of `fields`' columns but for its case is read
    as it (`data.case`), in every task. `transform`: data.transform, which takes every record first, as in sft (its
    dropped rows counted in `report`, a record it makes several rows of named by its row: `data.transform`)."""
    unused = UnusedMappings(lenient, together=True)
    lost: dict[tuple[str, str], list] = {}  # (input or history, its column) -> [rows, first record] leaving it out
    others = UnreadColumns()
    inputs = in_order(tuple(n for n in INPUT_FIELDS if n in names), fields)
    second: dict[tuple[str, str, str], list] = {}  # (file, input column read, one left out) -> [rows, first record]
    case = CaseMatch(names, fields.values())
    records = read_records(paths, delimiter, report=report)
    records = apply_transform(records, load_transform(transform), transform, report)
    for record in map(case.match, records):  # after data.transform, which sees the columns as written
        report.read(record.path)
        report.formats.setdefault(record.path, kind)
        unused.see(record, {name: key for name, key in fields.items() if name in OPTIONAL_FIELDS})
        for found in unread_columns(record.row, fields, lenient):
            lost.setdefault(found, [0, record])[0] += 1
        if task:
            others.see_others(record, (names, ()), fields)
            given = [(name, key) for name in inputs if (key := column(record.row, fields, name, lenient))]
            chosen = given and given[0][0] in fields  # data.fields names the input: the others are left out knowingly
            for _, key in (pair for pair in given[1:] if filled(record.row[pair[1]]) and not chosen):
                second.setdefault((record.path, given[0][1], key), [0, record])[0] += 1
        yield record
    unused.refuse()
    report.notes += case.notes()
    if task:
        report.notes += _second_inputs(second, task, inputs, fields, lenient)
        field = "text" if "text" in names else "prompt"
        named = [n for n in names if n not in ALPACA_ONLY]
        reads = f"task {task} reads the fields {', '.join(named[:-1])} and {named[-1]} (an instruction's input and history too)"
        report.notes += others.task_notes(task, reads, field)
    for (name, key), (rows, first) in lost.items():
        mapped = f" (data.fields' {name})" if key != name else ""
        report.notes.append(
            f"{first.path}: {counted(rows, 'row')} {'has' if rows == 1 else 'have'} a column '{key}'{mapped} that only an instruction reads (e.g. "
            f"{location(first.path, first.line)}): their prompt is another field, so it is left out; map the prompt's "
            "column to instruction (data.fields, e.g. {instruction: your_column}) to read it as sft's alpaca rows do"
        )


def _second_inputs(
    second: dict[tuple[str, str, str], list], task: str, inputs: tuple[str, ...], fields: dict[str, str], lenient: bool
) -> list[str]:
    """The notes of the rows that give more than one of the task's input fields `inputs` (a classify row with `text`
    and `question`, a pair with `prompt` and `instruction`) and no data.fields mapping of one: the first is read, the
    others are left out. sft notes a column its format leaves unread alike (`data.columns`)."""
    out = []
    for (path, read, left), (rows, first) in second.items():
        name = next(n for n in inputs if column(first.row, fields, n, lenient) == left)
        field = "prompt" if name == "question" else name  # a question is read as a prompt is: one user turn
        texts = all(isinstance(first.row.get(key), str) for key in (read, left))  # a chat's turns are not joined so
        join = f" (e.g. return {joined_inputs([read, left], read)})" if texts else ""
        out.append(
            f"{path}: {counted(rows, 'row')} {'gives' if rows == 1 else 'give'} more than one input (e.g. "
            f"{location(first.path, first.line)}): task {task} reads one a row, the first of the fields "
            f"{', '.join(inputs)} the row has, here column '{read}', and leaves column '{left}' out. To read "
            f"'{left}' instead, map {field} to it with data.fields (e.g. {{{field}: {left}}}: a mapped field is tried "
            f"first, and the note is silenced); to use both, join them with a data.transform{join}"
        )
    return out


def unread_columns(row: dict, fields: dict[str, str], lenient: bool) -> list[tuple[str, str]]:
    """(field, column) of the input and history fields (`column`: data.fields applied) holding something, in a row
    whose input is not an instruction (`user_turns` joins them to an instruction only)."""
    if (
        next((name for name in in_order(INPUT_FIELDS, fields) if column(row, fields, name, lenient)), None)
        == "instruction"
    ):
        return []
    return [(name, key) for name in ALPACA_ONLY if (key := column(row, fields, name, lenient)) and filled(row[key])]


def refuse_sft_recipes(cfg: RunConfig) -> None:
    """ConfigError for the data recipes of task sft, which the readers of the other tasks would pass over without a
    word: weighted sources (mappings in data.train), train.group_by_length, data.format (each task reads rows of its
    own kind) and data.train_on_prompt (no task but sft puts a loss on the tokens of a prompt). data.transform is read
    by every task (`counted_records`)."""
    sources = [i for i, entry in enumerate(cfg.data.train, 1) if not isinstance(entry, str)]
    if sources:
        raise ConfigError(
            f"option 'data.train', entry {sources[0]}: weighted sources (mappings) are read by task sft only; a "
            f"{cfg.task} run reads a list of files. Give the files as plain paths."
        )
    d = cfg.data
    for name, value in (
        ("train.group_by_length", cfg.train.group_by_length),
        ("data.format", d.format != "auto"),
        ("data.train_on_prompt", d.train_on_prompt),
    ):
        if value:
            raise ConfigError(f"option '{name}' is for task sft; {article(cfg.task)} run does not use it. Remove it.")


def read_task_data(cfg: RunConfig, tokenizer, seed: int, read, fields: tuple[str, ...], thoughts: bool = False):
    """What the data of every task but sft starts as: data.fields checked against the task's `fields`, data.system_prompt
    checked as sft checks it (`refuse_special_system`), a report, the prompt template, and the training and held-out
    items `read` gives (`train_and_held`). `thoughts` (reward): `read` takes `opens`, the template's `thought_opener`,
    to read an answer's thought as scoring reads it. Returns (items, held, report, template)."""
    d = cfg.data
    check_fields(d.fields, fields, cfg.task)
    refuse_special_system(d, tokenizer)
    report = DataReport(max_length=d.max_length)
    template = resolve_template(d.template, tokenizer)
    if thoughts:
        read = functools.partial(read, opens=thought_opener(tokenizer, template))
    items, held = train_and_held(read, d, seed, report)
    return items, held, report, template


def train_and_held(read, data, seed: int, report) -> tuple[list, list]:
    """The training items and the held-out ones: data.eval's file (read leniently) or data.eval_fraction of the
    training items, with report.eval_source saying which. `read(paths, fields, system_prompt, report, lenient=...,
    delimiter=..., transform=...)` is the task's reader (labelled rows, preference pairs, prompts); data.transform
    takes the rows of both files, as sft's."""
    items = read(
        data.train, data.fields, data.system_prompt, report, delimiter=data.delimiter, transform=data.transform
    )
    note_held_out_files(data.train, report)
    if data.eval:
        held = read(
            [data.eval],
            data.fields,
            data.system_prompt,
            report,
            lenient=True,
            delimiter=data.delimiter,
            transform=data.transform,
        )
        report.eval_source = "file"
    else:
        if not items and data.eval_fraction > 0:  # every row skipped: why, not "holds out 1 of 0 usable examples"
            raise DataError(f"{', '.join(data.train)}: no usable training rows. {report.summary()}")
        items, held = split_eval(items, data.eval_fraction, data.eval_split_seed(seed))
        report.eval_source = "fraction" if held else "none"
        report.split_seed = data.eval_split_seed(seed) if held else None
    note_repeated_eval(items, held, report, key=item_key)
    return items, held


def item_key(item) -> str:
    """What two word for word equal items of a task share (a label row's input and label, a pair's sides, a prompt's
    chat and columns): every field of the item's dataclass but its place and how its file spelled its columns."""
    fields = {k: v for k, v in dataclasses.asdict(item).items() if k not in ("path", "line", "spelled")}
    return json.dumps(fields, sort_keys=True, default=str)
