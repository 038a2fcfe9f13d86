"""Prompts for online training (task grpo): each row a prompt the policy answers, plus whatever its rewards read.

A row has a prompt (`prompt`, `question` or `instruction` (+ `input` and `history`, read as sft reads alpaca's) as text, or `messages`/`conversations` as a message list
ending with the user's turn; `data.fields` maps the names) and any other columns: `expected` for the contains and
equals rewards, anything a user's reward function reads. The prompt is rendered with the run's chat template as sft
renders a chat, with the assistant prefix added (`add_generation_prompt`), so sampling starts where the answer does;
the row's `system` (else data.system_prompt) is prepended to a chat that has none. Reward functions receive the prompt
the model was asked: the user's text (an `instruction` joined with its `input`), or the turns as {role, content}
messages for a chat or an instruction with a `history` (data.system_prompt and the row's `system` field are not in it).
A row is the one data.transform returned, where the run has one (the function may build `prompt` and `expected` of
the file's own columns, or make several rows of a record): the readers of every task take it first. Column names are
then matched whatever their case (`data.case`: `Prompt`, `Expected`); a reward function gets such a column under both
names, the one read and its own (`tasks/rewards.py`), so `row["Expected"]` finds the file's `Expected` column. A prompt's text that already holds chat-template markup (`[INST]`, `<|user|>`) is noted, as sft notes such texts: it is
read as plain characters inside the user's turn (the text of a special token of the run's tokenizer is refused there,
as in every chat).

A row without a prompt is an error naming its file and line. A prompt that leaves no room for an answer within
data.max_length is skipped and counted (data.overlong=drop, as dpo drops a pair whose prompt fills it: one long
prompt among thousands no longer stops the run), or, with truncate, an error naming it (a cut prompt would ask
another question); one too long by its size alone (data/size_bound.py) is either without being tokenized. The rewards' columns (e.g. `expected`) must be in every row that trains.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field

from tunelab.config import RunConfig
from tunelab.data.loader import Datasets
from tunelab.data.render import note_templated_inputs, note_unreadable, row_text
from tunelab.data.report import PROMPTS, DataReport, SplitStats, location
from tunelab.data.sources import is_plain_text
from tunelab.errors import ConfigError, DataError, counted
from tunelab.tasks.head_data import (
    CHAT_FIELDS,
    PROMPT_FIELDS,
    Input,
    chat_flaw,
    counted_records,
    read_task_data,
    refuse_sft_recipes,
    render_within,
    with_system,
)
from tunelab.tasks.reward import prompt_column, read_prompt

FIELDS = (*PROMPT_FIELDS, *CHAT_FIELDS, "system", "input", "history")


@dataclass
class Prompt:
    prompt: str | list[dict]  # what reward functions receive: what the model was asked (module doc)
    messages: list[dict]  # the chat to render (system message included)
    row: dict
    path: str
    line: int
    spelled: dict[str, str] = field(default_factory=dict)  # {name read: column as written} of the renamed columns


@dataclass
class PromptRow:
    prompt_ids: list[int]  # the rendered chat up to the assistant prefix
    prompt: str | list[dict]
    row: dict
    path: str
    line: int
    spelled: dict[str, str] = field(default_factory=dict)  # as Prompt's: what reward functions get the columns as

    @property
    def input_ids(self) -> list[int]:
        """The tokens the row feeds the model before sampling (the untrained-token scan reads them)."""
        return self.prompt_ids

    @property
    def labels(self) -> list[int]:
        """The row's columns as UTF-8 bytes: what the rewards read, so the resume digest sees a changed answer key."""
        return list(json.dumps(self.row, sort_keys=True, ensure_ascii=False).encode())


def read_prompts(
    paths: list[str],
    fields: dict[str, str],
    system: str | None,
    report: DataReport,
    lenient: bool = False,
    delimiter: str = "auto",
    columns: tuple[str, ...] = (),
    transform: str | None = None,
) -> list[Prompt]:
    """The prompts of `paths`; `columns`: those the rewards read (`expected`), matched whatever their case as the
    prompt's fields are (`data.case`). `transform`: data.transform, which takes every record first: a prompt's row,
    the one its rewards receive, is what the function returned (`counted_records`)."""
    out = []
    # no note of the columns no field reads: a reward function may read any column of the row (tasks/rewards.py)
    for record in counted_records(
        paths, report, PROMPTS, fields, lenient, delimiter, names=(*FIELDS, *columns), transform=transform
    ):
        where = location(record.path, record.line)
        turns = read_prompt(record.row, fields, where, lenient)
        if turns is None and is_plain_text(record.path):  # prompts.txt, one a line: read as one document
            raise DataError(
                f"{where}: a .txt file is one text record, its whole text, not one prompt a line, and a grpo row needs "
                'a prompt: write the prompts one a row, as a .jsonl file ({"prompt": "..."} a line) or a .csv file '
                "with a header line naming the column prompt."
            )
        if turns is None:
            names = ", ".join((*PROMPT_FIELDS, *CHAT_FIELDS))
            raise DataError(
                f"{where}: the row has no prompt: give it one of the fields {names} (it has "
                f"{', '.join(map(str, record.row)) or 'no fields'}). Map your column with data.fields, e.g. "
                "{prompt: question_text}."
            )
        key = prompt_column(record.row, fields, lenient)
        messages = with_system(turns, record.row, fields, where, system, lenient)
        if flaw := chat_flaw(messages):
            report.skip(flaw, record.path, record.line)
            continue
        asked = turns[0]["content"] if len(turns) == 1 and isinstance(record.row[key], str) else turns
        spelled = {read: own for own, read in record.renamed.items()}
        out.append(Prompt(asked, messages, record.row, record.path, record.line, spelled))
    return out


def _expected_text(value) -> bool:
    """A text with something in it, a finite number or true/false (read as `tunelab eval` reads them:
    `data.formats.scalar_text`); null, a list or a mapping is none."""
    if isinstance(value, bool):
        return True
    if isinstance(value, int | float):
        return math.isfinite(value)
    return isinstance(value, str) and bool(value.strip())


def to_rows(
    prompts: list[Prompt], tokenizer, template, max_length: int, columns: list[str], report, overlong: str = "drop"
) -> list[PromptRow]:
    """The prompts rendered; one that leaves no room for an answer within max_length is skipped and counted
    (data.overlong=drop, as dpo drops a pair whose prompt fills it) or an error naming it (truncate: a cut prompt
    would ask another question)."""
    wheres = [location(p.path, p.line) for p in prompts]
    # dropped or refused whatever their tokens when they have max_length or more, untokenized (see render_within)
    ids, over, _ = render_within(
        [Input(messages=p.messages) for p in prompts], tokenizer, template, wheres, drop_over=max_length - 1
    )
    report.add_lengths([over.get(n, len(i)) for n, i in enumerate(ids)], at_least=len(over))
    rows = []
    for n, (p, prompt_ids, where) in enumerate(zip(prompts, ids, wheres)):
        if (n in over or len(prompt_ids) >= max_length) and overlong == "drop":
            report.skip(
                f"prompt leaves no room for an answer in max_length ({max_length} tokens; data.overlong=drop)",
                p.path,
                p.line,
            )
            continue
        if n in over or len(prompt_ids) >= max_length:
            raise DataError(
                f"{where}: the prompt is {f'at least {over[n]}' if n in over else len(prompt_ids)} tokens, which leaves no room for an answer within "
                f"data.max_length ({max_length}) (data.overlong=truncate). Raise data.max_length, shorten or remove "
                "this row, or set data.overlong: drop to skip such prompts."
            )
        missing = [c for c in columns if c not in p.row]
        if missing:
            raise DataError(
                f"{where}: {counted(len(missing), 'column')} missing ({', '.join(missing)}); grpo.rewards read them "
                "(contains and equals compare "
                "the answer with the row's expected text). Add them, or set the reward's column."
            )
        empty = [c for c in columns if not _expected_text(p.row[c])]
        if empty:
            raise DataError(
                f"{where}: {counted(len(empty), 'column')} ({', '.join(empty)}) empty, or not a text, a number or "
                "true/false; contains and equals compare the "
                "answer with it, and an empty expected text would match every answer. Give the row its expected "
                "answer, or remove the row."
            )
        report.used(p.path)
        rows.append(PromptRow(prompt_ids, p.prompt, p.row, p.path, p.line, p.spelled))
    return rows


def note_short_room(rows: list[PromptRow], max_length: int, new: int, report: DataReport) -> None:
    """A note in `report` when prompts leave fewer than grpo.max_new_tokens (`new`) tokens for an answer within
    data.max_length: their sampled answers are cut to fit, and scored and trained so (`tunelab check` warns alike)."""
    short = [r for r in rows if len(r.prompt_ids) + new > max_length]
    if short:
        first = short[0]
        report.notes.append(
            f"{len(short)} of the {len(rows)} prompts leave fewer than grpo.max_new_tokens ({new}) tokens for an answer "
            f"within data.max_length ({max_length}) (e.g. {location(first.path, first.line)}: room for "
            f"{max_length - len(first.prompt_ids)}): their answers are cut to fit, and scored and trained so; raise "
            "data.max_length or lower grpo.max_new_tokens"
        )


def build_prompts(cfg: RunConfig, tokenizer, seed: int, columns: list[str]) -> Datasets:
    """Train and eval prompts, with the data report. `columns`: what the rewards read from every row."""
    d = cfg.data
    if d.packing:
        raise ConfigError(
            "option 'data.packing' cannot be used with task grpo: each prompt's answers are sampled and scored as rows "
            "of their own. Set data.packing to false."
        )
    if not d.train:
        raise ConfigError("option 'data.train' is empty; give one or more files of prompts.")
    refuse_sft_recipes(cfg)
    read = functools.partial(read_prompts, columns=tuple(columns))
    prompts, held, report, template = read_task_data(cfg, tokenizer, seed, read, FIELDS)
    report.template = template.name
    note_templated_inputs(
        prompts + held,
        lambda p: (p.prompt,) if isinstance(p.prompt, str) else (),
        tokenizer,
        report,
        "prompts",
        "a prompt given as text is the user's turn, which the chat template wraps in its own markup, so markup in the "
        "text is read as plain characters inside that turn, and the model is asked in a form neither template "
        "writes; give the user's text alone (or the turns as a message list, messages), so the template writes the "
        "markup, or keep them so knowingly",
    )
    note_unreadable(
        prompts + held, [row_text(p.prompt) for p in prompts + held], tokenizer, report, "sampled", len(held)
    )
    train = to_rows(prompts, tokenizer, template, d.max_length, columns, report, d.overlong)
    if not train:
        raise DataError(f"{', '.join(d.train)}: no usable prompts. {report.summary()}")
    evals = to_rows(held, tokenizer, template, d.max_length, columns, report, d.overlong)
    note_short_room(train + evals, d.max_length, cfg.grpo.max_new_tokens, report)
    tokens = [sum(len(r.prompt_ids) for r in rows) for rows in (train, evals)]
    report.train = SplitStats(examples=len(prompts), used=len(train), rows=len(train), tokens=tokens[0])
    report.eval = SplitStats(examples=len(held), used=len(evals), rows=len(evals), tokens=tokens[1])
    stops = sorted(
        {*template.stop_token_ids, *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])}
    )
    facts = {"input": "chat", "pad_id": tokenizer.pad_token_id, "stop_ids": stops}
    return Datasets(train, evals, template, report, facts=facts)
