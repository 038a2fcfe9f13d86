"""What the tests of a running server share: its API key, a question, sampling settings that give the tiny model
text to compare, raw HTTP for what the openai client never sends, and a model that writes a given answer."""

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
