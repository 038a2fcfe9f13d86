"""How long `tunelab serve` lets an answer be: without max_tokens and without --max-new-tokens, the room the model's
context leaves after the prompt (as vLLM answers), not a fixed 128 tokens."""

import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed: pip install 'tunelab[serve]'")

from fastapi.testclient import TestClient  # noqa: E402

from tunelab.infer.run import open_run  # noqa: E402
from tunelab.server.serve import build_app  # noqa: E402

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
