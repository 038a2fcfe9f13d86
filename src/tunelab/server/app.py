"""The HTTP routes of `tunelab serve`, in OpenAI's chat-completions dialect, so existing clients (the `openai`
package, LangChain, curl scripts) talk to a tuned run unchanged.

    GET  /health                 {"status": "ok", "model": ID}          (no API key needed; HEAD too, without the body)
    GET  /v1/models              the one model, as OpenAI lists models
    POST /v1/chat/completions    an answer, or with "stream": true server-sent events ending in `data: [DONE]`
    POST /v1/completions         the legacy raw-prompt continuation (server/completions.py)
    POST /v1/responses           OpenAI's Responses API: text in, text out, its own events (server/responses.py)

Errors are JSON in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: 400 for a malformed body or
an unsupported option, 401 for a missing or wrong API key, 404 for an unknown model or route. A failure inside
generation is a 500 in the same shape, and the server keeps serving.
"""

from __future__ import annotations

import json
import re
import secrets
import time
import uuid
from functools import partial
from typing import Annotated, Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from tunelab.config.flags import PYTHON, Spelling
from tunelab.data.reasoning import ThoughtReader
from tunelab.data.render import ControlTokenText, NotText, check_prompt_text
from tunelab.errors import TunelabError
from tunelab.infer.conversation import Untrained
from tunelab.infer.generate import UNKNOWN_CONTEXT_TOKENS, ContextTooLong, GenerationSettings
from tunelab.server.completions import add_completions_route
from tunelab.server.engine import Completion, Engine, Reply
from tunelab.server.messages import Message, Refused, read_message
from tunelab.server.replies import (
    TokenCap,
    choice_seed,
    error,
    error_body,
    read_answer,
    refused_first,
    request_settings,
    usage_of,
)
from tunelab.server.responses import add_responses_route
from tunelab.server.template_kwargs import template_variables
from tunelab.server.tool_calls import (
    ToolCallReader,
    tool_call_reader,
    tool_definition_problem,
    tool_result_problem,
)

# The most a request may ask of a model that does not state its context length (unless the server's default,
# --max-new-tokens, is more), which is what it gets unasked; where it does, the room the prompt leaves is the limit
# (context_length_exceeded).
MAX_TOKENS_CAP = UNKNOWN_CONTEXT_TOKENS
MAX_CHOICES = 128  # the most answers one request may ask (OpenAI's limit on n)
ROUTES = (
    "GET (or HEAD) /health, GET /v1/models, GET /v1/models/ID, POST /v1/chat/completions, POST /v1/completions and "
    "POST /v1/responses"
)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool | None = Field(default=None, strict=True)  # "yes" is no bool: a 400, not true
    # OpenAI's random padding of each chunk against length side channels: the chunks say the same without it
    include_obfuscation: bool | None = Field(default=None, strict=True)


StopText = Annotated[str, Field(min_length=1)]  # an empty stop string would end every answer before it starts


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # checked by `unsupported_option`: OpenAI clients send more than we read
    model: str
    messages: list[Message] = Field(min_length=1)
    # strict: JSON's true is not the number 1, nor "true" a bool (a float field still takes an integer)
    max_tokens: int | None = Field(default=None, ge=1, strict=True)  # at most the context's room, or `token_cap`
    max_completion_tokens: int | None = Field(default=None, ge=1, strict=True)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, strict=True, allow_inf_nan=False)
    # OpenAI's range, 0 included: a nucleus of no probability mass holds the likeliest token alone, so 0 is greedy
    top_p: float | None = Field(default=None, ge=0.0, le=1.0, strict=True, allow_inf_nan=False)
    stream: bool | None = Field(default=None, strict=True)
    stream_options: StreamOptions | None = None
    stop: StopText | Annotated[list[StopText], Field(max_length=4)] | None = None  # OpenAI's limit: 4 sequences
    # answers to the same prompt, generated one after another (the queue takes one generation at a time)
    n: int | None = Field(default=None, ge=1, le=MAX_CHOICES, strict=True)
    # OpenAI's range (a 64-bit signed integer), which torch's generator takes; -1 asks for no seed, as vLLM reads it
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63, strict=True)
    # OpenAI's tool definitions: shown to the model through a chat template that writes them, else refused
    tools: list[dict[str, Any]] | None = None
    # false: at most one tool call answered, the first the model wrote (server/tool_calls.py)
    parallel_tool_calls: bool | None = Field(default=None, strict=True)
    # tunelab's own: false asks for no system prompt where the request has none (else the run's data.system_prompt)
    default_system_prompt: bool | None = Field(default=None, strict=True)
    # values of the chat template's own variables, such as Qwen3's enable_thinking (server/template_kwargs.py)
    chat_template_kwargs: dict[str, Any] | None = None
    # OpenAI's; honoured where the run's chat template reads a reasoning_effort variable (gpt-oss's), else a 400
    reasoning_effort: Any = None


# Options of OpenAI's chat completions that change nothing about a plain text answer: accepted and not used.
IGNORED = (
    *("user", "metadata", "store", "service_tier", "safety_identifier"),
    *("prompt_cache_key", "prompt_cache_retention", "prompt_cache_options"),  # hints to a cache this server lacks
)
# Options this server does not implement, with the values that ask for nothing (they are accepted); any other value
# would have been answered as if the option were absent, so it is refused.
NOT_IMPLEMENTED: dict[str, tuple] = {
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "response_format": (None, {"type": "text"}),
    "tool_choice": (None, "none", "auto"),  # "required" or one function: generation is not constrained to a call
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "frequency_penalty": (None, 0),
    "presence_penalty": (None, 0),
    "logit_bias": (None, {}),
    "modalities": (None, ["text"]),
    # a null asks for nothing: clients that pass every option of OpenAI's API send these as null
    "audio": (None,),
    "prediction": (None,),
    "web_search_options": (None,),
    "verbosity": (None,),
    "moderation": (None,),
    # vLLM's: a final assistant message continued rather than answered (a prefill); the defaults ask for nothing
    "add_generation_prompt": (None, True),
    "continue_final_message": (None, False),
}
# Why an option of NOT_IMPLEMENTED is refused, where the general reason (plain text answers) is not it.
WHY_NOT = {
    "add_generation_prompt": "this server always writes a new assistant turn, the prompt the model was trained on",
    "continue_final_message": "this server always writes a new assistant turn, the prompt the model was trained on",
}


# The values OpenAI's tool_choice and legacy function_call take; another is a mistake, not an unsupported option.
CHOICES = {
    "tool_choice": ('"none"', '"auto"', '"required"', '{"type": "function", "function": {"name": NAME}}'),
    "function_call": ('"none"', '"auto"', '{"name": NAME}'),
}


def _invalid_choice(name: str, value) -> bool:
    """Whether `value` is no value OpenAI's `tool_choice` (or `function_call`) takes."""
    if isinstance(value, str):
        return value not in (("none", "auto", "required") if name == "tool_choice" else ("none", "auto"))
    if not isinstance(value, dict):
        return True
    if name == "function_call":
        return set(value) != {"name"} or not isinstance(value["name"], str)
    function = value.get("function")
    return (
        set(value) != {"type", "function"}
        or value["type"] != "function"
        or not isinstance(function, dict)
        or not isinstance(function.get("name"), str)
    )


def unsupported_option(body: ChatRequest) -> tuple[str, str] | None:
    """(option, message) for the first option of the request this server would not honour, else None."""
    for name, value in (body.model_extra or {}).items():
        if name in IGNORED:
            continue
        if name in CHOICES and value is not None and _invalid_choice(name, value):
            return name, f"{name}: invalid value {json.dumps(value)[:80]}; allowed: {', '.join(CHOICES[name])}"
        if name not in NOT_IMPLEMENTED:
            return name, f"unknown option {name!r}: this server reads {', '.join(ChatRequest.model_fields)}"
        if value not in NOT_IMPLEMENTED[name]:
            why = WHY_NOT.get(name) or (
                "it answers with plain text only: no log-probabilities, structured output, forced tool calls, "
                "penalties or logit bias"
            )
            return (
                name,
                f"option {name!r} is {json.dumps(value)[:80]}, which this server does not support ({why}); leave it out",
            )
    if body.stream_options is not None and not body.stream:
        return "stream_options", "option 'stream_options' is only allowed with \"stream\": true"
    return None


def _field(loc) -> str:
    """A validation error's place as a dotted path, without "body" and the member types pydantic adds under a union
    ("messages.0.content.str" is "messages.0.content")."""
    return ".".join(str(p) for p in loc if p != "body" and not (isinstance(p, str) and _UNION_TAG.search(p)))


_UNION_TAG = re.compile(r"^(str|int|float|bool|none|constrained-str)$|[\[\]]")


class KeyCheck:
    """ASGI middleware answering 401 to a request without the API key, on every path but /health (the schema at
    /openapi.json included: it lists the server's surface to whoever asks). A plain ASGI layer, not Starlette's
    BaseHTTPMiddleware: that one hands the route a receive of its own, through which `request.is_disconnected()`
    never sees the client leave, so a stream behind the key check could not tell that its client had gone."""

    def __init__(self, app, api_key: str):
        self.app, self.expected = app, f"bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] != "/health":
            given = next((v for k, v in scope["headers"] if k.lower() == b"authorization"), b"")
            given = given[:7].lower() + given[7:]  # the scheme is case-insensitive (RFC 9110, 11.1), the key is not
            if not secrets.compare_digest(given, self.expected):
                refusal = error(
                    401, "missing or wrong API key (send Authorization: Bearer KEY)", code="invalid_api_key"
                )
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    engine: Engine,
    api_key: str | None = None,
    defaults: GenerationSettings | None = None,
    allowed_origins: list[str] | None = None,
    spelling: Spelling = PYTHON,
):
    """The FastAPI application around a loaded run. `defaults` give max_new_tokens and sampling when a request
    does not set them. `allowed_origins`: the web pages whose scripts a browser lets call the server (CORS, "*" for
    any); none by default, so a page the user visits cannot drive the model on their machine. `spelling`: how its
    errors name the server's own settings (tunelab serve's flags, or the Python arguments)."""
    defaults = defaults or GenerationSettings()
    # a server started with --max-new-tokens above the cap answers that many by default: a request may ask as many
    token_cap = TokenCap(
        max(MAX_TOKENS_CAP, defaults.max_new_tokens or 0),
        "--max-new-tokens" if spelling.flags else "settings.max_new_tokens",
    )
    app = FastAPI(title="tunelab serve", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return error(400, "the request body is not valid JSON", code="invalid_json")
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if first.get("loc") == ("body",) and first.get("type") == "missing":  # "body: Field required" named nothing
            return error(
                400,
                'the request has no body; send the chat request as a JSON object: {"model": ..., "messages": [...]}',
                code="invalid_json",
            )
        if first.get("loc") == ("body",) and not (kind == "application/json" or kind.endswith("+json")):
            # the body was never read as JSON: "body: Input should be a valid dictionary" would blame the JSON
            sent = f"Content-Type: {kind}" if kind else "no Content-Type"
            return error(
                400,
                f"the request body is read as JSON only when sent with Content-Type: application/json; this request "
                f"came with {sent} (curl -d needs -H 'Content-Type: application/json')",
                code="invalid_content_type",
            )
        if first.get("loc") == ("body",):  # JSON, but no object: "Input should be a valid dictionary" said neither
            sent = {list: "an array", str: "a string", bool: "a boolean"}.get(type(first.get("input")), "a number")
            return error(
                400,
                f"the request body is {sent}, not a JSON object; send the chat request as a JSON object: "
                '{"model": ..., "messages": [...]}',
            )
        # the deepest place any member names: a list's item ("stop.0") rather than the list a string member refused
        where = max((_field(e.get("loc", ())) for e in errors), key=lambda f: f.count("."), default="")
        # a value a union refused gets one error per member type: say each of them, at the field they name
        said = dict.fromkeys(e.get("msg", "invalid") for e in errors if _field(e.get("loc", ())) == where)
        return error(400, f"{where or 'body'}: {'; or '.join(said) or 'invalid request'}", param=where or None)

    @app.exception_handler(HTTPException)
    async def httperror(request: Request, exc: HTTPException):
        message = str(exc.detail)
        if exc.status_code in (404, 405):  # a route or method the server lacks: "Not Found" named neither
            message = f"this server has no {request.method} {request.url.path}; it serves {ROUTES}"
        return error(exc.status_code, message)  # OpenAI's type for a 404 too (its SDK reads the status)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        return error(500, f"generation failed: {type(exc).__name__}: {exc}", kind="server_error")

    if api_key:
        app.add_middleware(KeyCheck, api_key=api_key)
    if allowed_origins:  # added last, so outermost: a browser's preflight carries no API key, and needs none
        app.add_middleware(
            CORSMiddleware, allow_origins=allowed_origins, allow_methods=["GET", "HEAD", "POST"], allow_headers=["*"]
        )

    @app.get("/health")
    @app.head("/health", include_in_schema=False)  # what load balancers and uptime checks send; one schema entry
    async def health():
        return {"status": "ok", "model": engine.model_id}

    def _model_card(name: str):
        return {"id": name, "object": "model", "created": engine.created, "owned_by": "tunelab"}

    def _no_model(name: str, param: str | None = None):
        """OpenAI's answer to a model it does not have: 404, type invalid_request_error, code model_not_found."""
        served = " or ".join(repr(n) for n in engine.names)
        message = f"the model {name!r} does not exist; this server has {served} (GET /v1/models lists them)"
        return error(404, message, param=param, code="model_not_found")

    @app.get("/v1/models")
    async def models():  # every name a request may give, the one answers carry first
        return {"object": "list", "data": [_model_card(name) for name in engine.names]}

    @app.get("/v1/models/{model_id:path}")  # a model name may hold slashes ("org/name")
    async def model(model_id: str):
        return _model_card(model_id) if model_id in engine.names else _no_model(model_id)

    add_completions_route(app, engine, defaults, _no_model, token_cap)
    add_responses_route(app, engine, defaults, _no_model, token_cap)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        first = refused_first(
            body, engine, _no_model, unsupported_option, ("max_tokens", "max_completion_tokens"), token_cap
        )
        if first is not None:
            return first
        template = engine.run.template
        tools = body.tools or None
        if tools is not None and (problem := tool_definition_problem(tools)):
            return error(400, problem[1], param=problem[0])
        tool_choice = (body.model_extra or {}).get("tool_choice")
        if tool_choice == "none":  # no call may be answered: the model is not offered the tools (see README)
            tools = None
        if tools is not None and not template.uses("tools"):
            return error(
                400,
                f"option 'tools' gives tool definitions, which the run's prompt template ('{template.name}') does not "
                "write, so the model would never see them; leave it out.",
                param="tools",
            )
        try:
            variables = template_variables(template, body.chat_template_kwargs, body.reasoning_effort)
            messages = [read_message(m, i, template) for i, m in enumerate(body.messages)]
            # checked here, where the index is the request's (the engine adds the run's system prompt)
            check_prompt_text(messages, engine.run.tokenizer, tools)
            if problem := tool_result_problem(messages):
                raise Refused(*problem)
        except Refused as exc:
            return error(400, str(exc), param=exc.param)
        except (ControlTokenText, NotText) as exc:
            return error(400, f"{exc.param}: {exc}", param=exc.param)
        last = len(messages) - 1
        if messages[last]["role"] == "assistant":
            return error(
                400,
                f"messages.{last} is the assistant's, and the conversation ends there: this server writes the next "
                "assistant turn, after the user's message or a tool's result, as the model was trained; it does not "
                "continue a written answer (vLLM's continue_final_message). End with the user's message, or leave "
                "the last message out.",
                param=f"messages.{last}.role",
            )
        if messages[last]["role"] not in ("user", "tool"):
            return error(
                400,
                f"messages.{last} is the {messages[last]['role']}'s; the last message must be the user's or a tool's "
                "result (this server writes the assistant's turn after it).",
                param=f"messages.{last}.role",
            )
        try:
            settings = request_settings(defaults, body.max_completion_tokens or body.max_tokens, body, body.n or 1)
        except Refused as exc:
            return error(400, str(exc), param=exc.param)
        except TunelabError as exc:
            return error(400, str(exc))
        asked = next((f for f in ("max_completion_tokens", "max_tokens") if getattr(body, f) is not None), None)
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        reader = tool_call_reader(template, tools, tool_choice, body.parallel_tool_calls, engine.run.tokenizer)
        keep = tuple(reader.markers.values()) if reader else ()
        request_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        seed = None if body.seed == -1 else body.seed
        try:  # the prompt is tokenized on a worker thread, and the answer read from one: the event loop stays free
            replies = [
                await anyio.to_thread.run_sync(
                    partial(
                        engine.stream,
                        messages,
                        settings,
                        stop,
                        seed=choice_seed(seed, k),
                        tools=tools,
                        keep=keep,
                        asked=asked,
                        call_span=reader.span if reader else None,
                        default_system=body.default_system_prompt is not False,
                        variables=variables,
                    )
                )
                for k in range(body.n or 1)
            ]
            if body.stream:
                usage = bool(body.stream_options and body.stream_options.include_usage)
                return StreamingResponse(
                    _events(replies, request, request_id, created, body.model, usage, reader),
                    media_type="text/event-stream",
                )
            answers = []
            for reply in replies:  # one after another: each waits for the queue, as a request of its own would
                done = await read_answer(reply, request)
                if done is None:
                    return Response(status_code=499)  # the client closed the connection: nobody reads this
                answers.append(done)
        except ContextTooLong as exc:
            return error(400, str(exc), param="messages", code="context_length_exceeded")
        except Untrained as exc:
            return error(400, str(exc), param=exc.param)
        except (ControlTokenText, NotText) as exc:
            return error(400, str(exc), param="messages")
        except TunelabError as exc:
            return error(400, str(exc))
        return {
            "id": request_id,
            "object": "chat.completion",
            "created": created,
            "model": body.model,  # the name the request gave, as OpenAI answers (a link's target, an alias)
            "choices": [
                _choice(k, done, reader, reply.thought) for k, (done, reply) in enumerate(zip(answers, replies))
            ],
            "usage": usage_of(answers),
        }

    return app


def _reasoning(text: str) -> dict:
    """A thought as OpenAI-compatible servers give it: vLLM's `reasoning` and its older `reasoning_content`, which
    the DeepSeek API, SGLang and llama.cpp's server give (data/reasoning.py)."""
    return {"reasoning_content": text, "reasoning": text}


def _choice(index: int, done: Completion, reader: ToolCallReader | None, thought: ThoughtReader | None) -> dict:
    """One answer in OpenAI's shape: its thought apart, its tool calls read (content null where they are all of
    it)."""
    said, rest = thought.read(done.text, final=True) if thought else (None, done.text)
    content, calls = reader.split(rest) if reader else (rest, [])
    message = {"role": "assistant", "content": content} | (_reasoning(said) if said else {})
    if calls:
        message |= {"content": content or None, "tool_calls": calls}
    finish = "tool_calls" if calls else done.finish_reason
    return {"index": index, "message": message, "finish_reason": finish, "logprobs": None}


async def _events(
    replies: list[Reply],
    request: Request,
    request_id: str,
    created: int,
    model_id: str,
    usage: bool,
    reader: ToolCallReader | None = None,
):
    """Server-sent events as OpenAI streams them: for each answer (n of them, one after another, each chunk naming
    its choice's index) a role chunk, content chunks, a finish chunk; with `stream_options.include_usage` a chunk of
    no choices carrying the usage of them all (every other chunk's usage is null), then `[DONE]`. The pieces are read on a worker thread; a client that leaves (the response cancelled, or seen
    disconnected between pieces) cancels the generation, which ends at its next token and frees the queue. With a
    `reader`, text that may still become a tool call is held back; at the end the calls, each whole in one chunk
    (`delta.tool_calls` with its index), and the finish reason "tool_calls"; text that was no call is sent then."""

    def chunk(choices: list[dict], counts: dict | None = None) -> str:
        body = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model_id}
        body["choices"] = choices
        if usage:
            body["usage"] = counts
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    answers: list[Completion] = []
    try:
        for index, reply in enumerate(replies):

            def choice(delta: dict, finish: str | None = None, index: int = index) -> list[dict]:
                return [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}]

            pieces, text, sent, thought, said = iter(reply), "", 0, reply.thought, ""
            yield chunk(choice({"role": "assistant", "content": ""}))
            while True:
                piece = await anyio.to_thread.run_sync(next, pieces, None)
                if piece is None:
                    break
                final = isinstance(piece, Completion)
                text += "" if final else piece
                thinking, answer = thought.read(text, final) if thought else (None, text)
                if thinking and len(thinking) > len(said) and thinking.startswith(said):
                    yield chunk(choice(_reasoning(thinking[len(said) :])))
                    said = thinking
                if final:
                    answers.append(piece)
                    content, calls = reader.split(answer) if reader else (answer, [])
                    rest = content[sent:] if content.startswith(answer[:sent]) else ""
                    if rest:
                        yield chunk(choice({"content": rest}))
                    for k, call in enumerate(calls):
                        yield chunk(choice({"tool_calls": [{"index": k, **call}]}))
                    yield chunk(choice({}, "tool_calls" if calls else piece.finish_reason))
                elif answer is not None:
                    shown = reader.safe(answer) if reader else len(answer)
                    if shown > sent:
                        yield chunk(choice({"content": answer[sent:shown]}))
                        sent = shown
                if await request.is_disconnected():
                    return
        if usage:
            yield chunk([], usage_of(answers))
    except Exception as exc:  # the status line is already sent: report the failure as an error event
        body = error_body(f"generation failed: {type(exc).__name__}: {exc}", "server_error")
        yield f"data: {json.dumps(body)}\n\n"
    finally:
        for reply in replies:
            reply.cancel()
    yield "data: [DONE]\n\n"
