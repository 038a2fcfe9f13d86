"""Text generation with a KV cache: batched answers for compare/eval, and a token stream for chat.

Prompts are rendered with the same template the model was trained with and left-padded, so a batch of questions
of different lengths is answered in one `generate` call. Greedy decoding by default. Answering hundreds of questions
takes minutes on a CPU, so `answer_progress` shows a bar that `generate_answers` advances batch by batch. A seeded
answer (the --seed of generate, chat, compare and eval; a server request's seed) draws its sampled tokens from a
generator of its own (`answer_generator`, `SeededDraw`), never from torch's global one.
"""

from __future__ import annotations

import math
import numbers
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TextIO

import torch
from tqdm import tqdm

from tunelab.config.flags import Spelling
from tunelab.data.reasoning import OPEN, decode_answer, prompt_opens_thought, special_think_ids
from tunelab.data.render import ControlTokenText, KeepingDecoder, render_prompt
from tunelab.data.templates import Template
from tunelab.errors import ConfigError

DEFAULT_MAX_NEW_TOKENS = 128  # generate; compare and eval default to the run's eval.max_new_tokens
# An answer's most tokens in chat and serve where neither the user nor the server sets them and the model does not
# say its context length (no max_position_embeddings): where it does, the answer takes the room the prompt leaves.
UNKNOWN_CONTEXT_TOKENS = 4096
# Temperatures below this sample greedily, their limit: dividing the logits by 5e-324 gives inf and sampling fails
# (vLLM draws the same line, its _SAMPLING_EPS = 1e-5).
GREEDY_BELOW = 1e-5


# What a model's generation_config.json may set that changes the tokens generate() picks beyond the settings below,
# each with the value that changes nothing. transformers applies every one of them a model sets to each generate()
# that does not pass it, so a model shipping `no_repeat_ngram_size: 3` or `min_p: 0.05` answered otherwise than
# tunelab's options say; tunelab passes these values instead (`GenerationSettings.kwargs`) and `config_notice` says
# at start which ones the model sets.
NOT_APPLIED = {
    "min_p": None,
    "top_h": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "encoder_repetition_penalty": 1.0,
    "num_beams": 1,
    "num_return_sequences": 1,
    "penalty_alpha": None,
    "dola_layers": None,
    "min_length": 0,
    "min_new_tokens": None,
    "bad_words_ids": None,
    "sequence_bias": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "exponential_decay_length_penalty": None,
    "guidance_scale": None,
    "renormalize_logits": False,
    "remove_invalid_values": False,
    "stop_strings": None,
    "max_time": None,
    "watermarking_config": None,
}
# What tunelab's own settings replace (theirs win, their defaults included: greedy unless a temperature is given).
REPLACED = ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty")


def _model_sets(model) -> dict:
    """The decoding settings of the model's generation_config (from its generation_config.json) that change
    anything: {name: value} for those of NOT_APPLIED and REPLACED that are set and not neutral."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return {}
    neutral = NOT_APPLIED | {
        "do_sample": False,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "repetition_penalty": 1.0,
    }
    found = {}
    for name, unchanged in neutral.items():
        value = getattr(config, name, None)
        if value is not None and value != unchanged and not (name == "top_k" and value == 50):  # transformers' own
            found[name] = value
    return found


def config_notice(model, whose: str = "the model's") -> str | None:
    """A line saying which decoding settings of the model's generation_config.json tunelab does not apply (min_p,
    no_repeat_ngram_size, ...) and which its own settings replace (temperature, top_p, ...), or None when it sets
    none of them. Commands that generate print it at start; `whose` names the model where two answer."""
    found = _model_sets(model)
    if not found:
        return None
    ignored = [f"{k}={v}" for k, v in found.items() if k not in REPLACED]
    replaced = [f"{k}={v}" for k, v in found.items() if k in REPLACED]
    said = []
    if ignored:
        said.append(f"{', '.join(ignored)}, which tunelab does not apply")
    if replaced:
        said.append(
            f"{', '.join(replaced)}, which tunelab's settings replace (--temperature, --top-p, --repetition-penalty "
            "or a request's values, else greedy decoding with no penalty)"
        )
    return f"note: {whose} generation_config.json sets {'; and '.join(said)}."


def base_config_notice(base, tuned) -> str | None:
    """compare's line about the base model's generation_config, once the tuned model's was said: the same settings
    in a word, others in full, none where neither sets any."""
    if _model_sets(base) == _model_sets(tuned):
        return "note: the base model's generation_config.json sets the same." if _model_sets(tuned) else None
    return config_notice(base, "the base model's") or (
        "note: the base model's generation_config.json sets none of these (the tuned model's does)."
    )


def say_config_notice(model, out: TextIO | None = None, whose: str = "the model's") -> None:
    """Write `config_notice` (if any) to `out`, stderr by default: at the start of a command that generates."""
    say(config_notice(model, whose), out)


def say(notice: str | None, out: TextIO | None = None) -> None:
    """Write a notice line (if any) to `out`, stderr by default."""
    if notice:
        print(notice, file=out or sys.stderr, flush=True)


@dataclass
class GenerationSettings:
    # None: the run's eval.max_new_tokens (compare, eval), the room the context leaves (chat, serve), else 128
    max_new_tokens: int | None = None
    temperature: float = 0.0  # 0 (or below GREEDY_BELOW) means greedy
    top_p: float = 1.0  # 0 means greedy too (OpenAI takes 0 to 1: the smallest nucleus, the likeliest token alone)
    repetition_penalty: float = 1.0
    batch_size: int = 16

    def __post_init__(self) -> None:
        """ConfigError (exit 2) for settings generation would fail on later, mid-answer (a server answers 500): a
        value of the wrong type (a text, None, 2.5 tokens) first, then one out of range."""
        for name in ("max_new_tokens", "batch_size", "temperature", "top_p", "repetition_penalty"):
            value, whole = getattr(self, name), name in ("max_new_tokens", "batch_size")
            if name == "max_new_tokens" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral if whole else numbers.Real):
                wanted = "a whole number" if whole else "a number"
                raise ConfigError(f"generation: {name} is {value!r}; it must be {wanted}.")
        checks = (  # (setting, whether its value is allowed, the values allowed)
            ("max_new_tokens", self.max_new_tokens is None or self.max_new_tokens >= 1, "1 or more"),
            ("temperature", math.isfinite(self.temperature) and self.temperature >= 0, "0 (greedy) or more"),
            ("top_p", 0 <= self.top_p <= 1, "in [0, 1] (0: greedy)"),
            ("repetition_penalty", math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0, "above 0"),
            ("batch_size", self.batch_size >= 1, "1 or more"),
        )
        for name, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"generation: {name} is {getattr(self, name)!r}; it must be {allowed}.")

    def kwargs(self, template: Template, tokenizer, model=None, generator: torch.Generator | None = None) -> dict:
        """generate()'s arguments; with `model`, those of its generation_config that would change the answer beyond
        these settings are passed as the values that change nothing (NOT_APPLIED). With `generator`, a sampled answer
        draws its tokens from it (`SeededDraw`) rather than from torch's global generator, which it leaves alone."""
        sampling = samples(self.temperature, self.top_p)
        if sampling and generator is not None:
            from transformers import LogitsProcessorList

            draw = SeededDraw(self.temperature, self.top_p, generator)
            greedy = replace(self, temperature=0.0).kwargs(template, tokenizer, model)
            return greedy | {"logits_processor": LogitsProcessorList([draw])}
        out = {
            "max_new_tokens": self.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
            "do_sample": sampling,
            "eos_token_id": list(template.stop_token_ids) or tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "repetition_penalty": self.repetition_penalty,
        }
        if sampling:  # top_k 0: no top-k filter, which transformers would add (its default 50, or the model's)
            out.update(temperature=self.temperature, top_p=self.top_p, top_k=0)
        else:
            out.update(temperature=None, top_p=None, top_k=None)
        return out | {k: NOT_APPLIED[k] for k in _model_sets(model) if k in NOT_APPLIED}


def samples(temperature: float, top_p: float) -> bool:
    """Whether answers of this temperature and top_p are sampled (draw tokens, so a seed matters) or greedy."""
    return temperature >= GREEDY_BELOW and top_p > 0


# The seeds taken: OpenAI's range (a 64-bit signed integer), which torch's generator takes.
SEEDS = range(-(2**63), 2**63)


def seeded_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A generator of one answer's own, on `device`, seeded as `torch.manual_seed(seed)` seeds torch's global one."""
    return torch.Generator(device=device).manual_seed(seed)


def check_seed(seed, name: str = "seed") -> None:
    """ConfigError naming `name` for a seed that is neither None nor a whole number in SEEDS: before a model loads."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed not in SEEDS):
        raise ConfigError(f"{name} is {seed!r}; it must be a whole number from -2**63 to 2**63 - 1.")


def answer_generator(seed: int | None, model, name: str = "seed") -> torch.Generator | None:
    """The generator a seeded answer (or chat) of `model` draws its sampled tokens from, on the model's device; None
    without a seed (torch's global generator, as before). A greedy answer draws nothing: its seed changes nothing."""
    check_seed(seed, name)
    return None if seed is None else seeded_generator(int(seed), _device(model))


class SeededDraw:
    """A transformers logits processor that draws each next token itself, from `generator`, and leaves generate()
    only that token to pick (every other score -inf, so its greedy argmax takes it): transformers' sampling draws
    from torch's global generator, which a seed would have to reseed, making every later unseeded answer follow
    from that seed and two answers share one stream. It applies what generate() applies when it samples, in its
    order (temperature, then top_p; top_k is off, as `kwargs` asks), then softmax and one multinomial draw a row, so
    an answer is token for token the one `torch.manual_seed(seed)` before a sampling generate() gives."""

    def __init__(self, temperature: float, top_p: float, generator: torch.Generator):
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        self.warpers = [TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))
        self.generator = generator

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for warp in self.warpers:
            scores = warp(input_ids, scores)  # (B, V)
        probs = torch.softmax(scores, dim=-1)
        picked = torch.multinomial(probs, num_samples=1, generator=self.generator)  # (B, 1)
        return torch.full_like(scores, -math.inf).scatter_(-1, picked, 0.0)


def longer_answers(spelling: Spelling) -> str:
    """How the caller lets answers run longer: the commands' flag, or the settings a Python caller passes."""
    return "--max-new-tokens N" if spelling.flags else "settings=GenerationSettings(max_new_tokens=N)"


def _device(model) -> torch.device:
    return next(model.parameters()).device


class ContextTooLong(ConfigError):
    """A prompt that leaves the model no room to answer within its context."""


def context_length(model) -> int | None:
    """The most positions the model reads (its config's max_position_embeddings), or None where it does not say."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return limit if isinstance(limit, int) and limit > 0 else None


def fit_context(
    model, prompt_tokens: int, settings: GenerationSettings, where: str | None = None
) -> GenerationSettings:
    """`settings` with max_new_tokens cut to the room the model's context leaves after a prompt of `prompt_tokens`
    (the answer then ends with finish reason "length"); ContextTooLong, naming `where` (e.g. file:line), when the
    prompt leaves none. A model past its context does not fail: it answers from positions it never learned."""
    limit = context_length(model)
    wanted = settings.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    if limit is None or prompt_tokens + wanted <= limit:
        return settings
    refuse_no_room(prompt_tokens, limit, where)
    return replace(settings, max_new_tokens=limit - prompt_tokens)


def room_left(model, prompt_tokens: int, settings: GenerationSettings, where: str | None = None) -> GenerationSettings:
    """`settings` whose max_new_tokens, where none is set, is the room the model's context leaves after a prompt of
    `prompt_tokens` (UNKNOWN_CONTEXT_TOKENS for a model that does not state its context): an answer in chat and serve
    runs until the model ends its turn, as vLLM's and Ollama's do, not to a fixed count. ContextTooLong, naming
    `where`, when the prompt leaves no room."""
    if settings.max_new_tokens is not None:
        return settings
    limit = context_length(model)
    refuse_no_room(prompt_tokens, limit, where)
    return replace(settings, max_new_tokens=limit - prompt_tokens if limit else UNKNOWN_CONTEXT_TOKENS)


def refuse_no_room(prompt_tokens: int, limit: int | None, where: str | None = None) -> None:
    """ContextTooLong, naming `where`, when a prompt of `prompt_tokens` leaves a model reading `limit` positions no
    room to answer."""
    if limit is not None and prompt_tokens >= limit:
        raise ContextTooLong(
            f"{where + ': ' if where else ''}the prompt is {prompt_tokens} tokens as the model reads it; the model "
            f"reads at most {limit} (max_position_embeddings), the answer included: shorten it."
        )


@contextmanager
def answer_progress(total: int, what: str) -> Iterator[Callable[[int], None]]:
    """A progress bar over `total` answers on stderr; yields the function that advances it (pass it to
    `generate_answers` as `progress`)."""
    bar = tqdm(total=total, desc=what, unit="answer", dynamic_ncols=True)
    try:
        yield bar.update
    finally:
        bar.close()


@torch.no_grad()
def generate_answers(
    model,
    tokenizer,
    template: Template,
    conversations: list[list[dict]],
    settings: GenerationSettings,
    progress: Callable[[int], object] | None = None,
    names: list[str] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[list[str], list[bool]]:
    """One answer per conversation (each a list of {role, content} ending with a user turn), and for each whether it
    was cut: it ran to max_new_tokens (or to the room the context left) without ending its turn, so it may stop
    mid-sentence. `progress` is called with the number of answers after each batch. A prompt too long for the
    model's context is refused before any answer, named by `names` (e.g. the questions' file and line) or its
    position; one that leaves less room than max_new_tokens is answered alone, as far as the context allows. With
    `generator` (`answer_generator`), sampled answers draw from it batch after batch, so the same seed, settings
    (batch_size included) and device give the same answers; without it, from torch's global generator."""
    prompts, fitted = fit_prompts(model, tokenizer, template, conversations, settings, names)
    # Rows keep their order; each batch holds rows of one setting (all but the overlong ones share the given one).
    answers: list[str] = []
    cut: list[bool] = []
    start = 0
    while start < len(prompts):
        end = start + 1
        while end < len(prompts) and end - start < settings.batch_size and fitted[end] == fitted[start]:
            end += 1
        texts, cuts = _answer_batch(model, tokenizer, template, prompts[start:end], fitted[start], generator)
        answers += texts
        cut += cuts
        if progress is not None:
            progress(end - start)
        start = end
    return answers, cut


def fit_prompts(
    model,
    tokenizer,
    template: Template,
    conversations: list[list[dict]],
    settings: GenerationSettings,
    names: list[str] | None = None,
) -> tuple[list[list[int]], list[GenerationSettings]]:
    """The conversations' prompt ids, and the settings each is answered with (`fit_context`): raises
    ContextTooLong, naming the first prompt too long, or ControlTokenText, naming the first conversation holding
    special-token text, before anything is answered."""
    if names is None and len(conversations) > 1:
        names = [f"conversation {i + 1} of {len(conversations)}" for i in range(len(conversations))]
    prompts = []
    for i, c in enumerate(conversations):
        try:
            prompts.append(render_prompt(c, tokenizer, template))
        except ControlTokenText as exc:
            raise ControlTokenText(f"{names[i] + ': ' if names and names[i] else ''}{exc}") from None
    fitted = [fit_context(model, len(p), settings, names[i] if names else None) for i, p in enumerate(prompts)]
    return prompts, fitted


@torch.no_grad()
def answer_one(
    model,
    tokenizer,
    template: Template,
    messages: list[dict],
    settings: GenerationSettings,
    generator: torch.Generator | None = None,
) -> tuple[str, int | None]:
    """One conversation's answer, and the tokens it was cut at when it ran to max_new_tokens (or to the room the
    model's context left) rather than ending its turn, else None: the text may then stop mid-sentence. With
    `generator` (`answer_generator`), a sampled answer draws from it, not from torch's global generator."""
    prompts, fitted = fit_prompts(model, tokenizer, template, [messages], settings)
    answers, cut = _answer_batch(model, tokenizer, template, prompts, fitted[0], generator)
    return answers[0], (fitted[0].max_new_tokens or DEFAULT_MAX_NEW_TOKENS) if cut[0] else None


def _answer_batch(
    model,
    tokenizer,
    template: Template,
    prompts: list[list[int]],
    settings: GenerationSettings,
    generator: torch.Generator | None = None,
) -> tuple[list[str], list[bool]]:
    """The answers, and for each whether it ran to max_new_tokens without ending its turn."""
    pad = tokenizer.pad_token_id
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=_device(model))  # (B, T) left-padded
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=ids.device)
    kwargs = settings.kwargs(template, tokenizer, model, generator)
    new = model.generate(input_ids=ids, attention_mask=mask, **kwargs)[:, width:]  # (B, N)
    # a row that ended its turn early is padded after its end token; one that ran to the limit ends on a text token
    ends = set(template.stop_token_ids) | {tokenizer.eos_token_id, pad}
    full = new.shape[1] >= kwargs["max_new_tokens"]
    cut = [full and int(row[-1]) not in ends for row in new]
    # a thought's markers stay in the text where they are special tokens; an answer whose prompt opened the thought
    # (DeepSeek-R1's later templates) gets its `<think>` in front, so the text reads as the model's whole turn
    opened = [OPEN if prompt_opens_thought(tokenizer, p) else "" for p in prompts]
    return [(o + decode_answer(tokenizer, row.tolist())).strip() for o, row in zip(opened, new)], cut


def stream_answer(
    model,
    tokenizer,
    template: Template,
    messages: list[dict],
    settings: GenerationSettings,
    generator: torch.Generator | None = None,
) -> tuple[AnswerStream, int]:
    """The answer's text piece by piece as it is generated, and the most tokens it may have (max_new_tokens, or less
    where the model's context leaves less room). ContextTooLong, raised here rather than by the first piece, when the
    conversation leaves the model no room to answer. With `generator`, a sampled answer draws from it."""
    prompt = torch.tensor([render_prompt(messages, tokenizer, template)], device=_device(model))
    settings = fit_context(model, prompt.shape[1], settings)
    stream = AnswerStream(model, tokenizer, template, prompt, settings, generator)
    return stream, settings.max_new_tokens or DEFAULT_MAX_NEW_TOKENS


class _Cancelled:
    """A transformers stopping criterion that ends generation once `event` is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class Streamed:
    """`model.generate(**kwargs)` on a worker thread, its text read piece by piece as it is generated.

    Iterating gives the text pieces; if generation failed, its exception is raised after the last piece (the worker
    ends the streamer either way, so a reader never waits for a piece that will not come). `cancel()` ends the
    generation at its next token, from any thread, without waiting for it. `on_done` runs on the worker once
    generate has returned or failed, which is where a caller's queue can be released: a reader that stops early
    need not wait for the generation's end. `output` holds generate's ids once `finished` is set. The text is
    decoded without special tokens, but the ids of `keep` (see KeepingDecoder)."""

    def __init__(self, model, tokenizer, kwargs: dict, on_done: Callable[[], None] | None = None, keep=()):
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        if keep:
            self.streamer = TextIteratorStreamer(KeepingDecoder(tokenizer, keep), skip_prompt=True)
        else:
            self.streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.cancelled, self.finished = threading.Event(), threading.Event()
        self.output: torch.Tensor | None = None
        self.error: BaseException | None = None
        kwargs = kwargs | {
            "streamer": self.streamer,
            "stopping_criteria": StoppingCriteriaList([_Cancelled(self.cancelled)]),
        }
        self._on_done = on_done
        threading.Thread(target=self._work, args=(model, kwargs), daemon=True).start()

    def _work(self, model, kwargs: dict) -> None:
        try:
            with torch.no_grad():
                self.output = model.generate(**kwargs)
        except BaseException as exc:  # raised to the reader after the last piece
            self.error = exc
            self.streamer.end()
        finally:
            self.finished.set()
            if self._on_done is not None:
                self._on_done()

    def cancel(self) -> None:
        self.cancelled.set()

    def __iter__(self) -> Iterator[str]:
        yield from self.streamer
        self.finished.wait()
        if self.error is not None:
            raise self.error


class AnswerStream:
    """One answer's text pieces as generated (iterate; generation starts with the first piece). `close()` ends it at
    its next token and waits for that (one generate on the model at a time). Once read to its end, `cut` says whether
    it ended at max_new_tokens rather than at the end of its turn: the text may stop mid-sentence."""

    def __init__(
        self,
        model,
        tokenizer,
        template: Template,
        prompt: torch.Tensor,
        settings: GenerationSettings,
        generator: torch.Generator | None = None,
    ):
        self.limit = settings.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        self.stops = set(template.stop_token_ids) | {tokenizer.eos_token_id}
        self.cut = False
        self._pieces = self._read(model, tokenizer, template, prompt, settings, generator)

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def close(self) -> None:
        self._pieces.close()

    def _read(
        self, model, tokenizer, template: Template, prompt: torch.Tensor, settings: GenerationSettings, generator
    ):
        kwargs = settings.kwargs(template, tokenizer, model, generator) | {
            "input_ids": prompt,
            "attention_mask": torch.ones_like(prompt),
        }
        # a thought's markers are kept where they are special tokens, and one the prompt opened is written first
        generation = Streamed(model, tokenizer, kwargs, keep=special_think_ids(tokenizer))
        try:
            if prompt_opens_thought(tokenizer, prompt[0].tolist()):
                yield OPEN + "\n"
            yield from generation
        finally:
            generation.cancel()  # a reader that stopped early (Ctrl-C in chat) ends the generation at its next token,
            generation.finished.wait()  # and the next answer starts once it has: one generate on the model at a time
        new = generation.output[0, prompt.shape[1] :].tolist()
        self.cut = len(new) >= self.limit and new[-1] not in self.stops
