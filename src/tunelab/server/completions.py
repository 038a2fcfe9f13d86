"""OpenAI's legacy `POST /v1/completions`: a raw prompt in, its continuation out (lm-evaluation-harness's
`local-completions`, and the many tools written before chat completions).

The prompt is tokenized as it is, with no chat template and no system prompt: a run trained on chats answers best
through /v1/chat/completions, and this route is for those who write the prompt themselves. Generation goes through
the same engine and queue as a chat's, with the same sampling options, stop strings, seeds and `n`. A list of
prompts is answered prompt by prompt, each `n` times, choice `i * n + k` being prompt i's answer k (OpenAI's order).
`echo` puts the prompt in front of the text. Log-probabilities are not computed: `logprobs` (any number, 0 included,
which still asks for the sampled tokens' own; `best_of` above 1, `suffix`, the penalties, `logit_bias`) are refused
unless they ask for nothing, so an lm-eval loglikelihood task
fails with a message rather than scores made of nothing; its generation tasks (`generate_until`) work.
"""

from __future__ import annotations

import json
import time
import uuid
from functools import partial
from typing import Annotated

import anyio
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from tunelab.errors import TunelabError
from tunelab.infer.generate import ContextTooLong, GenerationSettings
from tunelab.server.engine import Completion, Engine, Reply
from tunelab.server.messages import Refused
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

MAX_PROMPTS = 128  # prompts in one request (each answered n times)

StopText = Annotated[str, Field(min_length=1)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool | None = Field(default=None, strict=True)


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # checked by `unsupported_option`
    model: str
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]
    max_tokens: int | None = Field(default=None, ge=1, strict=True)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, strict=True, allow_inf_nan=False)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0, strict=True, allow_inf_nan=False)
    stream: bool | None = Field(default=None, strict=True)
    stream_options: StreamOptions | None = None
    stop: StopText | Annotated[list[StopText], Field(max_length=4)] | None = None
    n: int | None = Field(default=None, ge=1, le=128, strict=True)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63, strict=True)
    echo: bool | None = Field(default=None, strict=True)


IGNORED = ("user", "metadata", "store", "service_tier", "safety_identifier")
# the values that ask for nothing; another would be answered as if the option were absent, so it is refused
NOT_IMPLEMENTED: dict[str, tuple] = {
    "logprobs": (None,),  # 0 still asks for the sampled tokens' log-probabilities (OpenAI: "up to logprobs+1")
    "best_of": (None, 1),
    "suffix": (None, ""),
    "frequency_penalty": (None, 0),
    "presence_penalty": (None, 0),
    "logit_bias": (None, {}),
}


def unsupported_option(body: CompletionRequest) -> tuple[str, str] | None:
    """(option, message) for the first option of the request this server would not honour, else None."""
    for name, value in (body.model_extra or {}).items():
        if name in IGNORED:
            continue
        if name not in NOT_IMPLEMENTED:
            return name, f"unknown option {name!r}: /v1/completions reads {', '.join(CompletionRequest.model_fields)}"
        if value not in NOT_IMPLEMENTED[name]:
            return name, (
                f"option {name!r} is {json.dumps(value)[:80]}, which this server does not support (no "
                "log-probabilities, best-of sampling, suffixes, penalties or logit bias); leave it out"
            )
    if body.stream_options is not None and not body.stream:
        return "stream_options", "option 'stream_options' is only allowed with \"stream\": true"
    return None


def _choice(index: int, text: str, finish: str | None) -> dict:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}


async def _events(replies: list[Reply], prompts: list[str], echo: bool, request: Request, head: dict, usage: bool):
    """Server-sent events as OpenAI streams a completion: per choice its text pieces (the prompt first with `echo`),
    then a chunk with its finish reason; with `include_usage` a chunk of no choices with the usage; then [DONE]."""

    def chunk(choices: list[dict], counts: dict | None = None) -> str:
        body = head | {"choices": choices} | ({"usage": counts} if usage else {})
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    answers: list[Completion] = []
    n = len(replies) // len(prompts)
    try:
        for index, reply in enumerate(replies):
            if echo:
                yield chunk([_choice(index, prompts[index // n], None)])
            pieces = iter(reply)
            while (piece := await anyio.to_thread.run_sync(next, pieces, None)) is not None:
                if isinstance(piece, Completion):
                    answers.append(piece)
                    yield chunk([_choice(index, "", piece.finish_reason)])
                else:
                    yield chunk([_choice(index, piece, None)])
                if await request.is_disconnected():
                    return
        if usage:
            yield chunk([], _usage(answers, n))
    except Exception as exc:  # the status line is already sent: report the failure as an error event
        yield f"data: {json.dumps(error_body(f'generation failed: {type(exc).__name__}: {exc}', 'server_error'))}\n\n"
    finally:
        for reply in replies:
            reply.cancel()
    yield "data: [DONE]\n\n"


def _usage(answers: list[Completion], n: int) -> dict:
    """Every prompt counted once (its n answers share it), the answers' tokens summed."""
    counts = usage_of(answers)
    prompt = sum(done.prompt_tokens for done in answers[::n])
    return counts | {"prompt_tokens": prompt, "total_tokens": prompt + counts["completion_tokens"]}


def add_completions_route(app, engine: Engine, defaults: GenerationSettings, no_model, token_cap: TokenCap) -> None:
    """Serve POST /v1/completions on `app` with `engine`; `defaults`: the server's options, as for a chat;
    `no_model(name, param)`: the 404 of a model not served; `token_cap`: the most max_tokens of a model that does
    not state its context length, as for a chat."""

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        first = refused_first(body, engine, no_model, unsupported_option, ("max_tokens",), token_cap)
        if first is not None:
            return first
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        try:
            settings = request_settings(defaults, body.max_tokens, body, body.n or 1)
        except Refused as exc:
            return error(400, str(exc), param=exc.param)
        except TunelabError as exc:
            return error(400, str(exc))
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        seed, n = None if body.seed == -1 else body.seed, body.n or 1
        head = {
            "id": f"cmpl-{uuid.uuid4().hex[:24]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.model,
        }
        try:
            replies = []
            for i, text in enumerate(prompts):
                complete = partial(engine.complete, text, settings, stop, asked=body.max_tokens is not None)
                try:
                    for k in range(n):
                        replies.append(await anyio.to_thread.run_sync(partial(complete, seed=choice_seed(seed, k))))
                except ContextTooLong as exc:
                    param = "prompt" if len(prompts) == 1 else f"prompt.{i}"
                    return error(400, str(exc), param=param, code="context_length_exceeded")
            if body.stream:
                usage = bool(body.stream_options and body.stream_options.include_usage)
                events = _events(replies, prompts, bool(body.echo), request, head, usage)
                return StreamingResponse(events, media_type="text/event-stream")
            answers = []
            for reply in replies:
                done = await read_answer(reply, request)
                if done is None:
                    return Response(status_code=499)  # the client closed the connection: nobody reads this
                answers.append(done)
        except TunelabError as exc:
            return error(400, str(exc), param="prompt")
        choices = [
            _choice(k, (prompts[k // n] if body.echo else "") + done.text, done.finish_reason)
            for k, done in enumerate(answers)
        ]
        return head | {"choices": choices, "usage": _usage(answers, n)}
