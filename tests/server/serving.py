"""What the tests of a running server share: its API key, a question, sampling settings that give the tiny model
text to compare, and raw HTTP for what the openai client never sends."""

import urllib.error
import urllib.request

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
