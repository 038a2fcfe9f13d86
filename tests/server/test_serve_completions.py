"""The legacy `POST /v1/completions` (a raw prompt in, its continuation out, as lm-evaluation-harness and older tools
call it), spoken to with the official openai client's `client.completions.create`. The model is scripted (its ids
written through the streamer as transformers' generate writes them), so the route's own work is what is tested."""

from dataclasses import replace
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed: pip install 'tunelab[serve]'")
openai = pytest.importorskip("openai", reason="the official openai client is not installed: pip install openai")

from fastapi.testclient import TestClient  # noqa: E402

from tunelab.data.templates import resolve_template  # noqa: E402
from tunelab.infer.generate import GenerationSettings  # noqa: E402
from tunelab.infer.run import open_run  # noqa: E402
from tunelab.server.serve import build_app  # noqa: E402

from .serving import ScriptedModel  # noqa: E402

PROMPT = "The capital of France is"
WRITTEN = " Paris. It is big.</s>"


@pytest.fixture(scope="module")
def served(tiny_run_dir, base_tokenizer):
    tokenizer = base_tokenizer(chat_template="{% for m in messages %}{{ m.content }}{% endfor %}")
    model = ScriptedModel(tokenizer.encode(WRITTEN, add_special_tokens=False))
    run = open_run(tiny_run_dir, device="cpu")
    run = replace(run, model=model, tokenizer=tokenizer, template=resolve_template("tokenizer", tokenizer))
    http = TestClient(build_app(run, model_name="tiny", settings=GenerationSettings(max_new_tokens=40)))
    client = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)
    return client, model, tokenizer


def test_a_prompt_is_continued_as_openai_answers_it(served):
    """POST /v1/completions was a 404: it now continues the prompt as written (no chat template), in OpenAI's shape,
    the continuation's leading space kept; streamed, the pieces make the same text; stop strings end it."""
    client, model, tokenizer = served
    done = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=20)
    assert done.object == "text_completion" and done.model == "tiny"
    assert (done.choices[0].text, done.choices[0].finish_reason) == (" Paris. It is big.", "stop")
    assert model.prompts[-1] == tokenizer(PROMPT)["input_ids"]  # the raw prompt, no template
    assert done.usage.prompt_tokens == len(model.prompts[-1])
    assert done.usage.completion_tokens == len(tokenizer.encode(WRITTEN, add_special_tokens=False))
    streamed = client.completions.create(
        model="tiny", prompt=PROMPT, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == " Paris. It is big."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.total_tokens == done.usage.total_tokens
    cut = client.completions.create(model="tiny", prompt=PROMPT, stop=["."])
    assert (cut.choices[0].text, cut.choices[0].finish_reason) == (" Paris", "stop")


def test_several_prompts_and_n_answers_are_choices_in_openai_order(served):
    client, _, _ = served
    done = client.completions.create(model="tiny", prompt=["A", "B"], n=2, seed=3, echo=True)
    assert [c.index for c in done.choices] == [0, 1, 2, 3]
    assert [c.text for c in done.choices] == [p + " Paris. It is big." for p in ("A", "A", "B", "B")]


def test_what_the_route_cannot_honour_is_refused(served):
    """Log-probabilities are not computed: asked for, they are a 400 naming the option (an lm-eval loglikelihood
    task fails with that message, not with scores made of nothing); so are an unknown option and an unknown model."""
    client, _, _ = served
    for options, param in (
        ({"logprobs": 1}, "logprobs"),
        ({"logprobs": 0}, "logprobs"),  # OpenAI still returns the sampled tokens' log-probabilities for 0
        ({"best_of": 2}, "best_of"),
        ({"extra_body": {"prompt_logprobs": 1}}, "prompt_logprobs"),
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            client.completions.create(model="tiny", prompt=PROMPT, **options)
        assert caught.value.body["param"] == param, options
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt=PROMPT)
    assert client.completions.create(model="tiny", prompt=PROMPT, logprobs=None, echo=False).choices[0].text


def test_a_model_of_unstated_context_caps_max_tokens_and_token_ids_are_refused(served):
    """A model that does not state its context length takes at most the server's cap of max_tokens, as a chat
    does (a huge max_tokens was generated toward); a prompt of token ids is a 400 naming the prompt."""
    client, model, _ = served
    kept = model.config
    model.config = SimpleNamespace()  # no max_position_embeddings
    try:
        with pytest.raises(openai.BadRequestError) as caught:
            client.completions.create(model="tiny", prompt=PROMPT, max_tokens=10**6)
        assert caught.value.body["param"] == "max_tokens" and "does not state its context length" in str(caught.value)
    finally:
        model.config = kept
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny", prompt=[1, 2, 3])
    assert str(caught.value.body["param"]).startswith("prompt")


def test_a_prompt_beyond_the_context_is_refused_in_openai_words(served):
    """As a chat's messages are, in words that name the prompt (not the messages and chat template it has none of)."""
    client, model, tokenizer = served
    kept = model.config
    model.config = SimpleNamespace(max_position_embeddings=len(tokenizer(PROMPT)["input_ids"]) + 2)
    try:
        for options, says in (({"max_tokens": 5}, "set max_tokens to at most 2"), ({"prompt": PROMPT * 3}, "no room")):
            with pytest.raises(openai.BadRequestError) as caught:
                client.completions.create(model="tiny", **{"prompt": PROMPT} | options)
            error = caught.value.body
            assert error["code"] == "context_length_exceeded" and error["param"] == "prompt", error
            assert says in error["message"] and "messages" not in error["message"], error
    finally:
        model.config = kept


def test_a_prompt_that_opens_with_bos_gets_no_second_one(served):
    """A prompt written from a chat template opens with the BOS text, and the tokenizer (which adds <s>) put its own
    in front: the model read two BOS, a sequence it never trained on. Now the prompt has one, as the text meant, and
    its usage counts it once; a prompt without the BOS text still gets the tokenizer's."""
    client, model, tokenizer = served
    bos = tokenizer.bos_token_id
    assert tokenizer(PROMPT)["input_ids"][0] == bos  # the tokenizer adds BOS: the case that doubled
    for prompt in (tokenizer.bos_token + PROMPT, tokenizer.bos_token * 2 + PROMPT, PROMPT):
        done = client.completions.create(model="tiny", prompt=prompt, max_tokens=20)
        sent = model.prompts[-1]
        assert sent[0] == bos and sent[1] != bos, (prompt, sent)
        assert sent == tokenizer(PROMPT)["input_ids"]
        assert done.usage.prompt_tokens == len(sent)
