"""OpenAI's Responses API, `POST /v1/responses` (`client.responses.create`): text in, text out, on the same engine and
queue as a chat.

`input` is a text (the user's message) or a list of messages (`{"role", "content"}`, `"type": "message"` optional),
whose content is a text or a list of `input_text` parts (`output_text` for an earlier answer of the assistant's);
`instructions` is the system message put first. The conversation is then answered as a chat is: the run's template
and system prompt, the checks training's shape needs, the room the context leaves. The answer is one `message` item
of one `output_text` part; a reasoning model's thought comes before it as a `reasoning` item (vLLM's shape: its text
as a `reasoning_text` content part), and the usage counts its tokens as `output_tokens_details.reasoning_tokens`.
Streamed, the events are OpenAI's: `response.created`, `response.in_progress`, for each item
`response.output_item.added`, its part's deltas (`response.reasoning_text.delta`, `response.output_text.delta`) and
`.done` events, `response.output_item.done`, then `response.completed` (`response.incomplete` where the answer ran
out of `max_output_tokens`), each with its `sequence_number`; no `[DONE]` follows, as OpenAI sends none here.

What a chat request may say, a response request says too: `max_output_tokens` (a chat's max_tokens), `text.format`
of type text (another, structured output, is refused naming `text.format.type`), `reasoning.effort` (the chat
route's `reasoning_effort`, honoured where the run's template reads it), tunelab's `chat_template_kwargs` and
`default_system_prompt` as the chat route reads them, `metadata` (OpenAI's 16 texts) and `user`, echoed back.

This server keeps no responses: `previous_response_id` and `conversation` are refused (send the earlier turns in
`input`), and `store` is accepted and answered as false. Tools, structured output, log-probabilities and the other
options a text answer cannot honour are refused by name unless they ask for nothing. A failure inside generation
once the stream has begun is OpenAI's `error` event followed by `response.failed`, whose response carries the error
and what was answered so far; a client that leaves a stream ends its generation at the next token.
"""

from __future__ import annotations

import itertools
import json
import re
import time
import uuid
from functools import partial
from typing import Annotated, Any

import anyio
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from tunelab.data.reasoning import ThoughtReader
from tunelab.data.render import ControlTokenText, NotText, check_prompt_text
from tunelab.errors import TunelabError
from tunelab.infer.conversation import Untrained
from tunelab.infer.generate import ContextTooLong, GenerationSettings
from tunelab.server.engine import Completion, Engine, Reply
from tunelab.server.messages import Refused
from tunelab.server.replies import TokenCap, error, read_answer, refused_first, request_settings
from tunelab.server.template_kwargs import template_variables


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # checked by `unsupported_option`
    model: str
    input: str | Annotated[list[dict[str, Any]], Field(min_length=1)]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, strict=True)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, strict=True, allow_inf_nan=False)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0, strict=True, allow_inf_nan=False)
    stream: bool | None = Field(default=None, strict=True)
    # OpenAI's: {"format": {"type": "text"}} (structured output is refused), "verbosity" null (`text_format`)
    text: dict[str, Any] | None = None
    # OpenAI's: "effort" as the chat route's reasoning_effort; no "summary" (the thought itself is the reasoning item)
    reasoning: dict[str, Any] | None = None
    # OpenAI's 16 texts, keys of at most 64 characters and values of 512, echoed back in the response
    metadata: Annotated[
        dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512, strict=True)]] | None,
        Field(max_length=16),
    ] = None
    user: str | None = Field(default=None, strict=True)  # accepted and echoed, as OpenAI does; it changes nothing
    # tunelab's own, as the chat route reads them: no system prompt where the request has none; the chat template's
    # variables (server/template_kwargs.py)
    default_system_prompt: bool | None = Field(default=None, strict=True)
    chat_template_kwargs: dict[str, Any] | None = None


# Options that change nothing about a text answer here: accepted and not used (`store`: nothing is kept, and the
# response says "store": false; `parallel_tool_calls`: no tools are offered).
IGNORED = (
    *("store", "service_tier", "safety_identifier", "parallel_tool_calls", "stream_options"),
    *("prompt_cache_key", "prompt_cache_retention"),
)
# Options not implemented, with the values that ask for nothing (accepted); another is refused by name.
NOT_IMPLEMENTED: dict[str, tuple] = {
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "previous_response_id": (None,),
    "conversation": (None,),
    "include": (None, []),
    "top_logprobs": (None, 0),
    "max_tool_calls": (None,),
    "prompt": (None,),
    "background": (None, False),
    "truncation": (None, "disabled"),
}
WHY_NOT = {
    "previous_response_id": "this server keeps no responses; send the earlier turns as messages in 'input'",
    "conversation": "this server keeps no conversations; send the earlier turns as messages in 'input'",
    "background": "a response is answered while the request waits",
    "truncation": "a conversation too long for the context is refused, not cut",
    "prompt": "this server keeps no prompt templates; send the text in 'input'",
}
PART_TYPES = {"assistant": "output_text"}  # the part type of each role's text; every other role's is input_text
ITEM_FIELDS = ("type", "role", "content", "id", "status")  # an earlier output item sent back carries its id, status


def unsupported_option(body: ResponsesRequest) -> tuple[str, str] | None:
    """(option, message) for the first option of the request this server would not honour, else None."""
    for name, value in (body.model_extra or {}).items():
        if name in IGNORED:
            continue
        if name not in NOT_IMPLEMENTED:
            return name, f"unknown option {name!r}: /v1/responses reads {', '.join(ResponsesRequest.model_fields)}"
        if value not in NOT_IMPLEMENTED[name]:
            why = WHY_NOT.get(name) or (
                "it answers with plain text only: no tools, structured output or log-probabilities"
            )
            return name, f"option {name!r} is {json.dumps(value)[:80]}, which this server does not support ({why})"
    return None


REASONING_KEYS = ("effort", "summary", "generate_summary")


def text_format(body: ResponsesRequest) -> None:
    """Refused (naming `text.format.type`, `text.verbosity` or `text.KEY`) for a `text` option asking for more than
    plain text: structured output (json_schema, json_object) or a verbosity."""
    for key, value in (body.text or {}).items():
        if key == "format":
            kind = value.get("type") if isinstance(value, dict) else None
            if value is not None and kind != "text":
                raise Refused(
                    "text.format.type",
                    f"text.format.type is {json.dumps(kind)[:80]}: this server answers with plain text, "
                    '{"type": "text"}, and does not constrain it to a format (structured output); leave it out',
                )
        elif key == "verbosity":
            if value is not None:
                raise Refused(
                    "text.verbosity",
                    f"text.verbosity is {json.dumps(value)[:80]}: the model is not told a verbosity; leave it out",
                )
        else:
            raise Refused(f"text.{key}", f"text.{key}: the text option reads format and verbosity, not {key!r}")


def reasoning_effort(body: ResponsesRequest):
    """`reasoning.effort` (None where not given); Refused naming `reasoning.KEY` for a summary asked for (the
    thought itself is given, as a reasoning item) or a key OpenAI's option does not have."""
    for key, value in (body.reasoning or {}).items():
        if key not in REASONING_KEYS:
            raise Refused(f"reasoning.{key}", f"reasoning.{key}: the option reads {', '.join(REASONING_KEYS)}")
        if key != "effort" and value is not None:
            raise Refused(
                f"reasoning.{key}",
                f"reasoning.{key} is {json.dumps(value)[:80]}: this server gives no summary of a thought; the thought "
                "itself comes back as the reasoning item's content. Leave it out.",
            )
    return (body.reasoning or {}).get("effort")


def _text(content, role: str, where: str) -> str:
    """A message's content: a text, or a list of text parts (`input_text`, an assistant's `output_text`) joined
    by a line break, as a chat's parts are."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise Refused(f"{where}.content", f"{where}.content: give the message's text, or a list of text parts")
    wanted, parts = PART_TYPES.get(role, "input_text"), []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != wanted:
            raise Refused(
                f"{where}.content.{j}.type",
                f"{where}.content.{j} is a part of type {kind!r}: a {role}'s message is read as {wanted!r} parts only "
                "(this model reads text)",
            )
        if not isinstance(part.get("text"), str):
            raise Refused(f"{where}.content.{j}.text", f"{where}.content.{j} needs its text as a string")
        parts.append(part["text"])
    return "\n".join(parts)


def read_input(body: ResponsesRequest) -> list[dict]:
    """The request's conversation as chat messages: `instructions` first as the system message, then `input`.
    Refused naming the field (`input.2.content.0.type`) for an item that is no message, a role OpenAI does not
    give, or a part that is not text."""
    messages = [{"role": "system", "content": body.instructions}] if body.instructions is not None else []
    if isinstance(body.input, str):
        return [*messages, {"role": "user", "content": body.input}]
    for i, item in enumerate(body.input):
        where, kind = f"input.{i}", item.get("type", "message")
        if kind != "message":
            raise Refused(
                f"{where}.type",
                f"{where} is an item of type {json.dumps(kind)[:40]}: this server reads messages only (no tool calls, "
                "tool outputs, reasoning items or item references)",
            )
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise Refused(
                f"{where}.role", f"{where}.role is {json.dumps(role)[:40]}; give user, assistant, system or developer"
            )
        # a null asks for nothing: the openai client's output items, dumped to send back, hold "phase": null
        extra = next((key for key, value in item.items() if key not in ITEM_FIELDS and value is not None), None)
        if extra is not None:
            raise Refused(
                f"{where}.{extra}", f"{where} has the field {extra!r}, which this server does not read; leave it out"
            )
        if role in ("system", "developer") and (body.instructions or "").strip():
            raise Refused(  # as_trained would call input.0 a message "after the first": instructions come first
                f"{where}.role",
                f"{where} is a {role} message beside 'instructions', which is the system message; the model was "
                "trained with one system message. Join them into 'instructions'.",
            )
        content = _text(item.get("content"), role, where)
        messages.append({"role": "system" if role == "developer" else role, "content": content})
    return messages


def _renamed(text: str, body: ResponsesRequest) -> str:
    """`messages.N...` of the chat machinery's errors as the request names it: `instructions`, `input` (a text) or
    `input.K...`."""
    offset = 1 if body.instructions is not None else 0

    def name(match: re.Match) -> str:
        k = int(match.group(1)) - offset
        if k < 0:
            return "instructions"
        return "input" if isinstance(body.input, str) else f"input.{k}{match.group(2)}"

    return re.sub(r"messages\.(\d+)((?:\.\w+)*)", name, text)


def _refusal(exc: Exception, body: ResponsesRequest):
    """The 400 of a refused conversation, naming the field as the request names it (a special token's text, or
    text no tokenizer reads, is said with its place, as the chat route says it)."""
    param = _renamed(getattr(exc, "param", None) or "input", body)
    message = _renamed(str(exc), body)
    if param == "reasoning_effort":  # the chat route's name of what this request calls reasoning.effort
        param, message = "reasoning.effort", re.sub(r"^reasoning_effort\b", "reasoning.effort", message)
    return error(400, f"{param}: {message}" if isinstance(exc, ControlTokenText | NotText) else message, param=param)


def _usage(done: Completion) -> dict:
    return {
        "input_tokens": done.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": done.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": done.reasoning_tokens or 0},
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


def _reasoning_item(item_id: str, text: str | None, status: str) -> dict:
    content = [] if text is None else [{"type": "reasoning_text", "text": text}]
    return {"id": item_id, "type": "reasoning", "summary": [], "content": content, "status": status}


def _message_item(item_id: str, text: str | None, status: str) -> dict:
    content = [] if text is None else [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}


class _Answer:
    """One response's object, its ids and its state: the head OpenAI's response carries, filled in as it ends."""

    def __init__(self, body: ResponsesRequest, settings: GenerationSettings):
        self.id, self.created = f"resp_{uuid.uuid4().hex}", int(time.time())
        self.thought_id, self.message_id = f"rs_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}"
        self.head = {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "model": body.model,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "parallel_tool_calls": False,
            "tool_choice": "none",
            "tools": [],
            "text": {"format": {"type": "text"}, "verbosity": None},
            "reasoning": {"effort": (body.reasoning or {}).get("effort"), "summary": None},
            "truncation": "disabled",
            "store": False,
            "background": False,
            "previous_response_id": None,
            "metadata": body.metadata or {},
            "user": body.user,
            "error": None,
        }

    def body(self, status: str, output: list[dict], done: Completion | None = None) -> dict:
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        usage = _usage(done) if done is not None else None
        return self.head | {"status": status, "incomplete_details": incomplete, "output": output, "usage": usage}

    def finished(self, done: Completion, thought: str | None, text: str) -> dict:
        status = "incomplete" if done.finish_reason == "length" else "completed"
        output = [_reasoning_item(self.thought_id, thought, "completed")] if thought else []
        output.append(_message_item(self.message_id, text, status))
        return self.body(status, output, done)


async def _events(reply: Reply, answer: _Answer, request: Request):
    """OpenAI's server-sent events of a streamed response (the module's docstring lists them). The pieces are read
    on a worker thread; a client that leaves cancels the generation, which ends at its next token."""
    numbers = itertools.count()

    def event(kind: str, **fields) -> str:
        data = {"type": kind, "sequence_number": next(numbers)} | fields
        return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"

    def part(item_id: str, index: int, **fields) -> dict:
        return {"item_id": item_id, "output_index": index, "content_index": 0} | fields

    text, said, sent, index, state = "", "", "", 0, "none"  # state: none, thinking, answering
    thought = reply.thought or ThoughtReader()
    try:
        yield event("response.created", response=answer.body("in_progress", []))
        yield event("response.in_progress", response=answer.body("in_progress", []))
        pieces = iter(reply)
        while (piece := await anyio.to_thread.run_sync(next, pieces, None)) is not None:
            if await request.is_disconnected():
                return
            final = isinstance(piece, Completion)
            text += "" if final else piece
            thinking, shown = thought.read(text, final)
            if thinking and state == "none":  # a thought begins: its reasoning item opens
                item = _reasoning_item(answer.thought_id, None, "in_progress")
                yield event("response.output_item.added", output_index=0, item=item)
                state = "thinking"
            if state == "thinking" and thinking and len(thinking) > len(said) and thinking.startswith(said):
                yield event("response.reasoning_text.delta", **part(answer.thought_id, 0, delta=thinking[len(said) :]))
                said = thinking
            if not final and not shown:  # the thought goes on, or no answer text yet
                continue
            if state == "thinking":  # the thought ended: its item closes, the answer's opens after it
                yield event("response.reasoning_text.done", **part(answer.thought_id, 0, text=said))
                item = _reasoning_item(answer.thought_id, said, "completed")
                yield event("response.output_item.done", output_index=0, item=item)
                index, state = 1, "none"
            if state == "none":
                item = _message_item(answer.message_id, None, "in_progress")
                yield event("response.output_item.added", output_index=index, item=item)
                empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                yield event("response.content_part.added", **part(answer.message_id, index, part=empty))
                state = "answering"
            shown = shown or ""
            if shown.startswith(sent) and len(shown) > len(sent):
                delta = shown[len(sent) :]
                yield event("response.output_text.delta", **part(answer.message_id, index, delta=delta, logprobs=[]))
                sent = shown
            if final:
                whole = answer.finished(piece, said or None, sent)
                item = whole["output"][-1]
                yield event("response.output_text.done", **part(answer.message_id, index, text=sent, logprobs=[]))
                yield event("response.content_part.done", **part(answer.message_id, index, part=item["content"][0]))
                yield event("response.output_item.done", output_index=index, item=item)
                yield event(f"response.{whole['status']}", response=whole)
    except Exception as exc:  # the status line is already sent: OpenAI's error event, then the response failed
        message = f"generation failed: {type(exc).__name__}: {exc}"
        yield event("error", code="server_error", message=message, param=None)
        output = [_reasoning_item(answer.thought_id, said, "incomplete")] if said else []
        if state == "answering":
            output.append(_message_item(answer.message_id, sent, "incomplete"))
        failed = answer.body("failed", output) | {"error": {"code": "server_error", "message": message}}
        yield event("response.failed", response=failed)
    finally:
        reply.cancel()


def add_responses_route(app, engine: Engine, defaults: GenerationSettings, no_model, token_cap: TokenCap) -> None:
    """Serve POST /v1/responses on `app` with `engine`; `defaults`: the server's options, as for a chat;
    `no_model(name, param)`: the 404 of a model not served; `token_cap`: the most max_output_tokens of a model that
    does not state its context length, as for a chat."""

    @app.post("/v1/responses")
    async def responses(body: ResponsesRequest, request: Request):
        first = refused_first(body, engine, no_model, unsupported_option, ("max_output_tokens",), token_cap)
        if first is not None:
            return first
        try:
            text_format(body)
            effort = reasoning_effort(body)
            variables = template_variables(engine.run.template, body.chat_template_kwargs, effort)
            messages = read_input(body)
            check_prompt_text(messages, engine.run.tokenizer, None)
        except (Refused, ControlTokenText, NotText) as exc:
            return _refusal(exc, body)
        if messages[-1]["role"] != "user":
            where = _renamed(f"messages.{len(messages) - 1}", body)
            return error(
                400,
                f"{where} is the {messages[-1]['role']}'s; the last message must be the user's (this server writes "
                "the assistant's answer after it, as the model was trained)",
                param=f"{where}.role",
            )
        try:
            settings = request_settings(defaults, body.max_output_tokens, body)
        except TunelabError as exc:
            return error(400, str(exc))
        asked = "max_output_tokens" if body.max_output_tokens is not None else None
        answer = _Answer(body, settings)
        try:
            reply = await anyio.to_thread.run_sync(
                partial(
                    engine.stream,
                    messages,
                    settings,
                    [],
                    asked=asked,
                    default_system=body.default_system_prompt is not False,
                    variables=variables,
                )
            )
            if body.stream:
                return StreamingResponse(_events(reply, answer, request), media_type="text/event-stream")
            done = await read_answer(reply, request)
        except ContextTooLong as exc:
            return error(400, str(exc), param="input", code="context_length_exceeded")
        except (Untrained, ControlTokenText, NotText) as exc:
            return _refusal(exc, body)
        except TunelabError as exc:
            return error(400, str(exc))
        if done is None:
            return Response(status_code=499)  # the client closed the connection: nobody reads this
        thought, text = (reply.thought or ThoughtReader()).read(done.text, final=True)
        return answer.finished(done, thought, text or "")
