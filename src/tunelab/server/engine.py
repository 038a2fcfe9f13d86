"""The model behind the server: loaded once, one generation at a time.

Requests are queued on a lock rather than batched: a run is usually a small model on a CPU or one GPU, where one
sequence at a time keeps the latency of each answer low and the memory flat, and the transformers generation loop
this uses is not safe to enter twice at once on one model. An answer, streamed or not, is generated on a worker
thread (`infer.generate.Streamed`) that releases the lock when generation ends, so a reader that goes away only
has to cancel (`Reply.cancel`: the generation stops at its next token) and never waits for anything.

Stop strings end the generation as soon as one appears in the text as generated, streamed or not, and are never sent:
text that may still become a stop string is held back until it cannot, and so is trailing whitespace (answers are
stripped), so a streamed answer is the plain one piece by piece. They are looked for in the answer's text, not in a
tool call (from its "<tool_call>", Mistral's [TOOL_CALLS] or the "{" of Llama 3's bare JSON on): the request's
`span` (an `AnswerSpan`) says where that text is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import torch

from tunelab.data.reasoning import ThoughtReader, prompt_opens_thought, special_think_ids
from tunelab.data.render import KeepingDecoder, render_prompt
from tunelab.errors import TunelabError
from tunelab.infer.conversation import as_trained
from tunelab.infer.generate import (
    DEFAULT_MAX_NEW_TOKENS,
    ContextTooLong,
    GenerationSettings,
    Streamed,
    context_length,
    fit_context,
    room_left,
    seeded_generator,
)
from tunelab.infer.run import LoadedRun


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop | length
    reasoning_tokens: int | None = None  # of completion_tokens, those of a thought (to its </think>); None: none


# Where, in an answer being generated, its own text lies: (start, end, opened) for text[start:end], the only part
# stop strings are looked for in. Before `start`: what is no answer text (a thought, data/reasoning.py); from `end`
# on: a tool call, opened (`opened`) or maybe opening (a tail held back until it does or cannot).
AnswerSpan = Callable[[str], tuple[int, int, bool]]


def whole_text(text: str) -> tuple[int, int, bool]:
    """The span of an answer that is all text: no call, no thought."""
    return 0, len(text), False


def visible_text(
    text: str, stops: list[str], final: bool, span: AnswerSpan = whole_text, strip: bool = True
) -> tuple[str, bool]:
    """(what of the generated `text` may be sent, whether a stop string ended it). Up to the first stop string,
    looked for in the text as generated, as OpenAI and vLLM look (a "\n" the answer starts with ends it, empty);
    without one, all but a tail that could still grow into a stop string, unless the text is `final`. Leading and
    trailing whitespace is never part of it (trailing whitespace may yet be followed by more text). Stop strings are
    looked for only in the answer's own text, the `span`: not in a tool call ("[" or "<" would end the answer where
    its call begins, "}" cut a JSON call), nor in a thought; a tail that may still open a call is held back until it
    does or cannot. Without `strip` (a raw completion, whose leading space is part of the text), whitespace is kept."""
    start, end, opened = span(text)
    if final and not opened:
        end = len(text)
    cut = min((i for i in (text.find(s, start, end) for s in stops if s) if i >= 0), default=-1)
    if cut >= 0:
        return (text[:cut].strip() if strip else text[:cut]), True
    if not final and not opened:
        text = text[:end]
        for stop in stops:
            for k in range(min(len(stop) - 1, len(text) - start), 0, -1):
                if text.endswith(stop[:k]):
                    text = text[:-k]
                    break
    return (text.strip() if strip else text), False


def _decoder(tokenizer, keep=()) -> Callable[[list[int]], str]:
    """How an answer's ids were decoded to its text (Streamed's): without special tokens but those of `keep`."""
    if keep:
        return KeepingDecoder(tokenizer, keep).decode
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


def _first_prefix(ids: list[int], holds: Callable[[list[int]], bool]) -> int:
    """The length of the shortest prefix of `ids` that `holds`, which the whole of `ids` does: the text a prefix
    decodes to only grows with it, so it is found by bisection."""
    low, high = 1, len(ids)
    while low < high:
        mid = (low + high) // 2
        if holds(ids[:mid]):
            high = mid
        else:
            low = mid + 1
    return high


def tokens_to_stop(tokenizer, ids: list[int], stops: list[str], keep=(), span: AnswerSpan = whole_text) -> int:
    """How many of the generated `ids` it took for a stop string to appear: up to and including the token that
    completed it, the count vLLM reports (a stop string is found once its tokens are generated, and they were).
    `keep`: the special tokens the text was decoded with (Streamed's); `span` as visible_text takes it."""
    decode = _decoder(tokenizer, keep)
    return _first_prefix(ids, lambda prefix: visible_text(decode(prefix), stops, final=True, span=span)[1])


def thought_tokens(tokenizer, ids: list[int], thought: ThoughtReader, keep=()) -> int | None:
    """How many of the generated `ids` are the answer's thought, its </think> included (OpenAI's usage counts them
    as `reasoning_tokens`): all of them for a thought that never ended; None for an answer without one."""
    decode = _decoder(tokenizer, keep)
    if thought.read(decode(ids), final=True)[0] is None:
        return None
    if thought.read(decode(ids), final=False)[1] is None:  # it never ended: all thought
        return len(ids)
    return _first_prefix(ids, lambda prefix: thought.read(decode(prefix), final=False)[1] is not None)


def refuse_beyond_context(
    limit: int | None, prompt: int, wanted: int | None, field: str | None, raw: bool = False
) -> None:
    """ContextTooLong in OpenAI's words ("This model's maximum context length is N tokens", which clients look for)
    when a prompt of `prompt` tokens leaves a model of `limit` positions no room, or less than the `wanted` tokens
    the request asked for by its `field`. `raw`: the prompt is a completion's text, not a chat's messages."""
    if limit is None or (prompt < limit and (wanted is None or prompt + wanted <= limit)):
        return
    what = "prompt" if raw else "messages"
    if prompt >= limit:
        how = "" if raw else " (as the model reads them: the chat template and the run's system prompt included)"
        raise ContextTooLong(
            f"This model's maximum context length is {limit} tokens. However, your {what} resulted in {prompt} "
            f"tokens{how}, which leaves no room for an answer. Please reduce the length of the {what}."
        )
    raise ContextTooLong(
        f"This model's maximum context length is {limit} tokens. However, you requested {prompt + wanted} tokens "
        f"({prompt} in the {what}, {wanted} in the completion). Please reduce the length of the {what}, or "
        f"set {field} to at most {limit - prompt} (left out, the answer takes the room the {what} {'leaves' if raw else 'leave'})."
    )


def raw_prompt_ids(tokenizer, text: str) -> list[int]:
    """A raw prompt's ids: `text` tokenized as it is, the tokenizer's BOS added where it adds one, and never two BOS
    at its start. A prompt written from a chat template (`<|begin_of_text|>...`, `<s>[INST]...`) already opens with
    the BOS text, and the tokenizer would put its own in front: the model then reads a sequence it never trained on
    and answers worse. llama.cpp warns of it ("the final prompt starts with 2 BOS tokens") and vLLM's completions
    keep both; users strip one by hand. Here the doubled BOS is one, as the text meant."""
    ids = tokenizer(text)["input_ids"]
    bos = tokenizer.bos_token_id
    start = 0
    while bos is not None and start + 1 < len(ids) and ids[start] == ids[start + 1] == bos:
        start += 1
    return ids[start:]


class Reply:
    """One answer being generated: iterate for its text pieces, then a Completion (its text empty) with the counts
    and the finish reason. `cancel()` (a client gone) ends it at the next token, from any thread. The text keeps
    the special tokens of `keep` (a tool call's markers, a thought's), and no other; stop strings are not looked for
    outside its `span` (visible_text). `thought` reads the thought out of the text (data/reasoning.py)."""

    def __init__(
        self,
        engine: Engine,
        prompt: torch.Tensor,
        settings: GenerationSettings,
        stop: list[str],
        seed,
        keep=(),
        span: AnswerSpan = whole_text,
        thought: ThoughtReader | None = None,
        strip: bool = True,
    ):
        self.engine, self.prompt, self.settings, self.stop, self.seed = engine, prompt, settings, stop, seed
        self.keep, self.span, self.thought, self.strip = keep, span, thought, strip
        self.generation: Streamed | None = None
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        if self.generation is not None:
            self.generation.cancel()

    def __iter__(self) -> Iterator[str | Completion]:
        engine = self.engine
        engine.lock.acquire()  # released by the worker when generation ends (or below if it never starts)
        try:
            # a seeded answer draws from a generator of its own: the global one, which unseeded answers draw from,
            # is not reseeded (that made every later answer follow from the seed) nor shared with it
            generator = None if self.seed is None else seeded_generator(self.seed, engine.run.device)
            run = engine.run
            kwargs = self.settings.kwargs(run.template, run.tokenizer, run.model, generator) | {
                "input_ids": self.prompt,
                "attention_mask": torch.ones_like(self.prompt),
            }
            self.generation = Streamed(
                engine.run.model, engine.run.tokenizer, kwargs, on_done=engine.lock.release, keep=self.keep
            )
        except BaseException:
            engine.lock.release()
            raise
        if self.cancelled:
            self.generation.cancel()
        sent, text, stopped = 0, "", False
        try:
            for piece in self.generation:
                text += piece
                visible, stopped = visible_text(text, self.stop, False, self.span, self.strip)
                if len(visible) > sent:
                    yield visible[sent:]
                    sent = len(visible)
                if stopped:
                    self.generation.cancel()
                    break
            else:
                # what was held back for a stop string, or as the start of a call that may be a stop string's
                visible, stopped = visible_text(text, self.stop, True, self.span, self.strip)
                if len(visible) > sent:
                    yield visible[sent:]
        finally:
            self.generation.cancel()  # a no-op once generation has ended; else it ends at the next token
        self.generation.finished.wait()
        if self.generation.error is not None:
            raise self.generation.error
        new = self.generation.output[0, self.prompt.shape[1] :].tolist()
        if stopped:  # the generation ran on a token or more past the stop string: those are not counted
            new = new[: tokens_to_stop(engine.run.tokenizer, new, self.stop, self.keep, self.span)]
        reason = "stop" if stopped else engine.finish_reason(new, self.settings)
        thinking = thought_tokens(engine.run.tokenizer, new, self.thought, self.keep) if self.thought else None
        yield Completion("", self.prompt.shape[1], len(new), reason, thinking)


class Engine:
    def __init__(self, run: LoadedRun, model_id: str, aliases: set[str] = frozenset()):
        """`model_id`: the name the server gives; `aliases`: other names a request may use for it. `names` lists
        them all, `model_id` first (GET /v1/models)."""
        self.run = run
        self.model_id = model_id
        self.names = list(dict.fromkeys([model_id, *sorted(aliases)]))
        self.lock = threading.Lock()  # one generation at a time; the others wait here, in arrival order
        self.created = int(time.time())

    def _prompt(
        self,
        messages: list[dict],
        settings: GenerationSettings,
        tools: list[dict] | None = None,
        asked: str | None = None,
        default_system: bool = True,
        variables: dict | None = None,
    ) -> tuple[torch.Tensor, GenerationSettings]:
        """The prompt's ids, and the settings with max_new_tokens cut to the room the model's context leaves (that
        room where neither the request nor the server set it).
        ContextTooLong when the prompt leaves none, or, where the request set max_new_tokens itself (`asked`: the
        field, "max_tokens"), when it leaves less than that: OpenAI and vLLM refuse such a request rather than
        answer it shorter than asked. Without `default_system`, a conversation without a system message (or with an
        empty one) gets none, not the run's data.system_prompt."""
        conversation = as_trained(messages, self.run.system_prompt if default_system else None)
        ids = render_prompt(conversation, self.run.tokenizer, self.run.template, tools, variables)
        limit = context_length(self.run.model)
        refuse_beyond_context(limit, len(ids), settings.max_new_tokens if asked else None, asked)
        settings = room_left(self.run.model, len(ids), settings)  # neither the request nor --max-new-tokens set it
        settings = fit_context(self.run.model, len(ids), settings)
        return torch.tensor([ids], device=self.run.device), settings

    def finish_reason(self, new_ids: list[int], settings: GenerationSettings) -> str:
        stops = set(self.run.template.stop_token_ids) | {self.run.tokenizer.eos_token_id}
        limit = settings.max_new_tokens or DEFAULT_MAX_NEW_TOKENS  # None: the default generate was given
        return "stop" if (new_ids and new_ids[-1] in stops) or len(new_ids) < limit else "length"

    def stream(
        self,
        messages: list[dict],
        settings: GenerationSettings,
        stop: list[str],
        seed: int | None = None,
        tools: list[dict] | None = None,
        keep=(),
        asked: str | None = None,
        default_system: bool = True,
        call_span: AnswerSpan | None = None,
        variables: dict | None = None,
    ) -> Reply:
        """The answer as it is generated (see Reply). A conversation too long for the model is refused here
        (ContextTooLong), before the response starts, and so is one that leaves less room than the request's
        max_tokens, where it set them (`asked`: the field). `default_system` False: no data.system_prompt added. `tools`: OpenAI's tool definitions, for a template that uses
        them (the answer is text: the calls in it are read by server.tool_calls, whose markers `keep` are the
        special tokens the text keeps, and `call_span` where a call opens, where stop strings stop being looked for). A
        thought the model writes first is no answer text either (the Reply's `thought` reads it). `variables`: values of
        the chat template's own variables (Template.reads), the request's chat_template_kwargs."""
        prompt, settings = self._prompt(messages, settings, tools, asked, default_system, variables)
        tokenizer = self.run.tokenizer
        thought = ThoughtReader(prompt_opens_thought(tokenizer, prompt[0].tolist()))
        keep = (*keep, *special_think_ids(tokenizer))
        return Reply(self, prompt, settings, stop, seed, keep, partial(thought.span, inner=call_span), thought)

    def complete(
        self, text: str, settings: GenerationSettings, stop: list[str], seed: int | None = None, asked: bool = False
    ) -> Reply:
        """The continuation of a raw prompt (the legacy /v1/completions): `text` tokenized as it is, the tokenizer's
        BOS added where it adds one and the text does not open with it (raw_prompt_ids), no template and no system
        prompt; the text is answered as generated, its whitespace kept. `asked`: the
        request set max_tokens, which the context must then hold (ContextTooLong otherwise, as for a chat)."""
        ids = raw_prompt_ids(self.run.tokenizer, text)
        if not ids:
            raise TunelabError("prompt: the prompt is empty (no tokens); give the text to continue")
        limit = context_length(self.run.model)
        refuse_beyond_context(limit, len(ids), settings.max_new_tokens if asked else None, "max_tokens", raw=True)
        settings = fit_context(self.run.model, len(ids), room_left(self.run.model, len(ids), settings))
        return Reply(self, torch.tensor([ids], device=self.run.device), settings, stop, seed, strip=False)
