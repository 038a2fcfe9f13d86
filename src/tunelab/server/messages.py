"""The messages of a chat request as the run's chat template takes them: OpenAI's content parts joined, an
assistant's earlier tool calls given their arguments as an object, and every field the template would not write
refused (the model would never see it), each error naming the message by its JSON path (`messages.2.content`)."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from tunelab.errors import article


class Message(BaseModel):
    model_config = ConfigDict(
        extra="allow"
    )  # checked by `read_message`: a field the template would not write is refused
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class Refused(ValueError):
    """A request this server would not honour: `param` names the field (OpenAI's error's param)."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


# What a message may carry beyond its role and content, which reaches the model only through a chat template that
# writes it (`Template.uses`): a name, an assistant's earlier tool calls, the id of the call a tool's result answers.
# A null (OpenAI's SDK sends an earlier answer back with "refusal": null, "tool_calls": null, ...) asks for nothing.
MESSAGE_FIELDS = {"name": "name", "tool_calls": "tool_calls", "tool_call_id": "tool"}
MESSAGE_NULLS = ("refusal", "audio", "annotations", "function_call")
# An earlier answer's thought, as this server (and vLLM) answered it and a client sends it back: given to the template
# as `reasoning_content`, which reasoning models' templates read (Qwen3's writes it in a turn of tool calls under way)
# or leave out (earlier thoughts are not in the prompts such a model was trained on).
THOUGHT_FIELDS = ("reasoning_content", "reasoning")


def read_message(m: Message, index: int, template) -> dict:
    """A request's message as the template takes it; Refused naming the field the run's template would not write
    (the model would never see it), or one OpenAI does not define. Every error names the message as its JSON path,
    `messages.N` from 0 (`index`), as validation errors and OpenAI's `param` do."""
    role = "system" if m.role == "developer" else m.role
    where = f"messages.{index}"
    if role == "tool" and not template.uses("tool"):
        raise Refused(
            f"{where}.role",
            f"{where} is a tool's result (role 'tool'), which the run's prompt template ('{template.name}') "
            "does not write, so the model would not see it; leave it out, or give the result in a user message.",
        )
    if role == "tool" and not isinstance(m.content, str | list):
        raise Refused(f"{where}.content", f"{where} is a tool's result and needs its text as 'content'.")
    out = {"role": role, "content": message_text(m.content, m.role, where)}
    for key, value in (m.model_extra or {}).items():
        if value is None or (key == "tool_calls" and value == []) or (key in MESSAGE_NULLS and not value):
            continue
        if key in THOUGHT_FIELDS and role == "assistant":
            out.setdefault("reasoning_content", _string(value, f"{where}.{key}"))
            continue
        wanted = MESSAGE_FIELDS.get(key)
        if (
            wanted is None
            or (key == "tool_calls") != (role == "assistant")
            or (key == "tool_call_id") != (role == "tool")
        ):
            raise Refused(
                f"{where}.{key}",
                f"{where} ({m.role}) has the field {key!r}, which this server does not read on {article(m.role)}'s "
                "message; leave it out.",
            )
        if not template.uses(wanted):
            raise Refused(
                f"{where}.{key}",
                f"{where} has {key!r}, which the run's prompt template ('{template.name}') does not write, "
                "so the model would not see it; leave it out"
                + (" (or say the name in the content)." if key == "name" else "."),
            )
        out[key] = _tool_calls(value, where) if key == "tool_calls" else _string(value, f"{where}.{key}")
    return out


def _string(value, param: str) -> str:
    if not isinstance(value, str):
        raise Refused(param, f"{param}: Input should be a valid string")
    return value


def _tool_calls(calls, where: str) -> list[dict]:
    """An assistant's tool calls as chat templates take them: OpenAI sends each call's arguments as a JSON text,
    Hugging Face templates read an object (as vLLM gives them)."""
    if not isinstance(calls, list):
        raise Refused(f"{where}.tool_calls", f"{where}.tool_calls: Input should be a valid list")
    out = []
    for k, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise Refused(
                f"{where}.tool_calls.{k}",
                f"{where}.tool_calls.{k}: give the call as OpenAI does, "
                '{"id": ..., "type": "function", "function": {"name": ..., "arguments": "{...}"}}.',
            )
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments or "{}")
            except json.JSONDecodeError:
                raise Refused(
                    f"{where}.tool_calls.{k}.function.arguments",
                    f"{where}.tool_calls.{k}.function.arguments: not valid JSON ({arguments[:80]!r}).",
                ) from None
        out.append(call | {"function": function | {"arguments": arguments}})
    return out


def message_text(content, role: str, where: str) -> str:
    """A message's content: a string, or OpenAI's list of parts, whose texts are joined by a line break (as vLLM
    joins them: "Code of box" and "3?" are two lines, not "Code of box3?"). Only an assistant's turn may come without
    one (when it calls tools). Refused naming the field under `where` (the message's path, "messages.2")."""
    if content is None:
        if role != "assistant":
            raise Refused(f"{where}.content", f"{where} is the {role}'s and has no content; give its text as 'content'")
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for i, part in enumerate(content):
        if part.get("type") != "text":
            raise Refused(
                f"{where}.content.{i}.type",
                f"{where}.content.{i} is a content part of type {part.get('type')!r}: this model reads text parts only",
            )
        if not isinstance(part.get("text"), str):
            raise Refused(
                f"{where}.content.{i}.text",
                f"{where}.content.{i} is a content part of type 'text' and needs its text as a string, got "
                f"{part.get('text')!r}",
            )
        parts.append(part["text"])
    return "\n".join(parts)
