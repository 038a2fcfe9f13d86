"""`n` answers to one request, spoken to with the official `openai` client: each its own choice index, the same
answers as n requests seeded one after another, streamed or not, and the usage of them all."""

import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed: pip install 'tunelab[serve]'")
openai = pytest.importorskip("openai", reason="the official openai client is not installed: pip install openai")

from fastapi.testclient import TestClient  # noqa: E402

from tunelab.infer.run import open_run  # noqa: E402
from tunelab.server.serve import build_app  # noqa: E402

QUESTION = [{"role": "user", "content": "Code of box 3?"}]
ASK = {"model": "tiny", "messages": QUESTION, "max_tokens": 8, "temperature": 1.0}


@pytest.fixture(scope="module")
def client(tiny_run_dir):
    with TestClient(build_app(open_run(tiny_run_dir, device="cpu"), model_name="tiny")) as http:
        yield openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)


def test_n_answers_are_n_choices_with_their_usage_summed(client):
    """ "n": 3 was a 400 (one choice per request), so a client sampling several answers to pick from (best-of,
    self-consistency, a GRPO-style rollout) had to send the request n times. It now gets n choices, indexed 0..n-1:
    answer k is the one a request seeded seed + k gets (answer 0 the n=1 answer), so they differ when sampled and
    are the same again for the same seed; the prompt is counted once and the answers' tokens summed."""
    several = client.chat.completions.create(**ASK, n=3, seed=7)
    assert [c.index for c in several.choices] == [0, 1, 2]
    alone = [client.chat.completions.create(**ASK, seed=7 + k) for k in range(3)]
    assert [c.message.content for c in several.choices] == [a.choices[0].message.content for a in alone]
    assert len({c.message.content for c in several.choices}) > 1  # sampled with different seeds
    assert several.usage.prompt_tokens == alone[0].usage.prompt_tokens
    assert several.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone)
    assert several.usage.total_tokens == several.usage.prompt_tokens + several.usage.completion_tokens

    chunks = list(
        client.chat.completions.create(**ASK, n=3, seed=7, stream=True, stream_options={"include_usage": True})
    )
    for k, choice in enumerate(several.choices):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == k]
        assert mine[0].delta.role == "assistant" and mine[-1].finish_reason == choice.finish_reason
        assert "".join(c.delta.content or "" for c in mine) == choice.message.content
    assert chunks[-1].choices == [] and chunks[-1].usage == several.usage
    with pytest.raises(openai.BadRequestError, match="less than or equal to 128"):
        client.chat.completions.create(**ASK, n=129)


def test_a_seeded_request_leaves_the_unseeded_answers_after_it_alone(client):
    """A request's seed reseeded torch's global generator (torch.manual_seed), from which the unseeded requests
    draw: every answer after a seeded one followed from that seed, predictable by whoever sent it. A seeded answer
    now draws from a generator of its own; it is the same again for the same seed, and the unseeded answers after
    it are those they would have been without it."""
    import torch

    def unseeded() -> list[str]:
        return [client.chat.completions.create(**ASK).choices[0].message.content for _ in range(3)]

    torch.manual_seed(0)
    alone = unseeded()
    torch.manual_seed(0)
    seeded = client.chat.completions.create(**ASK, seed=7).choices[0].message.content
    assert unseeded() == alone and len(set(alone)) > 1  # sampled, and from the same global stream as before
    assert client.chat.completions.create(**ASK, seed=7).choices[0].message.content == seeded
    assert client.chat.completions.create(**ASK, seed=8).choices[0].message.content != seeded
