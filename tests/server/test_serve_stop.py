"""Stop strings: where they end an answer, streamed or not, and what the usage counts up to them."""

import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed: pip install 'tunelab[serve]'")
pytest.importorskip("uvicorn", reason="the 'serve' extra is not installed: pip install 'tunelab[serve]'")
openai = pytest.importorskip("openai", reason="the official openai client is not installed: pip install openai")


from .serving import QUESTION, SAMPLED  # noqa: E402


def test_stop_strings_end_the_answer(client):
    """A stop string ends the generation where it appears, streamed or not (a plain answer used to run to
    max_tokens and be cut afterwards), and no part of it is ever sent: a streamed answer held its first characters
    back only once the whole string had been seen, so 'Tallowmere' as a stop string streamed 'Tallow'."""
    ask = dict(model="tiny", messages=QUESTION, max_tokens=12, **SAMPLED)
    full = client.chat.completions.create(**ask).choices[0].message.content
    assert len(full) > 8
    for stop in (full[4:6], full[2:8], [full[3:7], "zzzz"], full[:3]):
        first = full.index(stop if isinstance(stop, str) else stop[0])
        cut = client.chat.completions.create(**ask | {"max_tokens": 300}, stop=stop)
        assert cut.choices[0].message.content == full[:first].strip()
        assert cut.choices[0].finish_reason == "stop"
        assert cut.usage.completion_tokens <= 13  # ended within a token of the stop string, not at max_tokens
        chunks = client.chat.completions.create(**ask, stop=stop, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == cut.choices[0].message.content


def test_usage_counts_the_tokens_up_to_the_stop_string(client):
    """Generation ends a token or more after a stop string appears (the text reaches the check word by word), and
    usage counted those tokens as well: it counts up to and including the token that completed the stop string, as
    vLLM does, streamed or not."""
    ask = dict(model="tiny", messages=QUESTION, **SAMPLED)
    full = client.chat.completions.create(**ask, max_tokens=12).choices[0].message.content
    for stop in (full[4:6], full[6:9], full[-3:]):
        used = client.chat.completions.create(**ask, max_tokens=300, stop=stop).usage.completion_tokens
        upto = client.chat.completions.create(**ask, max_tokens=used).choices[0].message.content
        before = (
            client.chat.completions.create(**ask, max_tokens=used - 1).choices[0].message.content if used > 1 else ""
        )
        assert stop in upto and stop not in before, (stop, used, upto, before)
        streamed = client.chat.completions.create(
            **ask, max_tokens=300, stop=stop, stream=True, stream_options={"include_usage": True}
        )
        assert list(streamed)[-1].usage.completion_tokens == used


def test_a_stop_string_the_answer_starts_with_ends_it_empty(client):
    """Stop strings were looked for only after the answer's leading whitespace was stripped, so `stop: "\\n"` ran
    on past an answer's first newline (here to max_tokens, the greedy tiny model writing newlines only): they are
    looked for in the text as generated, as OpenAI and vLLM look, and the answer before it is empty."""
    ask = dict(model="tiny", messages=QUESTION, max_tokens=12, temperature=0)
    assert client.chat.completions.create(**ask).usage.completion_tokens == 12  # newlines, stripped to nothing
    done = client.chat.completions.create(**ask, stop="\n")
    assert (done.choices[0].message.content, done.choices[0].finish_reason) == ("", "stop")
    assert done.usage.completion_tokens == 1
    chunks = list(client.chat.completions.create(**ask, stop="\n", stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ""
    assert chunks[-1].choices[0].finish_reason == "stop"
