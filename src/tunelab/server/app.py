"""The HTTP routes of `tunelab serve`, in OpenAI's chat-completions dialect, so existing clients (the `openai`
package, LangChain, curl scripts) talk to a tuned run unchanged.

    GET  /health                 {"status": "ok", "model": ID}          (no API key needed)
    GET  /v1/models              the one model, as OpenAI lists models
    POST /v1/chat/completions    an answer, or with "stream": true server-sent events ending in `data: [DONE]`

Errors are JSON in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: 400 for a malformed body or
an unsupported option, 401 for a missing or wrong API key, 404 for an unknown model or route. A failure inside
generation is a 500 in the same shape, and the server keeps serving.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from tunelab.data.render import ControlTokenText
from tunelab.errors import TunelabError
from tunelab.infer.generate import ContextTooLong, GenerationSettings
from tunelab.server.engine import Completion, Engine

MAX_TOKENS_CAP = 4096


def _error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None, code=None):
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(status_code=status, content=body)


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send options this server does not use (user, ...)
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CAP)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CAP)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stream: bool = False
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=1)
    seed: int | None = Field(default=None, ge=0, lt=2**63)  # torch's generator takes a 64-bit seed


def _text(content, role: str) -> str:
    """A message's content: a string, or OpenAI's list of parts of which the text ones are joined. Only an
    assistant's turn may come without one (OpenAI's tool calls, which this server does not make)."""
    if content is None:
        if role != "assistant":
            raise ValueError(f"a {role} message needs its content")
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.get("type") != "text":
            raise ValueError(f"content part of type {part.get('type')!r}: this model reads text parts only")
        parts.append(str(part.get("text", "")))
    return "".join(parts)


def create_app(engine: Engine, api_key: str | None = None, defaults: GenerationSettings | None = None):
    """The FastAPI application around a loaded run. `defaults` give max_new_tokens and sampling when a request
    does not set them."""
    defaults = defaults or GenerationSettings()
    app = FastAPI(title="tunelab serve", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("type") == "json_invalid":
            return _error(400, "the request body is not valid JSON", code="invalid_json")
        return _error(400, f"{where or 'body'}: {first.get('msg', 'invalid request')}", param=where or None)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _error(exc.status_code, str(exc.detail), kind=kind)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        return _error(500, f"generation failed: {type(exc).__name__}: {exc}", kind="server_error")

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return _error(401, "missing or wrong API key (send Authorization: Bearer KEY)", code="invalid_api_key")
        return await call_next(request)

    @app.get("/health")
    def health():
        return {"status": "ok", "model": engine.model_id}

    def _model_card():
        return {"id": engine.model_id, "object": "model", "created": engine.created, "owned_by": "tunelab"}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [_model_card()]}

    @app.get("/v1/models/{model_id}")
    def model(model_id: str):
        if model_id != engine.model_id:
            return _error(
                404,
                f"model {model_id!r} does not exist; this server has {engine.model_id!r}",
                kind="not_found_error",
                code="model_not_found",
            )
        return _model_card()

    @app.post("/v1/chat/completions")
    def chat_completions(body: ChatRequest):  # a plain def: FastAPI runs it on a worker thread, so waiting is fine
        if body.model != engine.model_id:
            return _error(
                404,
                f"model {body.model!r} does not exist; this server has {engine.model_id!r}",
                kind="not_found_error",
                param="model",
                code="model_not_found",
            )
        try:
            messages = [
                {"role": "system" if m.role == "developer" else m.role, "content": _text(m.content, m.role)}
                for m in body.messages
            ]
        except ValueError as exc:
            return _error(400, str(exc), param="messages")
        if messages[-1]["role"] != "user":
            return _error(
                400, "the last message must be the user's (this server writes the assistant's turn)", param="messages"
            )
        try:
            settings = GenerationSettings(
                max_new_tokens=body.max_completion_tokens or body.max_tokens or defaults.max_new_tokens,
                temperature=defaults.temperature if body.temperature is None else body.temperature,
                top_p=defaults.top_p if body.top_p is None else body.top_p,
                repetition_penalty=defaults.repetition_penalty,
            )
        except TunelabError as exc:
            return _error(400, str(exc))
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        request_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        try:
            if body.stream:
                pieces = engine.stream(messages, settings, stop, body.seed)
                return StreamingResponse(
                    _events(pieces, request_id, created, engine.model_id), media_type="text/event-stream"
                )
            done = engine.complete(messages, settings, stop, body.seed)
        except ContextTooLong as exc:
            return _error(400, str(exc), param="messages", code="context_length_exceeded")
        except ControlTokenText as exc:
            return _error(400, str(exc), param="messages")
        except TunelabError as exc:
            return _error(400, str(exc))
        return {
            "id": request_id,
            "object": "chat.completion",
            "created": created,
            "model": engine.model_id,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": done.text},
                    "finish_reason": done.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": _usage(done),
        }

    return app


def _usage(done: Completion) -> dict:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


def _events(pieces, request_id: str, created: int, model_id: str):
    """Server-sent events as OpenAI streams them: a role chunk, content chunks, a finish chunk, `[DONE]`."""

    def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
        body = {
            "id": request_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_id,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    try:
        for piece in pieces:
            if isinstance(piece, Completion):
                yield chunk({}, piece.finish_reason, _usage(piece))
            else:
                yield chunk({"content": piece})
    except Exception as exc:  # the status line is already sent: report the failure as an error event
        body = {"error": {"message": f"generation failed: {type(exc).__name__}: {exc}", "type": "server_error"}}
        yield f"data: {json.dumps(body)}\n\n"
    finally:
        pieces.close()
    yield "data: [DONE]\n\n"
