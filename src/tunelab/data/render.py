"""Examples -> token ids and labels: chats through a prompt template with a loss mask, texts cut into blocks.

Chat: the template gives the full text and the char spans of the answers (each with its end-of-turn/EOS marker);
the text is tokenized once, with `add_special_tokens=False` (the template writes BOS when one is needed), and a token
gets a label iff its character range overlaps a span. Labels are aligned with input_ids (the Hugging Face convention:
the model shifts them); -100 means no loss.

A token that straddles a span's edge (an answer that starts with whitespace the template's newline before it would
absorb) would give training a token the prompt never ends with: such a text is tokenized in pieces cut at the span
edges, so the tokens before an answer are those `render_prompt` gives for generation.

The data's own text is never read as control tokens: a chat whose message holds the text of a special token
(`<|im_end|>`, `<|im_start|>`, ...) would forge turns or end an answer in its middle, so it is skipped and counted
(`special_text_in`); the other tasks refuse it, naming the row. Plain texts are tokenized with
`split_special_tokens`, so such text stays characters. A conversation to be answered (`render_prompt`: chat, serve,
generate, eval) holding such text is refused (`ControlTokenText`) for the same reason: a user's "<|im_end|>" would
end their turn and let the rest of the message write the system's or the assistant's.

Text (continued pretraining): each document is tokenized, ends with EOS, and all are concatenated and cut into
blocks of max_length tokens; the last block may be shorter; every token has a label. A document does not
restart the position ids: as in pretraining, blocks run across document boundaries. With data.packing, which
promises no attention across examples, each document is cut into blocks on its own instead, and packing.py puts
them into rows with positions restarting at every document.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass

from tunelab.config import DataConfig
from tunelab.data.encode import encode
from tunelab.data.formats import Example
from tunelab.data.leading import encode_heads
from tunelab.data.report import DataReport, location
from tunelab.data.size_bound import size_bound, surely_longer, unreadable
from tunelab.data.templates import Template, TemplateRefused, default_bos
from tunelab.errors import ConfigError, article, not_text

IGNORE = -100


@dataclass
class Rendered:
    input_ids: list[int]
    labels: list[int]  # aligned with input_ids; IGNORE where there is no loss
    path: str  # where the example (or, for a text block, its first document) came from
    line: int


def special_ids(tokenizer) -> set[int]:
    """The ids `decode(..., skip_special_tokens=True)` leaves out: the named special tokens and every added token
    marked special (Mistral's [TOOL_CALLS] is one without a name)."""
    added = getattr(tokenizer, "added_tokens_decoder", {})
    return set(tokenizer.all_special_ids) | {i for i, token in added.items() if getattr(token, "special", False)}


class KeepingDecoder:
    """A tokenizer's `decode` without its special tokens but those of `keep`, which stay in the text: the markers a
    tool call is read by (server/tool_calls.py) and a thought's (data/reasoning.py), which skip_special_tokens would
    take out with the end of turn. A streamer takes it as its tokenizer (infer.generate.Streamed)."""

    def __init__(self, tokenizer, keep):
        self.tokenizer = tokenizer
        self.drop = special_ids(tokenizer) - set(keep)

    def decode(self, ids, **_) -> str:
        ids = [ids] if isinstance(ids, int) else ids
        return self.tokenizer.decode([i for i in ids if i not in self.drop], skip_special_tokens=False)


def special_strings(tokenizer) -> set[str]:
    """The texts of the tokenizer's special tokens: the named ones and every added token marked special."""
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    found = {t.content for t in decoder.values() if getattr(t, "special", False)}
    return {t for t in found | set(getattr(tokenizer, "all_special_tokens", []) or []) if t}


def any_of(texts) -> re.Pattern | None:
    """A pattern matching any of `texts`, the longest first (None when there are none)."""
    return re.compile("|".join(map(re.escape, sorted(texts, key=len, reverse=True)))) if texts else None


@functools.lru_cache(maxsize=8)
def special_texts(tokenizer) -> re.Pattern | None:
    """A pattern matching the text of any of the tokenizer's special tokens (None when it has none); built once per
    tokenizer (a dpo run asks for it per pair)."""
    return any_of(special_strings(tokenizer))


def special_text_in(messages: list[dict], pattern: re.Pattern | None) -> str | None:
    """'the special token text X in a ROLE message' for the first message holding one, else None."""
    if pattern is None:
        return None
    for message in messages:
        content = message.get("content")
        hit = pattern.search(content) if isinstance(content, str) else None
        if hit:
            role = str(message.get("role"))
            return f"the special token text {hit.group()!r} in {'an' if role == 'assistant' else 'a'} {role} message"
    return None


# chat-template markers of the common families, whichever tokenizer the run has: ChatML, Llama 2 and Mistral, Llama 3,
# Gemma, Phi-3 and Zephyr
CHAT_MARKERS = (
    "<|im_start|>",
    "<|im_end|>",
    "[INST]",
    "[/INST]",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
)


# the tokens raw pretraining text joins its documents with (GPT-2 and Qwen, Llama 3, Llama 2 and Mistral, Gemma): no
# chat markup, whichever of them a tokenizer names its BOS or EOS
DOCUMENT_MARKERS = ("<|endoftext|>", "<|end_of_text|>", "<|begin_of_text|>", "</s>", "<s>", "<eos>", "<bos>")


def templated_patterns(tokenizer) -> tuple[re.Pattern, re.Pattern | None]:
    """(chat markup, document markers): the chat markers and the text of the tokenizer's special tokens but its
    document tokens; the text of those (its BOS and EOS, or one of DOCUMENT_MARKERS, when special to it and no chat
    marker: SmolLM2's EOS is <|im_end|>), None when it has none."""
    special = special_strings(tokenizer)
    ends = {t for t in (tokenizer.bos_token, tokenizer.eos_token, *DOCUMENT_MARKERS) if t in special}
    ends -= set(CHAT_MARKERS)
    return any_of((special - ends) | set(CHAT_MARKERS)), any_of(ends)


def note_templated_texts(texts: list[Example], tokenizer, report: DataReport) -> None:
    """A note in `report` when text examples (`texts`) already hold chat-template markup: a chat marker or the text of
    one of the tokenizer's special tokens. A text is trained as it is: the markup is plain characters to it (encode's
    `plain`) and every token has a loss, the prompts' too; as a chat, the template would write the markers and the
    loss would be on the answers. Texts holding a document token's text (`<|endoftext|>` between joined documents)
    and no chat markup get their own note: a document is one example, ended by the EOS token `_text_blocks` adds.
    Notes, not skips: such a corpus may be meant as text."""
    chat, documents = templated_patterns(tokenizer)
    hits, joined = [], []
    for ex in texts:
        if ex.text and (hit := chat.search(ex.text)):
            hits.append((ex, hit.group()))
        elif ex.text and documents is not None and (hit := documents.search(ex.text)):
            joined.append((ex, hit.group()))
    if hits:
        report.notes.append(
            markup_note(
                hits,
                len(texts),
                "text examples",
                "a text is trained as it is, its markup read as plain characters, not control tokens, and with a loss "
                "on every token, the prompts' too; give such rows as chats (the messages format), so the template "
                "writes the markup and the loss is on the answers, or keep them as text knowingly",
            )
        )
    if joined:
        first, marker = joined[0]
        report.notes.append(
            f"{len(joined)} of the {len(texts)} text examples hold the text of a document token (e.g. {marker!r} at "
            f"{location(first.path, first.line)}), as raw text joining documents does: in a text it is read as "
            "ordinary characters, not the token, so it ends no document; tunelab ends each text example with the "
            "EOS token itself (after BOS where the tokenizer starts texts with one): give one document per example "
            "(split such texts at the marker), or keep them as they are knowingly"
        )


def markup_note(hits: list[tuple], total: int, what: str, why: str) -> str:
    """The note on the `hits` ((item, marker), each item with `path` and `line`) of `total` `what` holding chat markup;
    `why`: what that does in the task and what to do."""
    first, marker = hits[0]
    return (
        f"{len(hits)} of the {total} {what} hold chat-template markup or special-token text (e.g. {marker!r} at "
        f"{location(first.path, first.line)}): {why}"
    )


def note_templated_inputs(items: list, texts_of, tokenizer, report: DataReport, what: str, why: str) -> None:
    """note_templated_texts for a task's own rows (dpo, reward, classify): `items` (each with `path` and `line`), whose
    texts `texts_of(item)` are read as plain characters; `what` names them, `why` says what that does in the task.
    Document tokens are left alone there: a text is one input, no joined corpus."""
    chat, _ = templated_patterns(tokenizer)
    hits = []
    for item in items:
        hit = next((h for text in texts_of(item) if text and (h := chat.search(text))), None)
        if hit is not None:
            hits.append((item, hit.group()))
    if hits:
        report.notes.append(markup_note(hits, len(items), what, why))


def _render_chats(
    examples: list[Example], tokenizer, template: Template, cfg: DataConfig, report: DataReport, held: bool
) -> list[Rendered]:
    texts, spans, kept, specials = [], [], [], special_texts(tokenizer)
    for ex in examples:
        found = special_text_in(ex.messages, specials)
        if found:
            report.skip(f"{found} (it would be read as a control token)", ex.path, ex.line)
            continue
        kept.append(ex)
        try:
            text, sp = template.render(ex.messages)
        except ConfigError as exc:
            raise ConfigError(f"{location(ex.path, ex.line)}: {exc}") from None
        weights = [m.get("weight", 1) for m in ex.messages if m["role"] == "assistant"]
        if cfg.train_on_prompt and not all(weights):
            raise ConfigError(
                f"{location(ex.path, ex.line)}: an assistant turn has weight 0 (no loss on it), but option "
                "'data.train_on_prompt' puts a loss on every token, that turn's too. Set data.train_on_prompt to "
                "false, or remove the weight."
            )
        sp = [span for span, weight in zip(sp, weights, strict=True) if weight]  # OpenAI's weight 0: no loss
        texts.append(text)
        spans.append(sp)
    note_unreadable(kept, texts, tokenizer, report, held=len(kept) if held else 0)
    rows, limit = [], cfg.max_length
    # data.overlong=drop drops a chat over max_length whatever its tokens: one too long by its size alone is not
    # tokenized (data/size_bound.py); truncate keeps such a chat's first max_length tokens, read from its head alone
    # where that is proven (data/leading.py); either counts in the lengths at its least token count
    bound, drop = size_bound(tokenizer), cfg.overlong == "drop"
    dropped = f"longer than max_length ({limit} tokens; data.overlong=drop)"
    long = [drop and surely_longer(text, limit, bound) for text in texts]
    short = iter(
        encode_heads(
            tokenizer,
            [t for t, o in zip(texts, long) if not o],
            [s for s, o in zip(spans, long) if not o],
            None if drop else limit,
        )
    )
    encoded = [None if over else next(short) for over in long]
    report.add_lengths(
        [
            len(e[0]) if e is not None and e[2] is None else max(bound.least_tokens(text), len(e[0]) if e else 0)
            for text, e in zip(texts, encoded)
        ],
        at_least=sum(e is None or e[2] is not None for e in encoded),
    )
    for ex, enc in zip(kept, encoded):
        if enc is None:
            report.skip(dropped, ex.path, ex.line)
            continue
        ids, inside, _ = enc
        labels = list(ids) if cfg.train_on_prompt else [t if keep else IGNORE for t, keep in zip(ids, inside)]
        if len(ids) > limit:
            if cfg.overlong == "drop":
                report.skip(dropped, ex.path, ex.line)
                continue
            ids, labels = ids[:limit], labels[:limit]
            if all(label == IGNORE for label in labels):
                report.skip(answer_lost(limit), ex.path, ex.line)
                continue
            report.truncated(ex.path, ex.line)
            if CUT_ANSWERS not in report.notes:
                report.notes.append(CUT_ANSWERS)
        elif all(label == IGNORE for label in labels):
            report.skip("no answer token after rendering", ex.path, ex.line)
            continue
        report.used(ex.path)
        rows.append(Rendered(list(ids), labels, ex.path, ex.line))
    return rows


def note_unreadable(
    items: list, texts: list[str], tokenizer, report: DataReport, effect: str = "trained", held: int = 0
) -> dict[int, list[str]]:
    """Count in `report` the `items` (each with `path` and `line`, or its location as a string: a question or a text
    given directly) whose `texts` hold characters `tokenizer` drops (data/size_bound.py's `unreadable`): read without
    them, which the report says as `effect` (a key of data/report.py's EFFECTS: what the task does with its rows). The
    last `held` items are eval rows. Looked for only where the tokenizer drops some. Returns {item's index: the
    characters it drops} for the items holding any."""
    report.unread.effect = effect
    found = unreadable(tokenizer)
    if found is None:
        return {}
    first_held, dropped = len(items) - held, {}
    for i, (item, text) in enumerate(zip(items, texts, strict=True)):
        if chars := found.chars_in(text):
            where = item if isinstance(item, str) else location(item.path, item.line)
            report.dropped_chars(where, chars, held=i >= first_held)
            dropped[i] = chars
    return dropped


def row_text(*parts) -> str:
    """The characters of a task's row for `note_unreadable`: its text parts (None for none) and chats' message
    contents (a string, or parts with a "text"), joined by newlines."""
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
        elif isinstance(part, list):
            for message in part:
                content = message.get("content") if isinstance(message, dict) else None
                if isinstance(content, str):
                    out.append(content)
                elif isinstance(content, list):
                    out.extend(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return "\n".join(out)


def pair_text(chosen: str, rejected: str) -> str:
    """A pair's characters for `note_unreadable`, the part both sides share (their prompt) once."""
    shared, most, block = 0, min(len(chosen), len(rejected)), 1 << 16
    # blocks compared in C first: a multi-megabyte prompt took seconds character by character
    while shared + block <= most and chosen[shared : shared + block] == rejected[shared : shared + block]:
        shared += block
    while shared < most and chosen[shared] == rejected[shared]:
        shared += 1
    return chosen + "\n" + rejected[shared:]


CUT_ANSWERS = (
    "data.overlong=truncate cuts a chat's end: the last answer of each truncated row loses its end and end-of-turn "
    "token, so it teaches answers that do not stop; raise data.max_length, or set data.overlong=drop to train on "
    "whole rows only"
)


def answer_lost(limit: int) -> str:
    """The skip reason of a chat that data.overlong=truncate cut to `limit` tokens before its first answer token: the
    end is cut, so a prompt that fills max_length leaves no answer to learn."""
    return (
        f"lost their whole answer to truncation at max_length ({limit} tokens), the prompt filling it; raise "
        "data.max_length to keep them (see tokens per example)"
    )


def _text_blocks(examples: list[Example], tokenizer, cfg: DataConfig, report: DataReport, held: bool) -> list[Rendered]:
    bos = default_bos(tokenizer)
    head = [tokenizer.bos_token_id] if bos else []
    tail = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    note_unreadable(examples, [ex.text for ex in examples], tokenizer, report, held=len(examples) if held else 0)
    encoded = encode(tokenizer, [ex.text for ex in examples], [[] for _ in examples], plain=True)
    docs = [head + ids + tail for ids, _ in encoded]
    report.add_lengths([len(d) for d in docs])
    if cfg.packing:
        rows = [
            Rendered(d[begin : begin + cfg.max_length], d[begin : begin + cfg.max_length], ex.path, ex.line)
            for ex, d in zip(examples, docs)
            for begin in range(0, len(d), cfg.max_length)
        ]
        return _text_used(examples, rows, report)
    # stream: (token, index of its document); each block remembers the document it starts in
    stream = [tok for d in docs for tok in d]
    starts, total = [], 0
    for d in docs:
        starts.append(total)
        total += len(d)
    rows, doc = [], 0
    for begin in range(0, len(stream), cfg.max_length):
        while doc + 1 < len(docs) and starts[doc + 1] <= begin:
            doc += 1
        block = stream[begin : begin + cfg.max_length]
        rows.append(Rendered(block, list(block), examples[doc].path, examples[doc].line))
    return _text_used(examples, rows, report)


def _text_used(examples: list[Example], rows: list[Rendered], report: DataReport) -> list[Rendered]:
    for ex in examples:
        report.used(ex.path)
    report.text_blocks += len(rows)
    return rows


def render_examples(
    examples: list[Example], tokenizer, template: Template, cfg: DataConfig, report: DataReport, held: bool = False
) -> list[Rendered]:
    """Chat examples (in order) then the text blocks; drops and truncations are counted in report. `held`: the
    examples are eval rows (the report says what they lose as evaluated, not trained on)."""
    if cfg.overlong not in ("drop", "truncate"):
        raise ConfigError(f"option 'data.overlong' is {cfg.overlong!r}; allowed values: drop, truncate.")
    chats = [ex for ex in examples if ex.messages is not None]
    texts = [ex for ex in examples if ex.messages is None]
    return _render_chats(chats, tokenizer, template, cfg, report, held) + _text_blocks(
        texts, tokenizer, cfg, report, held
    )


class ControlTokenText(ConfigError):
    """A conversation to be answered holds the text of one of the tokenizer's special tokens; `param` is where, as
    a JSON path of the list checked ("messages.2.content", "messages.1.tool_calls", "tools")."""

    def __init__(self, message: str, param: str = "messages"):
        super().__init__(message)
        self.param = param


class NotText(ConfigError):
    """A conversation to be answered holds a lone surrogate (errors.not_text), which no tokenizer can read; `param`
    as ControlTokenText's."""

    def __init__(self, message: str, param: str = "messages"):
        super().__init__(message)
        self.param = param


def _beyond_content(message: dict) -> dict:
    """What a message to answer carries for its template besides its role and content (a name, tool calls)."""
    return {k: v for k, v in message.items() if k not in ("role", "content", "weight")}


def check_prompt_text(messages: list[dict], tokenizer, tools: list[dict] | None = None) -> None:
    """Refuse a conversation to be answered holding text no template may write: NotText for a lone surrogate,
    ControlTokenText for special-token text (see the module docstring), each naming the first place in `param`. A
    name, a tool call or a tool definition the template writes is text of the prompt as much as a content is."""
    specials = special_texts(tokenizer)
    places = []
    for i, message in enumerate(messages):
        role = message.get("role")
        places.append((f"messages.{i}.content", role, message.get("content")))
        for key, value in _beyond_content(message).items():
            places.append(
                (
                    f"messages.{i}.{key}",
                    role,
                    value if isinstance(value, str) else json.dumps(value, ensure_ascii=False),
                )
            )
    if tools:
        places.append(("tools", "tools", json.dumps(tools, ensure_ascii=False)))
    for param, role, text in places:
        if not isinstance(text, str):
            continue
        if problem := not_text(text):
            raise NotText(f"{article(role)} message: {problem}, so the conversation is not answered.", param)
        if found := special_text_in([{"role": role, "content": text}], specials):
            raise ControlTokenText(
                f"{found} would be read as a control token, not as text (it would end or open a turn), so the "
                "conversation is not answered; training skips such conversations too. Remove it or write it "
                "otherwise.",
                param,
            )


def render_prompt(
    messages: list[dict], tokenizer, template: Template, tools: list[dict] | None = None, variables: dict | None = None
) -> list[int]:
    """Token ids of the conversation so far plus the assistant prefix, ready for generation (`tools`: OpenAI's tool
    definitions, for a template that `uses` them; `variables`: values of the template's own variables, `reads`);
    `check_prompt_text` first."""
    check_prompt_text(messages, tokenizer, tools)
    try:
        text, _ = template.render(messages, add_generation_prompt=True, tools=tools, variables=variables)
    except TemplateRefused as exc:  # a run answers with the template it trained with: data.template is no way out
        raise TemplateRefused(
            f"prompt template '{template.name}' cannot render this conversation ({exc.reason}), so it is not "
            "answered: the run answers with the template it was trained with. Give a conversation that template "
            "accepts (the roles and system message its training rows had).",
            exc.reason,
        ) from None
    return tokenizer(text, add_special_tokens=False)["input_ids"]
