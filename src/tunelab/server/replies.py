"""What every route of the server answers with: OpenAI-shaped errors, the usage of a request's answers, the seed of
each of its n answers, and a plain (not streamed) answer read off the engine while the client is watched."""

from __future__ import annotations

from dataclasses import dataclass

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse

from tunelab.infer.generate import GREEDY_BELOW, UNKNOWN_CONTEXT_TOKENS, GenerationSettings, context_length
from tunelab.server.engine import Completion, Engine, Reply
from tunelab.server.messages import Refused


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None, code=None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None, code=None):
    return JSONResponse(status_code=status, content=error_body(message, kind, param, code))


def choice_seed(seed: int | None, k: int) -> int | None:
    """The seed of a request's answer `k`: its own seed for the first (the answer of n=1), the next ones for the
    others, so n sampled answers differ and the same request gives the same n again. Kept in the 64-bit signed range
    the request's seed is read in."""
    return None if seed is None else (seed + k + 2**63) % 2**64 - 2**63


def usage_of(answers: list[Completion]) -> dict:
    """The usage of a request's answers: its prompt counted once (the n answers share it), their tokens summed."""
    prompt, completion = answers[0].prompt_tokens, sum(done.completion_tokens for done in answers)
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    thinking = [done.reasoning_tokens for done in answers if done.reasoning_tokens is not None]
    if thinking:  # OpenAI's count of the completion's thought tokens (LangChain reads it, and so on)
        usage["completion_tokens_details"] = {"reasoning_tokens": sum(thinking)}
    return usage


async def read_answer(reply: Reply, request: Request) -> Completion | None:
    """The whole answer of a plain request, read on a worker thread; None when the client left, which cancels the
    generation (it ends at its next token) as a stream's is."""
    pieces, items, left = [], iter(reply), False

    async def watch() -> None:  # a disconnect is the only message left once the body is read
        nonlocal left
        while (await request.receive())["type"] != "http.disconnect":
            pass
        left = True
        reply.cancel()

    done = failed = None
    async with anyio.create_task_group() as watching:
        watching.start_soon(watch)
        try:
            while (item := await anyio.to_thread.run_sync(next, items, None)) is not None:
                if isinstance(item, Completion):
                    done = item
                else:
                    pieces.append(item)
        except Exception as exc:  # raised below as it is, not in the task group's ExceptionGroup
            failed = exc
        finally:
            watching.cancel_scope.cancel()
            reply.cancel()  # a no-op once the generation has ended
    if failed is not None:
        raise failed
    if left or done is None:
        return None
    done.text = "".join(pieces)
    return done


@dataclass(frozen=True)
class TokenCap:
    """The most tokens a request may ask of a model that does not state its context length: UNKNOWN_CONTEXT_TOKENS,
    or the server's own max_new_tokens if larger; `setting` names that as the server was started with it (tunelab
    serve's --max-new-tokens, or settings.max_new_tokens from Python)."""

    limit: int
    setting: str


def beyond_token_cap(body, names: tuple[str, ...], token_cap: TokenCap):
    """The 400 of a request whose token limit (its fields `names`) passes `token_cap`; None where none does. The
    caller asks only for a model that does not state its context length."""
    cap, setting = token_cap.limit, token_cap.setting
    said = f"its {setting}" if cap > UNKNOWN_CONTEXT_TOKENS else f"or its {setting} if larger"
    for name in names:
        if (getattr(body, name) or 0) > cap:
            return error(
                400,
                f"{name}: Input should be less than or equal to {cap} (this server's limit for a model that "
                f"does not state its context length, {said})",
                param=name,
            )
    return None


def refused_first(body, engine: Engine, no_model, unsupported, token_fields: tuple[str, ...], token_cap: TokenCap):
    """What every route answers before it reads a request, else None: the 404 of a model not served (`no_model`), the
    400 of the first option the route does not honour (`unsupported(body)`: (option, message) or None), and, for a
    model that does not state its context length, the 400 of a token limit (fields `token_fields`) past `token_cap`."""
    if body.model not in engine.names:
        return no_model(body.model, "model")
    refused = unsupported(body)
    if refused is not None:
        return error(400, refused[1], param=refused[0])
    if context_length(engine.run.model) is None:
        return beyond_token_cap(body, token_fields, token_cap)
    return None


# What n > 1 answers sample at where the request gives no temperature (or top_p) and the server's would be greedy:
# OpenAI's defaults. The server answers greedily by default, and n greedy answers are one answer n times, for n times
# the time, which no client asking for several answers wants.
CHOICES_TEMPERATURE, CHOICES_TOP_P = 1.0, 1.0


def request_settings(defaults: GenerationSettings, max_tokens: int | None, body, n: int = 1) -> GenerationSettings:
    """A request's sampling: its token limit (`max_tokens`, read from the route's own field), temperature and top_p
    where it gives them, else the server's (`defaults`); raises TunelabError on a value out of range. For `n` > 1
    answers, a temperature or top_p the request leaves out is OpenAI's default (CHOICES_TEMPERATURE, CHOICES_TOP_P)
    where the server's would make them greedy, and a request whose own temperature or top_p asks for greedy answers
    is refused (Refused naming `n`): they would be n copies of one."""
    temperature = defaults.temperature if body.temperature is None else body.temperature
    top_p = defaults.top_p if body.top_p is None else body.top_p
    if n > 1:
        if body.temperature is None and temperature < GREEDY_BELOW:
            temperature = CHOICES_TEMPERATURE
        if body.top_p is None and top_p == 0:
            top_p = CHOICES_TOP_P
        if temperature < GREEDY_BELOW or top_p == 0:
            field = "temperature" if temperature < GREEDY_BELOW else "top_p"
            raise Refused(
                "n",
                f"n: {n} answers at {field} {getattr(body, field)} (greedy decoding) would be the same answer {n} "
                f"times, for {n} times the time; ask for n 1, or a {field} above 0 (left out, n > 1 answers are "
                f"sampled at temperature {CHOICES_TEMPERATURE:g}, OpenAI's default).",
            )
    return GenerationSettings(
        max_new_tokens=max_tokens or defaults.max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        repetition_penalty=defaults.repetition_penalty,
    )
