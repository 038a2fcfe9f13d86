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


def test_n_answers_without_a_temperature_are_sampled_and_greedy_ones_refused(client):
    """The server answers greedily by default, so "n": 3 without a temperature gave the same answer three times for
    three times the time, where OpenAI (default temperature 1) gives three samples. Such answers are now sampled at
    temperature 1; one answer stays greedy; n > 1 at a temperature or top_p of the request's that is greedy is a
    400 naming n and that field, on the chat and the completions route alike."""
    plain = {k: v for k, v in ASK.items() if k != "temperature"}
    several = client.chat.completions.create(**plain, n=3, seed=5)
    sampled = client.chat.completions.create(**plain, n=3, seed=5, temperature=1.0)
    assert [c.message.content for c in several.choices] == [c.message.content for c in sampled.choices]
    assert len({c.message.content for c in several.choices}) > 1
    one = client.chat.completions.create(**plain, seed=5).choices[0].message.content
    assert one == client.chat.completions.create(**plain, temperature=0.0).choices[0].message.content
    for field, value in (("temperature", 0.0), ("top_p", 0.0)):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(**plain, n=2, **{field: value})
        error = refused.value.body
        assert error["param"] == "n" and f"n: 2 answers at {field} 0.0 (greedy decoding)" in error["message"]
        with pytest.raises(openai.BadRequestError, match=f"n: 2 answers at {field} 0.0"):
            client.completions.create(model="tiny", prompt="A", max_tokens=4, n=2, **{field: value})
    done = client.completions.create(model="tiny", prompt="A", max_tokens=8, n=3, seed=5)
    assert len({c.text for c in done.choices}) > 1
