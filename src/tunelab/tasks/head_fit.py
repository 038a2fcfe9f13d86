"""How a head's input longer than data.max_length is kept (the classify and reward tasks, predict and eval).

Inputs longer than data.max_length are dropped (data.overlong=drop, counted in the report) or cut (truncate, counted
too): their start (BOS, system prompt, template header) is kept and the text after it is cut from its beginning, so
the pooled token still reads the end of the input, where a chat's answer is; a chat that ends with an answer keeps
that answer's assistant cue too, and the answer loses its first tokens only where the cue and it alone pass
max_length (`Keep`, `fit`, `starts`). One whose start and cue fill max_length is skipped and counted. A huge input
is read from its head and tail alone where that is proven (`head_data.render_within`): `fit` and `starts` read its
start in the head and its end, and the cue of an answer, in the tail.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.data.render import encode
from tunelab.data.templates import Template
from tunelab.tasks.head_data import Input, render


@dataclass(frozen=True)
class Keep:
    """What a cut to max_length keeps of a long input (`starts`): its first `start` tokens (BOS, system prompt,
    template header) and, of a chat that ends with an answer, the assistant cue of that answer, tokens
    [cue, answer), so that the pooled last token still reads an answer, whole or its end, after its cue."""

    start: int = 0
    cue: int | None = None  # where the last answer's assistant cue begins (None: no answer at the end)
    answer: int | None = None  # where that answer's first token is

    @property
    def fixed(self) -> int:
        """The tokens every cut keeps: the start and the cue."""
        return self.start + (self.answer - self.cue if self.cue is not None else 0)


def fit(ids: list[int], max_length: int, overlong: str, keep: Keep = Keep()) -> list[int] | None:
    """ids as they are, or (overlong=truncate) cut to max_length: the kept start, then the rest's last tokens; of a
    chat that ends with an answer, the start, the prompt's last tokens, the answer's cue and the answer, which loses
    its first tokens only where the cue and it alone pass max_length (its end, where the pooled token reads, stays).
    None: dropped (overlong=drop), or a start and cue that leave no room for one token more."""
    if len(ids) <= max_length:
        return ids
    if overlong != "truncate" or keep.fixed >= max_length:
        return None
    if keep.cue is None:
        return ids[: keep.start] + ids[len(ids) - (max_length - keep.start) :]
    room = max_length - keep.fixed  # for the prompt's end and the answer, the answer first
    answer = ids[keep.answer :]
    if len(answer) >= room:
        return ids[: keep.start] + ids[keep.cue : keep.answer] + answer[len(answer) - room :]
    prompt = room - len(answer)
    return ids[: keep.start] + ids[keep.cue - prompt : keep.cue] + ids[keep.cue :]


def starts(
    inputs: list[Input],
    ids: list[list[int]],
    tokenizer,
    template: Template,
    max_length: int,
    text_format: str | None = None,
    tails: dict[int, tuple[int, int]] | None = None,
) -> list[Keep]:
    """For each input longer than max_length (`ids` as `render` gave them), what a cut keeps (`Keep`): how many of
    its first tokens come before its first user text (BOS, the system prompt and the template's header; a text's BOS
    and the part of classify.prompt_format before {text}), and, of a chat ending with an answer, where that answer's
    cue and first token are; Keep() for the others. The start is what both renderings share when that user text is
    "a" and when it is "b", so a token that joins the header to the text is left to the cut; the cue is what the
    chat without its answer shares with the whole chat, rendered without and with the assistant cue. `tails`
    (`head_data.render_within`'s): the inputs read from their head and tail alone, whose cue is read in the tail."""
    long = [i for i, row in enumerate(ids) if len(row) > max_length]
    variants = {"a": [], "b": []}
    for i in long:
        item = inputs[i]
        for mark, out in variants.items():
            if item.messages is None:
                out.append(Input(text=mark))
                continue
            first = next((k for k, m in enumerate(item.messages) if m["role"] == "user"), 0)
            out.append(
                Input(messages=[{**m, "content": mark} if k == first else m for k, m in enumerate(item.messages)])
            )
    a, b = (render(v, tokenizer, template, text_format=text_format) for v in variants.values())
    answered = [i for i in long if inputs[i].messages is not None and inputs[i].messages[-1]["role"] == "assistant"]
    tails = tails or {}
    whole = [i for i in answered if i not in tails]
    before = [inputs[i].messages[:-1] for i in whole]  # ends with a user turn: rendered with the assistant cue
    cued = _chat_ids(before, tokenizer, template, True)
    bare = _chat_ids(before, tokenizer, template, False)
    cues = {i: (shared_start(ids[i], p), shared_start(ids[i], c)) for i, p, c in zip(whole, bare, cued)}
    for i in (i for i in answered if i in tails):
        # the chat and its prompt alone are the same text up to the tail's start, a break: the same tokens up to it
        at, start = tails[i]
        bare, cued = (_chat_ids([inputs[i].messages[:-1]], tokenizer, template, cue, start)[0] for cue in (False, True))
        cues[i] = (at + shared_start(ids[i][at:], bare), at + shared_start(ids[i][at:], cued))
    found = [Keep()] * len(ids)
    for i, x, y in zip(long, a, b):
        start = shared_start(ids[i], x[: shared_start(x, y)])
        cue, answer = cues.get(i, (None, None))
        found[i] = Keep(start) if cue is None or not start <= cue < answer else Keep(start, cue, answer)
    return found


def _chat_ids(
    chats: list[list[dict]], tokenizer, template: Template, add_generation_prompt: bool, start: int = 0
) -> list[list[int]]:
    """Token ids of chats rendered as `render` renders them, with or without the assistant cue at the end; from
    character `start` of each on (a break: data/leading.py)."""
    texts = [template.render(m, add_generation_prompt=add_generation_prompt)[0][start:] for m in chats]
    return [row for row, _ in encode(tokenizer, texts, [[] for _ in texts], plain=False)]


def shared_start(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def overlong_reason(max_length: int, keep: Keep = Keep()) -> str:
    """Why a row longer than max_length is skipped: data.overlong=drop, or a start and an answer's cue (`starts`)
    that fill max_length."""
    if keep.fixed >= max_length and keep.cue is not None:
        return (
            f"its start (BOS, system prompt, template header) and its answer's assistant cue ({keep.fixed} tokens) "
            f"leave no room for its answer in max_length ({max_length} tokens)"
        )
    if keep.fixed >= max_length:
        return (
            f"its start (BOS, system prompt, template header: {keep.start} tokens) leaves no room for its text in "
            f"max_length ({max_length} tokens)"
        )
    return f"longer than max_length ({max_length} tokens; data.overlong=drop)"
