"""What the tests of a running server share: its API key, a question, sampling settings that give the tiny model
text to compare, raw HTTP for what the openai client never sends, a model that writes a given answer, and a client
that leaves a stream."""

import json
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import torch

KEY = "test-key-123"
QUESTION = [{"role": "user", "content": "Code of box 3?"}]
# The tiny random model answers greedily with newlines only; seeded sampling gives it text to compare.
SAMPLED = {"temperature": 1.0, "seed": 7}


def http(method: str, url: str, body: bytes | None = None, key: str | None = KEY) -> tuple[int, dict, bytes]:
    """(status, headers, body) of a raw request, for what the openai client never sends (bad JSON, no key)."""
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


class ScriptedModel:
    """A model whose generate writes `ids` through the streamer, as transformers' does, and keeps the prompts it
    was given: the server's own rendering and decoding are what is tested."""

    def __init__(self, ids: list[int]):
        self.ids, self.prompts = ids, []
        self.config, self.generation_config = SimpleNamespace(max_position_embeddings=4096), None

    def generate(self, input_ids, streamer, max_new_tokens=None, **_):
        """Writes `ids`, at most `max_new_tokens` of them, as transformers' generate stops there."""
        self.prompts.append(input_ids[0].tolist())
        ids = self.ids[:max_new_tokens]
        streamer.put(input_ids)
        for i in ids:
            streamer.put(torch.tensor([i]))
        streamer.end()
        return torch.cat([input_ids, torch.tensor([ids], dtype=input_ids.dtype)], dim=1)


def leave_a_stream(run, path: str, body: dict):
    """Send `body` (a streamed request) to `path` of the tiny run's app (API key 'key', model 'tiny') straight through
    ASGI as a client that leaves once its request is sent, and wait for the generation to end on its thread.
    Returns (the app, the ASGI messages the app sent, the new tokens of each generation)."""
    import anyio

    from tunelab.server.serve import build_app

    generated, generate = [], run.model.generate

    def counted(**kwargs):
        out = generate(**kwargs)
        generated.append(out.shape[1] - kwargs["input_ids"].shape[1])
        return out

    run.model.generate = counted
    app = build_app(run, api_key="key", model_name="tiny")
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"authorization", b"Bearer key")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
    }  # fmt: skip
    sent, requested = [], []

    async def receive():
        if not requested:  # the body, then the client is gone
            requested.append(True)
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message):  # as uvicorn's: what is written after the client left is dropped
        sent.append(message)

    async def serve_one():
        await app(scope, receive, send)

    anyio.run(serve_one)
    deadline = time.monotonic() + 60
    while not generated and time.monotonic() < deadline:  # the generation ends on its own thread
        time.sleep(0.05)
    return app, sent, generated
