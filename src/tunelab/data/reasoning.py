"""A reasoning model's thought, read out of its answer into `reasoning_content` (and `reasoning`).

Reasoning models (Qwen3, QwQ, DeepSeek-R1 and its distills) write a thought before their answer:

    <think>
    The user asks for ... so the code is 7.
    </think>

    The code of box 3 is 7.

OpenAI-compatible servers answer the thought apart from the answer: vLLM's reasoning parsers give it as the message's
`reasoning_content` (since renamed `reasoning`, both kept in step; the DeepSeek API, SGLang and llama.cpp's server
read `reasoning_content`), streamed as deltas of the same name, and `content` holds the answer alone. Both names are
given here. A thought opens where the answer opens with `<think>`, or, where the prompt itself ends with `<think>`
(DeepSeek-R1's later templates write it into the generation prompt), from the answer's first token; it ends at
`</think>`, and one that never ends (the answer cut at max_tokens) is all thought. An answer that opens otherwise has
none, so a model that does not think is answered as before. Where `<think>` and `</think>` are special tokens of the
run's tokenizer, the answer is decoded with them (`special_think_ids`).

The serve, chat, compare and eval commands read thoughts so, and so do grpo's rewards (tasks/rewards.py): those that
check the answer (`contains`, `equals`, a reward model, a function) see it without its thought, as
`tunelab eval` scores it. A reward model scores an answer without its thought wherever it reads one (`answer_apart`):
its training and eval pairs, `tunelab predict`, and the reward function `load_reward_model` gives.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.data.render import KeepingDecoder, special_ids

OPEN, CLOSE = "<think>", "</think>"


def special_think_ids(tokenizer) -> tuple[int, ...]:
    """The ids of `<think>` and `</think>` where each is one special token of `tokenizer` (skip_special_tokens
    would take it out of the answer's text)."""
    specials, out = special_ids(tokenizer), []
    for marker in (OPEN, CLOSE):
        token = tokenizer.convert_tokens_to_ids(marker)
        if token in specials and tokenizer.convert_ids_to_tokens(token) == marker:
            out.append(token)
    return tuple(out)


def decode_answer(tokenizer, ids: list[int]) -> str:
    """An answer's `ids` as text the thought can be read from: without special tokens, but `<think>` and `</think>`
    where they are special tokens (skip_special_tokens would run the thought into the answer). grpo's rewards read
    answers so, and generate, compare and eval their answers; the server and chat decode alike as they stream."""
    return KeepingDecoder(tokenizer, special_think_ids(tokenizer)).decode(ids)


def prompt_opens_thought(tokenizer, ids: list[int]) -> bool:
    """Whether the prompt's `ids` end with `<think>` (and whitespace): the answer then starts inside the thought."""
    tail = tokenizer.decode(ids[-8:], skip_special_tokens=False)
    return tail.rstrip().endswith(OPEN)


def split_thought(text: str) -> tuple[str | None, str]:
    """(the thought, the answer after it) of a whole answer as `infer.generate` decodes it (a thought the prompt
    opened written with its `<think>`): the thought None where the answer opens with none. What `eval` and `compare`
    score is the answer alone: a thought that mentions the expected text is no hit."""
    thought, answer = ThoughtReader().read(text, final=True)
    return thought, answer or ""


def answer_apart(answer: str, opened: bool = False) -> tuple[str | None, str]:
    """(the thought, the answer after it) of an answer a reward model scores (`split_thought`): the thought None,
    and the answer as written, its whitespace kept, where it opens with none. `opened`: the prompt ended with
    `<think>` (prompt_opens_thought), so the answer starts inside the thought, as the server reads it: its text up
    to `</think>` is the thought, and all of it where it has none (cut inside the thought)."""
    thought, after = ThoughtReader(opened).read(answer, final=True)
    return (None, answer) if thought is None else (thought, after or "")


def _tail(text: str, marker: str) -> int:
    """The length of the longest end of `text` that starts `marker` (it may still grow into it)."""
    return next((k for k in range(min(len(marker) - 1, len(text)), 0, -1) if text.endswith(marker[:k])), 0)


@dataclass(frozen=True)
class ThoughtReader:
    """Reads the thought of one answer; `opened`: the prompt ends with `<think>` (prompt_opens_thought)."""

    opened: bool = False

    def bounds(self, text: str, final: bool) -> tuple[int, int, int] | None:
        """(start, end, after) of the thought in `text`: `text[start:end]` the thought, `text[after:]` the answer
        after it; None for an answer without one. While not `final`, an answer that may still open one (blank, or
        the start of `<think>`) is a thought not begun, (0, 0, len(text)), and a thought not ended leaves out a tail
        that may still become `</think>`."""
        lead = len(text) - len(text.lstrip())
        start = 0
        if text.startswith(OPEN, lead):
            start = lead + len(OPEN)
        elif not self.opened:
            if not final and OPEN.startswith(text[lead:]):
                return 0, 0, len(text)
            return None
        end = text.find(CLOSE, start)
        if end >= 0:
            return start, end, end + len(CLOSE)
        return start, len(text) - (0 if final else _tail(text, CLOSE)), len(text)

    def read(self, text: str, final: bool) -> tuple[str | None, str | None]:
        """(the thought, the answer after it) of `text`, each stripped: the thought None where the answer has none,
        the answer None while the thought goes on (or may yet begin)."""
        bounds = self.bounds(text, final)
        if bounds is None:
            return None, text.strip()
        start, end, after = bounds
        ended = final or text[end:after] == CLOSE
        return text[start:end].strip(), (text[after:].strip() if ended else None)

    def span(self, text: str, inner=None) -> tuple[int, int, bool]:
        """The answer's own text after the thought (engine.AnswerSpan), where stop strings are looked for: from the
        thought's end, and up to a call (`inner`, the tool-call reader's span of the text after the thought). Text
        that may still open a thought is looked in as any answer's: `"stop": "\n"` ends one that opens with a line
        break, as it ends it without thoughts read."""
        bounds = self.bounds(text, final=False)
        begun = bounds is not None and (self.opened or bounds[0] > 0)  # a thought not begun starts at 0
        after = bounds[2] if begun else 0
        if inner is None:
            return after, len(text), False
        _, end, opened = inner(text[after:])
        return after, after + end, opened
