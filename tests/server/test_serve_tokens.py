"""How long `tunelab serve` lets an answer be: without max_tokens and without --max-new-tokens, the room the model's
context leaves after the prompt (as vLLM answers), not a fixed 128 tokens; and as many as a request asks, up to that
room."""

import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed: pip install 'tunelab[serve]'")

openai = pytest.importorskip("openai", reason="the official openai client is not installed: pip install openai")

from fastapi.testclient import TestClient  # noqa: E402

from tunelab.infer.generate import GenerationSettings  # noqa: E402
from tunelab.infer.run import open_run  # noqa: E402
from tunelab.server.serve import build_app, start_server  # noqa: E402

QUESTION = [{"role": "user", "content": "Code of box 3?"}]


def _ask(client, **options) -> dict:
    answer = client.post("/v1/chat/completions", json={"model": "tiny", "messages": QUESTION} | options)
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.fixture(scope="module")
def run(tiny_run_dir):
    return open_run(tiny_run_dir, device="cpu")


def test_without_max_tokens_the_answer_takes_the_room_the_context_leaves(run):
    """A request without max_tokens to a server started without --max-new-tokens was cut at 128 tokens
    (finish_reason "length"), though the README said it takes the room the context leaves. It now runs to the end of
    the context: the greedy tiny model, which never ends its turn, fills it exactly. Streamed, it ends with that
    finish reason too, not an error event (once a 500 comparing the default length with None)."""
    with TestClient(build_app(run, model_name="tiny")) as client:
        prompt = _ask(client, max_tokens=1)["usage"]["prompt_tokens"]
        limit, room = run.model.config.max_position_embeddings, 140
        run.model.config.max_position_embeddings = prompt + room  # more than 128, and quick to generate
        try:
            done = _ask(client)
            body = {"model": "tiny", "messages": QUESTION, "stream": True, "stream_options": {"include_usage": True}}
            events = client.post("/v1/chat/completions", json=body).text
        finally:
            run.model.config.max_position_embeddings = limit
        assert done["choices"][0]["finish_reason"] == "length"
        assert done["usage"]["completion_tokens"] == room, done["usage"]
        assert '"finish_reason": "length"' in events and '"error"' not in events, events[-300:]
        assert f'"completion_tokens": {room}' in events and events.endswith("data: [DONE]\n\n")


def test_a_request_may_ask_as_many_tokens_as_the_context_leaves(tiny_run_dir, monkeypatch):
    """A request asking more than 4096 tokens was a 400 (max_tokens <= 4096) whatever the model's context, so a
    reasoning model (Qwen3 suggests 32768) could not be given room to think, though one asking nothing may take the
    room left. The limit is now the context, as vLLM's: a request may ask the room its prompt leaves, and more is
    OpenAI's context_length_exceeded. A model that does not state its context length keeps the larger of 4096 and
    the server's --max-new-tokens."""
    run = open_run(tiny_run_dir, device="cpu")
    run.model.config.max_position_embeddings = 8192  # room for 5000 tokens: the tiny model reads 1024
    running = start_server(run, settings=GenerationSettings(max_new_tokens=5000))
    try:
        big = openai.OpenAI(base_url=f"{running.url}/v1", api_key="unused", max_retries=0, timeout=60)
        ask = dict(model=big.models.list().data[0].id, messages=QUESTION, temperature=0, stop="\n")
        for field in ("max_tokens", "max_completion_tokens"):
            assert big.chat.completions.create(**ask, **{field: 6000}).choices[0].finish_reason == "stop"
            with pytest.raises(openai.BadRequestError, match="maximum context length is 8192 tokens") as err:
                big.chat.completions.create(**ask, **{field: 8192})
            assert err.value.body["code"] == "context_length_exceeded"
        for where in ("replies", "engine"):  # a model that states no context length: the server's limit
            monkeypatch.setattr(f"tunelab.server.{where}.context_length", lambda model: None)
        for field in ("max_tokens", "max_completion_tokens"):
            assert big.chat.completions.create(**ask, **{field: 5000}).choices[0].finish_reason == "stop"
            with pytest.raises(openai.BadRequestError, match=f"{field}: .*less than or equal to 5000") as err:
                big.chat.completions.create(**ask, **{field: 5001})
            assert err.value.body["param"] == field
    finally:
        running.stop()
