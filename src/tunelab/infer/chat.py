"""An interactive multi-turn chat with a tuned model, streaming its answers. /reset clears the history, /exit (or
Ctrl-D, or Ctrl-C at the prompt) leaves, /system TEXT sets the system prompt (/system alone: the run's own;
/system none: none at all, as serve's "default_system_prompt": false), Ctrl-C during an answer stops it. A line
ending in a backslash continues on the next (Ctrl-C there drops the message being typed, and the chat goes on). A
conversation grown past the model's context loses its oldest exchanges (said once). An answer runs until the model
ends its turn, within the room the context leaves (as serve's, vLLM's and Ollama's do), unless max_new_tokens is set.
An empty answer is not kept, nor the question it answered: training skips a conversation holding an empty answer, so
the model would be shown a turn it never saw."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import TextIO

from tunelab.config.flags import CLI, Spelling
from tunelab.data.reasoning import split_thought
from tunelab.data.render import ControlTokenText, NotText, render_prompt
from tunelab.data.templates import TemplateRefused
from tunelab.errors import counted
from tunelab.infer.generate import (
    DEFAULT_MAX_NEW_TOKENS,
    ContextTooLong,
    GenerationSettings,
    answer_generator,
    config_notice,
    context_length,
    longer_answers,
    room_left,
    stream_answer,
)
from tunelab.infer.run import LoadedRun

COMMAND = re.compile(r"/[A-Za-z]+")  # a line that is one such word is a command, never a message
COMMANDS = ("/exit", "/quit", "/reset", "/system")
# The least room an answer is left without max_new_tokens: the oldest exchanges are left out below it.
ANSWER_ROOM = DEFAULT_MAX_NEW_TOKENS


def _message(read: Callable[[str], str]) -> str | None:
    """One message, of one line or several: a line ending in a backslash continues on the next (the backslash
    becomes a line break). None for one dropped by Ctrl-C at a continuation prompt."""
    lines = [read("you> ")]
    while lines[-1].rstrip().endswith("\\"):
        lines[-1] = lines[-1].rstrip()[:-1]
        try:
            lines.append(read("...> "))
        except KeyboardInterrupt:
            return None
        except EOFError:
            raise _EndedInMessage from None
    return "\n".join(lines).strip()


def _terminal_read(stdin: TextIO) -> Callable[[str], str]:
    """`input`, which writes the prompt and reads a line; from a pipe or a file (`tunelab chat RUN < questions.txt`)
    the line is also written after its prompt, as a terminal echoes what is typed, so that the transcript reads
    `you> question` then `model> answer` rather than `you> model> answer`."""
    if stdin.isatty():
        return input

    def read(prompt: str) -> str:
        line = input(prompt)
        print(line, flush=True)
        return line

    return read


class _EndedInMessage(EOFError):
    """The input ended (Ctrl-D, the end of a piped file) at a continuation prompt: the message was never finished."""


def _fitted(run: LoadedRun, messages: list[dict], head: int, wanted: int) -> list[dict]:
    """`messages` without their oldest exchanges (a question and its answer, after the `head` system messages) as
    far as it takes for the prompt to leave the model's context room for `wanted` new tokens; the last message is
    always kept (ContextTooLong, from stream_answer, when it alone leaves no room)."""
    limit = context_length(run.model)
    while (
        limit is not None
        and len(messages) - head > 1
        and len(render_prompt(messages, run.tokenizer, run.template)) + wanted > limit
    ):
        messages = messages[:head] + messages[head + 2 :]
    return messages


def chat(
    run: LoadedRun,
    settings: GenerationSettings,
    read: Callable[[str], str] | None = None,
    out: TextIO | None = None,
    spelling: Spelling = CLI,
    seed: int | None = None,
) -> list[dict]:
    """Loop until /exit or end of input; returns the conversation. `read` and `out`: the terminal's `input` and
    stdout by default; `spelling`: how its notes name the settings (`tunelab chat`'s flags, or the Python API's).
    `seed`: sampled answers draw from a generator of the chat's own, seeded once, so the same messages get the same
    answers again (torch's global generator is left alone); greedy answers (temperature 0) draw nothing."""
    generator = answer_generator(seed, run.model, "--seed" if spelling.flags else "chat(): argument 'seed'")
    read, out = read or _terminal_read(sys.stdin), out or sys.stdout
    trained = [{"role": "system", "content": run.system_prompt}] if run.system_prompt else []
    system = trained
    messages, trimmed = list(system), False
    out.write(
        f"chatting with {run.run_dir} — /reset to start over, /system TEXT to set the system prompt (/system none: "
        "none), /exit to leave; "
        "end a line with \\ to go on to the next\n"
    )
    if notice := config_notice(run.model):
        out.write(f"({notice})\n")
    if notice := run.system_prompt_notice("/system TEXT sets another"):
        out.write(f"{notice}\n")
    while True:
        try:
            text = _message(read)
        except (EOFError, KeyboardInterrupt) as exc:  # Ctrl-D or Ctrl-C: end the line, and the chat as /exit does
            out.write("\n")
            if isinstance(exc, _EndedInMessage):
                out.write("(input ended inside a message continued with \\: the message was not sent.)\n")
            break
        except UnicodeDecodeError as exc:  # a terminal line that is not UTF-8 (strict decoding of stdin)
            out.write(f"(not sent: the line is not UTF-8 text: {exc.reason} at byte {exc.start}.)\n")
            continue
        if text is None:  # Ctrl-C at "...> ": the message being typed goes, not the chat
            out.write("\n(message discarded: its lines were not sent.)\n")
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            messages = list(system)
            out.write("(conversation reset: the model no longer sees the earlier messages.)\n")
            continue
        if text == "/system" or text.startswith(("/system ", "/system\n")):
            given = text.removeprefix("/system").strip()
            # "none": no system message, the prompt of a conversation trained without one (the template's own default
            # where it writes one), as serve's "default_system_prompt": false
            wanted = [] if given.lower() == "none" else [{"role": "system", "content": given}] if given else trained
            try:  # refused now rather than with every later message
                render_prompt([*wanted, {"role": "user", "content": "Hi"}], run.tokenizer, run.template)
            except (ControlTokenText, NotText, TemplateRefused) as exc:
                out.write(f"(system prompt not set: {exc})\n")
                continue
            messages = wanted + messages[len(system) :]
            system = wanted
            out.write(
                "(no system prompt from the next answer on: the prompt of a conversation trained without one.)\n"
                if given.lower() == "none"
                else "(system prompt set; the model reads it from the next answer on.)\n"
                if given
                else "(system prompt back to the run's own.)\n"
            )
            continue
        if not text:
            continue
        word = text.split(maxsplit=1)[0]
        if word.lower() in COMMANDS:  # "/exit now", "/Reset": meant as a command, never a question for the model
            how = f"commands are lower-case: {word.lower()}" if word != word.lower() else f"{word} takes no text"
            out.write(f"(not sent: {how}; /reset starts over, /system TEXT, /exit leaves.)\n")
            continue
        if COMMAND.fullmatch(text):  # a mistyped command ("/exti") would be sent to the model as a question
            out.write(f"(not sent: unknown command {text}; /reset starts over, /system TEXT, /exit leaves.)\n")
            continue
        messages.append({"role": "user", "content": text})
        try:
            kept = _fitted(run, messages, len(system), settings.max_new_tokens or ANSWER_ROOM)
            if len(kept) < len(messages) and not trimmed:
                out.write(
                    "(the conversation no longer fits the model's context: from now on its oldest turns are left "
                    "out, the model no longer sees them.)\n"
                )
                trimmed = True
            messages = kept
            prompt = len(render_prompt(messages, run.tokenizer, run.template))
            answering = room_left(run.model, prompt, settings)  # without max_new_tokens: the room the context leaves
            answer, room = stream_answer(run.model, run.tokenizer, run.template, messages, answering, generator)
        except ContextTooLong as exc:
            messages.pop()
            out.write(f"(not sent: {exc} /reset starts a new conversation.)\n")
            continue
        except (ControlTokenText, NotText, TemplateRefused) as exc:  # this message only; the chat goes on
            messages.pop()
            out.write(f"(not sent: {exc})\n")
            continue
        out.write("model> ")
        pieces = []
        try:
            for piece in answer:
                out.write(piece)
                out.flush()
                pieces.append(piece)
        except KeyboardInterrupt:  # Ctrl-C stops the answer, not the chat: it is kept as far as it was shown
            answer.close()  # the generation ends at its next token
            out.write(" (stopped)")
        out.write("\n")
        wanted = settings.max_new_tokens or room
        if settings.max_new_tokens is None and answer.cut and context_length(run.model) is not None:
            out.write(
                f"(the answer filled the room the model's context leaves, {counted(room, 'token')}, and was cut "
                "there; /reset starts a new conversation.)\n"
            )
        elif room < wanted:  # the answer may have been cut there
            out.write(
                f"(the model's context left this answer room for {room} of the {wanted} tokens asked; /reset starts "
                "a new conversation.)\n"
            )
        elif answer.cut:  # else the text stops mid-sentence without a word
            out.write(
                f"(the answer was cut at {counted(wanted, 'token')}, the limit; {longer_answers(spelling)} allows more.)\n"
            )
        # a thought is shown as the model writes it, and kept apart from the answer, as an OpenAI client sends it back
        thought, answer_text = split_thought("".join(pieces))
        if not answer_text:  # training skips a conversation with an empty answer: the model never saw one
            messages.pop()
            out.write("(no answer: the question is not kept in the conversation.)\n")
            continue
        messages.append(
            {"role": "assistant", "content": answer_text} | ({"reasoning_content": thought} if thought else {})
        )
    return messages
