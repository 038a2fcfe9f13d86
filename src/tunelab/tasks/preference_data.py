"""Preference pairs for policy training (task dpo): a prompt, a chosen and a rejected answer, rendered with the chat
template into two token rows that share the prompt, with labels on the answer tokens only.

Accepted rows (`data.fields` maps the names to your columns):
- `prompt` (or question, instruction + optional input and history, read as sft reads alpaca's): a text or a message list; `chosen`/`rejected`: a text, one message
  ({role, content} / ShareGPT {from, value}) or a message list (the answer turns that follow the prompt);
- LLaMA-Factory's preference format: `conversations` (ShareGPT turns ending with the user's) with `chosen` and
  `rejected` as {from: gpt, value} messages (`messages` in OpenAI spelling works the same);
- no prompt: `chosen`/`rejected` are two whole conversations (the turns they share are the prompt) or two whole texts
  (the tokens they share from the start are the prompt, up to the last assistant cue among them, "Assistant:" at a
  line's start as in Anthropic HH-RLHF's transcripts (`answer_cue`), so answers that begin alike are whole; pairs
  whose shared start holds no cue are counted in a note of the data report; texts that share none
  have no prompt, and the loss reads them whole, from their first token, which follows BOS, or the tokenizer's BOS or
  EOS token where it adds none (`text_start`): the data report counts them, `note_unprompted`).

The row's `system` (else data.system_prompt) is prepended to a chat that has none; a pair of whole texts takes
neither (a row's `system` beside it is refused, `head_data.plain_text`; the data report notes data.system_prompt). Labels: the tokens of the answer
turns (each with its end-of-turn marker, `data/templates.py`), -100 elsewhere. A pair longer than data.max_length is
dropped or has its answers cut at max_length (data.overlong). The cut keeps the prompt whole and each side's first
max_length tokens, so the answers lose their ends: TRL's truncation_mode=keep_start (its default keep_end, with
max_prompt_length, cuts the prompt's start instead, which can take away the question an answer answers); the pairs cut
and the answer tokens they lose are counted in a note of the data report (`note_cut_answers`). With truncate, a prompt
that leaves no room for an answer is an error naming the row, since the cut would leave no answer to train on.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from tunelab.config import RunConfig
from tunelab.data.formats import text_field
from tunelab.data.leading import encode_heads, leading, least_in_spans
from tunelab.data.loader import Datasets, note_system_on_texts
from tunelab.data.render import (
    IGNORE,
    encode,
    note_templated_inputs,
    note_unreadable,
    pair_text,
    row_text,
    special_text_in,
    special_texts,
)
from tunelab.data.report import DataReport, SplitStats, location
from tunelab.data.size_bound import size_bound, surely_longer
from tunelab.data.templates import Template, default_bos
from tunelab.errors import ConfigError, DataError
from tunelab.tasks.head_data import (
    CHAT_FIELDS,
    PROMPT_FIELDS,
    as_turns,
    counted_records,
    plain_text,
    read_task_data,
    refuse_sft_recipes,
    with_system,
)
from tunelab.tasks.pair_data import (
    answer_blank,
    answer_turns,
    note_repeated_prompts,
    pair_columns,
    pair_skip,
    repeats_prompt,
    same_tokens,
    shared_prompt,
)
from tunelab.tasks.reward import read_prompt

FIELDS = (*PROMPT_FIELDS, *CHAT_FIELDS, "chosen", "rejected", "system", "input", "history")


@dataclass
class Side:
    """One answer in context: a chat whose messages from index `answer_from` on are the answer, or a whole text whose
    tokens after the part shared with the other side are the answer (`messages` None)."""

    messages: list[dict] | None = None
    answer_from: int = 0
    text: str | None = None


@dataclass
class Preference:
    chosen: Side
    rejected: Side
    path: str
    line: int


@dataclass
class PreferenceRow:
    chosen_ids: list[int]
    chosen_labels: list[int]
    rejected_ids: list[int]
    rejected_labels: list[int]
    path: str
    line: int
    reference: tuple[float, float] | None = None  # summed log p of (chosen, rejected) under the reference model

    @property
    def input_ids(self) -> list[int]:
        """Every token id the pair feeds the model (both sides), as the untrained-token scan reads rows."""
        return self.chosen_ids + self.rejected_ids

    @property
    def labels(self) -> list[int]:
        """Both sides' labels: with input_ids, what the resume digest compares."""
        return self.chosen_labels + self.rejected_labels


def read_sides(row: dict, fields: dict[str, str], where: str, system: str | None, lenient: bool) -> tuple[Side, Side]:
    keys = pair_columns(row, fields, where, lenient, "and a prompt unless both are whole conversations or texts")
    values = [row[key] for key in keys]
    prompt = read_prompt(row, fields, where, lenient)
    if prompt is not None and not repeats_prompt(prompt, values, keys, where):
        sides = []
        for key, value in zip(keys, values):
            turns = (
                answer_turns(value, where, key)
                if isinstance(value, list | dict)
                else [{"role": "assistant", "content": text_field(value, where, key)}]
            )
            context = with_system(prompt, row, fields, where, system, lenient)
            sides.append(Side(messages=context + turns, answer_from=len(context)))
        return sides[0], sides[1]
    if all(isinstance(v, list | dict) for v in values):
        chats = [with_system(as_turns(v, where, k), row, fields, where, system, lenient) for k, v in zip(keys, values)]
        shared = shared_prompt(*chats, where)
        return Side(messages=chats[0], answer_from=shared), Side(messages=chats[1], answer_from=shared)
    texts = [plain_text(row, fields, where, k, lenient) for k in keys]
    return Side(text=texts[0]), Side(text=texts[1])


def _no_answer(side: Side) -> bool:
    if side.messages is None:
        return not (side.text or "").strip()
    return answer_blank(side.messages, side.answer_from)


def read_preferences(
    paths: list[str],
    fields: dict[str, str],
    system: str | None,
    report: DataReport,
    lenient: bool = False,
    delimiter: str = "auto",
    transform: str | None = None,
) -> list[Preference]:
    """Rows of the files as Preferences; DataError (file:line) for a row without chosen or rejected."""
    out = []
    for record in counted_records(
        paths, report, "preference pairs", fields, lenient, delimiter, "dpo", FIELDS, transform
    ):
        chosen, rejected = read_sides(record.row, fields, location(record.path, record.line), system, lenient)
        empty = _no_answer(chosen) or _no_answer(rejected)
        if reason := pair_skip(chosen == rejected, empty, chosen.messages, rejected.messages):
            report.skip(reason, record.path, record.line)
        else:
            out.append(Preference(chosen, rejected, record.path, record.line))
    return out


def _chat_text(side: Side, template: Template, where: str) -> tuple[str, list[tuple[int, int]]]:
    """The rendered chat and the char spans of the answer's assistant turns (those from side.answer_from on)."""
    try:
        text, spans = template.render(side.messages)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    assistant = [i for i, m in enumerate(side.messages) if m["role"] == "assistant"]
    return text, [span for i, span in zip(assistant, spans) if i >= side.answer_from]


def chat_texts(pair: Preference, tokenizer, template: Template) -> list[tuple[str, list[tuple[int, int]]]]:
    """The rendered chats of a chat pair's chosen and rejected sides, each with its answer spans (`_chat_text`);
    DataError for a side holding special-token text."""
    where = location(pair.path, pair.line)
    specials = special_texts(tokenizer)
    for name, side in (("chosen", pair.chosen), ("rejected", pair.rejected)):
        found = special_text_in(side.messages, specials)
        if found:
            raise DataError(f"{where}: {found} of the {name} side would be read as a control token; remove it.")
    return [_chat_text(side, template, where) for side in (pair.chosen, pair.rejected)]


def pair_texts(pair: Preference, rendered: list[tuple[str, list]] | None) -> list[str]:
    """The texts a pair's sides are tokenized from: a chat pair's rendered chats (`chat_texts`), else its two texts."""
    return [t for t, _ in rendered] if rendered is not None else [pair.chosen.text, pair.rejected.text]


def lengths_over(
    pair: Preference, rendered: list[tuple[str, list]] | None, tokenizer, max_length: int
) -> tuple[list[int], int] | None:
    """The token lengths of a pair's sides when one is over max_length by its size alone (data/size_bound.py), which
    data.overlong=drop drops whatever its tokens: such a side's the fewest tokens it can have, untokenized, the
    other's as `render_pair` tokenizes it; and how many are lower bounds. None when no side is over. `rendered`: a
    chat pair's `chat_texts`, None for a pair of whole texts."""
    bound = size_bound(tokenizer)
    texts = pair_texts(pair, rendered)
    over = [surely_longer(text, max_length, bound) for text in texts]
    if not any(over):
        return None
    if rendered is not None:
        spans = [s for _, s in rendered]
    else:  # as `render_pair` marks them: a span edge a token straddles has the text tokenized piece by piece
        cue = answer_cue(*texts)
        spans = [[(cue, len(t))] if cue is not None else [] for t in texts]
    short = [
        encode(tokenizer, [t], [s], plain=rendered is None)[0][0] if not o else None
        for t, s, o in zip(texts, spans, over)
    ]
    if rendered is not None:
        return [bound.least_tokens(t) if o else len(ids) for t, ids, o in zip(texts, short, over)], sum(over)
    eos = int(tokenizer.eos_token_id is not None)  # a text's row: its start token, its tokens, EOS (`render_pair`)
    firsts = [
        ids[:1] if ids is not None else (leading(tokenizer, t, 1, s, plain=True) or [None])[0]
        for t, s, ids in zip(texts, spans, short)
    ]
    known = default_bos(tokenizer) or all(f is not None for f in firsts)  # with BOS, the start is BOS alone
    start = len(text_start(tokenizer, *firsts)) if known else int(default_bos(tokenizer))
    lengths = [start + eos + (bound.least_tokens(t) if o else len(ids)) for t, ids, o in zip(texts, short, over)]
    return lengths, 2 if not known else sum(over)


def render_pair(
    pair: Preference,
    tokenizer,
    template: Template,
    rendered: list[tuple[str, list]] | None = None,
    limit: int | None = None,
) -> tuple[list[int], list[int], list[int], list[int], int, list[int | None]]:
    """(chosen ids, chosen labels, rejected ids, rejected labels, lead, rests); lead: how many start tokens come
    before the texts of a text pair (BOS, or the token `text_start` puts first), 0 for a chat. `rendered`: a chat
    pair's `chat_texts`, where the caller has them. A side over `limit` tokens by its size alone has only its first
    `limit` + 1 or more tokens (data/leading.py): its rest is the least count of answer tokens left untokenized, None
    for a side tokenized whole (`limit` None: both are)."""
    if pair.chosen.messages is not None:
        rendered = rendered or chat_texts(pair, tokenizer, template)
        texts, spans = [t for t, _ in rendered], [s for _, s in rendered]
        (c_ids, c_in, c_rest), (r_ids, r_in, r_rest) = encode_heads(tokenizer, texts, spans, limit)
        c_labels = [t if keep else IGNORE for t, keep in zip(c_ids, c_in)]
        r_labels = [t if keep else IGNORE for t, keep in zip(r_ids, r_in)]
        return c_ids, c_labels, r_ids, r_labels, 0, _rests(tokenizer, texts, spans, (c_rest, r_rest))
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    texts = [pair.chosen.text, pair.rejected.text]
    cue = answer_cue(*texts)
    spans = [[(cue, len(t))] if cue is not None else [] for t in texts]
    (c, c_in, c_rest), (r, r_in, r_rest) = encode_heads(tokenizer, texts, spans, limit, plain=True)
    start = text_start(tokenizer, c, r)
    # a side read only to its head ends there: the EOS after its last token lies past the cut
    c_ids, r_ids = start + c + (eos if c_rest is None else []), start + r + (eos if r_rest is None else [])
    shared = 0
    while shared < min(len(c_ids), len(r_ids)) and c_ids[shared] == r_ids[shared]:
        shared += 1
    if cue is not None:  # the answers start at the cue, though their first words may be the same
        shared = min(shared, *(len(start) + (inside + [True]).index(True) for inside in (c_in, r_in)))
    return (
        c_ids,
        [IGNORE] * shared + c_ids[shared:],
        r_ids,
        [IGNORE] * shared + r_ids[shared:],
        len(start),
        _rests(tokenizer, texts, spans, (c_rest, r_rest)),
    )


def _rests(tokenizer, texts: list[str], spans: list[list], rests: tuple) -> list[int | None]:
    """The fewest answer tokens past each side's head (`render_pair`), None for a side tokenized whole."""
    return [None if at is None else least_in_spans(t, s, at, tokenizer) for t, s, at in zip(texts, spans, rests)]


ANSWER_CUE = re.compile(r"^[ \t]*assistant[ \t]*:", re.IGNORECASE | re.MULTILINE)  # HH-RLHF's "\n\nAssistant:"


def answer_cue(chosen: str, rejected: str) -> int | None:
    """Where the answers of a pair of whole texts start: after the last assistant turn's cue ("Assistant:" at a line's
    start, as HH-RLHF's transcripts write it) in the text both share from the start, as TRL's HH-RLHF recipe cuts
    them; None when that text holds none. Two answers that begin with the same words ("Assistant: It is 4." and
    "Assistant: It is 5.") share more than their prompt: the answers are their whole turns."""
    cues = list(ANSWER_CUE.finditer(os.path.commonprefix([chosen, rejected])))
    return cues[-1].end() if cues else None


def text_start(tokenizer, chosen: list[int], rejected: list[int]) -> list[int]:
    """The token put before both texts of a pair: BOS where the tokenizer adds it; else, for texts that differ from
    their first token, the tokenizer's BOS (or EOS) token all the same: a row's first token is predicted from nothing
    and never scored, so without it the first token of each answer would not count in the loss."""
    if default_bos(tokenizer):
        return [tokenizer.bos_token_id]
    if chosen[:1] == rejected[:1]:
        return []
    first = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return [first] if first is not None else []


def first_label(labels: list[int]) -> int:
    """Where the answer starts: the index of the first trained label (the prompt's length), or len(labels)."""
    return next((i for i, t in enumerate(labels) if t != IGNORE), len(labels))


def refuse_no_room(
    prompt: int, max_length: int, overlong: str, path: str, line: int, answer: str, bounded: bool = False
) -> None:
    """DataError for a row whose prompt of `prompt` tokens leaves `answer` no room in max_length, when data.overlong
    truncate would keep the prompt whole and cut the answer away (with drop, the row is dropped as overlong);
    `bounded`: the row was read only to its head (data/leading.py), so the prompt has `prompt` tokens or more."""
    if prompt >= max_length and overlong == "truncate":
        raise DataError(
            f"{location(path, line)}: the prompt is {'at least ' if bounded else ''}{prompt} tokens, which leaves no room for {answer} within "
            f"data.max_length ({max_length}). Raise data.max_length or shorten or remove this row."
        )


def to_rows(
    pairs: list[Preference],
    tokenizer,
    template: Template,
    max_length: int,
    overlong: str,
    report: DataReport,
    split: str = "training",
) -> list[PreferenceRow]:
    rows, unprompted = [], []  # unprompted: the pairs of whole texts that share no token from the start
    uncued = []  # pairs of whole texts sharing a start with no assistant cue in it: their prompt is that start
    cut_answers = [0, 0, 0]  # pairs cut, answer tokens they lose, answer tokens they had
    dropped = f"longer than max_length ({max_length} tokens; data.overlong=drop)"
    bounded = False  # whether a cut pair was read only to its head, so its answer tokens are counted at their least
    for pair in pairs:
        rendered = chat_texts(pair, tokenizer, template) if pair.chosen.messages is not None else None
        if overlong == "drop" and (over := lengths_over(pair, rendered, tokenizer, max_length)):
            report.add_lengths(over[0], at_least=over[1])
            report.skip(dropped, pair.path, pair.line)
            continue
        limit = max_length if overlong == "truncate" else None
        c_ids, c_labels, r_ids, r_labels, lead, rests = render_pair(pair, tokenizer, template, rendered, limit)
        report.add_lengths(
            side_lengths(pair_texts(pair, rendered), (c_ids, r_ids), rests, lead, tokenizer), heads(rests)
        )
        prompt = min(first_label(c_labels), first_label(r_labels))
        if pair.chosen.messages is None and prompt <= lead:  # the start token both texts begin with is no prompt
            unprompted.append(pair)
        elif pair.chosen.messages is None and answer_cue(pair.chosen.text, pair.rejected.text) is None:
            uncued.append(pair)
        refuse_no_room(prompt, max_length, overlong, pair.path, pair.line, "an answer", heads(rests) > 0)
        cut = max(len(c_ids), len(r_ids)) > max_length
        if cut:
            if overlong == "drop":
                report.skip(dropped, pair.path, pair.line)
                continue
            answer = sum(t != IGNORE for t in c_labels + r_labels) + sum(r or 0 for r in rests)
            c_ids, c_labels, r_ids, r_labels = (x[:max_length] for x in (c_ids, c_labels, r_ids, r_labels))
            report.truncated(pair.path, pair.line)
            kept = sum(t != IGNORE for t in c_labels + r_labels)
            cut_answers = [cut_answers[0] + 1, cut_answers[1] + answer - kept, cut_answers[2] + answer]
            bounded = bounded or bool(heads(rests))
        if all(t == IGNORE for t in c_labels) or all(t == IGNORE for t in r_labels):
            report.skip("no answer token after rendering", pair.path, pair.line)
            continue
        if c_ids == r_ids:  # sides that differ as read but not as tokens (a template that trims), or once cut
            report.skip(same_tokens(f"first {max_length}" if cut else None), pair.path, pair.line)
            continue
        report.used(pair.path)
        rows.append(PreferenceRow(c_ids, c_labels, r_ids, r_labels, pair.path, pair.line))
    note_unprompted(unprompted, len(pairs), split, report)
    if uncued:
        report.notes.append(
            f"{len(uncued)} of the {len(pairs)} {split} pairs are two whole texts whose shared start holds no "
            f"'Assistant:' turn cue (e.g. {location(uncued[0].path, uncued[0].line)}): their prompt is every token "
            "they share from the start, which reaches into the answers where both begin with the same words; give "
            "the prompt in its own column (prompt, chosen, rejected) to mark where the answers start"
        )
    note_cut_answers(*cut_answers, max_length, split, report, bounded)
    return rows


def note_cut_answers(
    pairs: int, lost: int, answer: int, max_length: int, split: str, report: DataReport, bounded: bool = False
) -> None:
    """A note in `report` for the pairs cut to max_length (data.overlong=truncate): the prompt is kept whole and each
    side's answer loses its end, as TRL's truncation_mode=keep_start cuts; it says how many answer tokens that takes
    (TRL's default keep_end, with max_prompt_length, cuts the prompt's start instead: a pair whose prompt leaves no
    room for an answer is refused here, naming it). `bounded`: a side too long by its size alone was tokenized only
    to its head (data/leading.py), so the tokens lost are counted at their least."""
    if pairs:
        least = "at least " if bounded else ""
        report.notes.append(
            f"{pairs} {split} pairs were cut to max_length ({max_length} tokens) keeping the prompt whole and each "
            f"answer's start: their answers lost {least}{lost} of {least}{answer} tokens "
            f"({'at least ' if bounded else ''}{100 * lost / max(answer, 1):.0f}%) from their ends, which the loss does "
            "not read; raise data.max_length to keep them"
            + (
                " (a side too long by its size alone is read only as far as the cut: its rest counted at its least)"
                if bounded
                else ""
            )
        )


def heads(rests: list[int | None]) -> int:
    """How many sides `render_pair` read only to their heads."""
    return sum(r is not None for r in rests)


def side_lengths(texts: list[str], ids: tuple, rests: list[int | None], lead: int, tokenizer) -> list[int]:
    """The token lengths of a pair's sides for the report: a side read only to its head (`render_pair`'s rests) at
    the fewest tokens its text can have (with the start token before a text), the others as tokenized."""
    bound = size_bound(tokenizer)
    return [
        len(side) if rest is None else max(len(side), lead + bound.least_tokens(text))
        for text, side, rest in zip(texts, ids, rests)
    ]


def note_unprompted(pairs: list[Preference], total: int, split: str, report: DataReport) -> None:
    """A note in `report` for the pairs of whole texts that share no token from the start: they have no prompt, so
    the loss reads every token of both, an answer to nothing. A prompt in a column no reader knows (a `query`) is
    left out so; data.fields maps it."""
    if pairs:
        report.notes.append(
            f"{len(pairs)} of the {total} {split} pairs are two whole texts that share no token from the start (e.g. "
            f"{location(pairs[0].path, pairs[0].line)}): with no prompt, the loss reads every token of both, as "
            "answers to nothing; if the rows hold their prompt in another column, map it with data.fields (e.g. "
            "{prompt: query})"
        )


def _stats(rows: list[PreferenceRow], examples: int) -> SplitStats:
    tokens = sum(len(r.chosen_ids) + len(r.rejected_ids) for r in rows)
    answer = sum(sum(t != IGNORE for t in r.chosen_labels + r.rejected_labels) for r in rows)
    return SplitStats(examples=examples, used=len(rows), rows=2 * len(rows), tokens=tokens, loss_tokens=answer)


def build_preferences(cfg: RunConfig, tokenizer, seed: int) -> Datasets:
    """Train and eval rows of preference pairs, with the data report."""
    d = cfg.data
    if d.packing:
        raise ConfigError(
            f"option 'data.packing' cannot be used with task {cfg.task}: the chosen and rejected answers of a pair are "
            "scored as whole rows beside each other, one pair per two rows. Set data.packing to false."
        )
    if not d.train:
        raise ConfigError("option 'data.train' is empty; give one or more files of preference pairs.")
    refuse_sft_recipes(cfg)
    if d.overlong not in ("drop", "truncate"):
        raise ConfigError(f"option 'data.overlong' is {d.overlong!r}; allowed values: drop, truncate.")
    pairs, held, report, template = read_task_data(cfg, tokenizer, seed, read_preferences, FIELDS)
    report.pairs = True
    chat = any(p.chosen.messages is not None for p in pairs + held)
    texts = [p for p in pairs + held if p.chosen.messages is None]
    note_system_on_texts(d.system_prompt, texts, report)
    note_templated_inputs(
        texts,
        lambda p: (p.chosen.text, p.rejected.text),
        tokenizer,
        report,
        "text pairs",
        "a pair of whole texts is scored as it is, its markup read as plain characters, not control tokens, so the "
        "model is taught answers in a form its chat template never writes; give such pairs as chats (a prompt with "
        "chosen and rejected, or two conversations), so the template writes the markup, or keep them as text knowingly",
    )
    sides = [
        (row_text(p.chosen.text, p.chosen.messages), row_text(p.rejected.text, p.rejected.messages))
        for p in pairs + held
    ]
    note_unreadable(pairs + held, [pair_text(*s) for s in sides], tokenizer, report, held=len(held))
    note_repeated_prompts(pairs + held, report)
    report.template = template.name if chat else "none (text only)"
    train = to_rows(pairs, tokenizer, template, d.max_length, d.overlong, report)
    if not train:
        raise DataError(f"{', '.join(d.train)}: no usable preference pairs. {report.summary()}")
    evals = to_rows(held, tokenizer, template, d.max_length, d.overlong, report, "eval")
    report.train, report.eval = _stats(train, len(pairs)), _stats(evals, len(held))
    facts = {"input": "chat" if chat else "text", "pad_id": tokenizer.pad_token_id}
    return Datasets(train, evals, template, report, facts=facts)
