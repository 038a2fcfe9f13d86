"""A conversation to answer, read as training read its conversations: the system message where training put it (an
empty or blank one is none, and none becomes the run's data.system_prompt). Used by generate (the API and the CLI)
and by the server alike, so each sends the model the prompt it was trained on."""

from __future__ import annotations

from tunelab.data.formats import trained_system
from tunelab.errors import ConfigError


class Untrained(ConfigError):
    """A conversation of a shape that training skips, so the model never saw one: its message named as the JSON path
    `messages.N` (from 0, as OpenAI's API and validation errors name it); `param` is the field at fault."""

    def __init__(self, message: str, param: str = "messages"):
        super().__init__(message)
        self.param = param


class LateSystem(Untrained):
    """A system message after the first message, which training never shows the model."""


def as_trained(messages: list[dict], system_prompt: str | None) -> list[dict]:
    """The conversation with its system message as training wrote it: an empty or blank first system message is
    none, and one that is none becomes the run's data.system_prompt. LateSystem for a system message after the first
    (training skips such conversations, and the llama2 and alpaca templates would write it as an answer); Untrained
    for a conversation that does not start with the user's message (after the system message) or holds an empty or
    blank user or assistant message, which training skips too ("empty question", "empty answer")."""
    start = 1 if messages and messages[0]["role"] == "system" and not messages[0]["content"].strip() else 0
    rest = messages[start:]
    late = next((start + i for i, m in enumerate(rest) if i and m["role"] == "system"), None)
    if late is not None:
        raise LateSystem(
            f"messages.{late} is a system (or developer) message after the first message; the model was trained "
            "with a system message first only. Join the system messages into the first message.",
            f"messages.{late}.role",
        )
    first = start + (1 if rest and rest[0]["role"] == "system" else 0)
    if first < len(messages) and messages[first]["role"] != "user":
        raise Untrained(
            f"messages.{first} is the {messages[first]['role']}'s before any user message; the model was trained "
            "on conversations that start with the user's message (after any system message). Start with the user's.",
            f"messages.{first}.role",
        )
    blank = next(  # an assistant's turn that calls tools may have no text; a tool's result is not an answer
        (
            i
            for i, m in enumerate(messages)
            if m["role"] in ("user", "assistant") and not m.get("tool_calls") and not m["content"].strip()
        ),
        None,
    )
    if blank is not None and messages[blank]["role"] == "user":
        raise Untrained(
            f"messages.{blank} is the user's and is empty; the model was trained on no empty question. "
            "Give the text of the question, or leave the message out.",
            f"messages.{blank}.content",
        )
    if blank is not None:
        raise Untrained(
            f"messages.{blank} is the assistant's and is empty; the model was trained on no empty answer. "
            "Give the text of the answer, or leave out the exchange (the question and its answer).",
            f"messages.{blank}.content",
        )
    if trained_system(system_prompt) and not (rest and rest[0]["role"] == "system"):
        rest = [{"role": "system", "content": system_prompt}, *rest]
    return rest
