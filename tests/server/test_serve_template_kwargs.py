"""A request's values for the chat template's own variables (vLLM's `chat_template_kwargs`, OpenAI's
`reasoning_effort` where the template reads it): rendered into the prompt, or refused where they would change
nothing. The model records the prompt it is given, so what the template wrote is what is checked."""

from dataclasses import replace

import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed: pip install 'tunelab[serve]'")
openai = pytest.importorskip("openai", reason="the official openai client is not installed: pip install openai")

from fastapi.testclient import TestClient  # noqa: E402

from tunelab.data.templates import resolve_template  # noqa: E402
from tunelab.infer.run import open_run  # noqa: E402
from tunelab.server.serve import build_app  # noqa: E402

from .serving import ScriptedModel  # noqa: E402

QUESTION = [{"role": "user", "content": "Code of box 3?"}]
TURNS = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
# Qwen3's switch: without thinking, the prompt holds an empty thought, so the model answers at once
QWEN3 = TURNS + (
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
# gpt-oss's: the effort is written into the prompt
EFFORT = "{% if reasoning_effort is defined %}effort: {{ reasoning_effort }}\n{% endif %}" + TURNS


@pytest.fixture(scope="module")
def run(tiny_run_dir):
    return open_run(tiny_run_dir, device="cpu")


def _serve(run, tokenizer, name="tokenizer"):
    model = ScriptedModel(tokenizer.encode("Seven.</s>", add_special_tokens=False))
    scripted = replace(run, model=model, tokenizer=tokenizer, template=resolve_template(name, tokenizer))
    http = TestClient(build_app(scripted, model_name="tiny"))
    client = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)
    return client, model, lambda: tokenizer.decode(model.prompts[-1])


def _refusal(client, **options) -> tuple[str, str]:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=QUESTION, **options)
    error = caught.value.body
    return error["param"], error["message"]


def test_chat_template_kwargs_reach_the_template(run, base_tokenizer):
    """`"chat_template_kwargs": {"enable_thinking": false}`, as vLLM and SGLang take it for Qwen3, was a 400
    (unknown option): the keys are now variables of the chat template's render, so the prompt holds the empty
    thought Qwen3's template writes for it; without them, the prompt is as before."""
    client, _, prompt = _serve(run, base_tokenizer(chat_template=QWEN3))
    answer = client.chat.completions.create(
        model="tiny", messages=QUESTION, extra_body={"chat_template_kwargs": {"enable_thinking": False}}
    )
    assert answer.choices[0].message.content == "Seven."
    assert prompt().endswith("assistant\n<think>\n\n</think>\n\n")
    client.chat.completions.create(model="tiny", messages=QUESTION, stream=True, extra_body={})
    assert prompt().endswith("assistant\n")
    client.chat.completions.create(
        model="tiny", messages=QUESTION, extra_body={"chat_template_kwargs": {"enable_thinking": True}}
    )
    assert prompt().endswith("assistant\n")


def test_chat_template_kwargs_that_would_change_nothing_are_refused(run, base_tokenizer):
    """A key the run's template does not read, one naming the render's own arguments, and any key for a named
    template (chatml writes no variables) are each a 400 naming the key and saying why."""
    client, _, _ = _serve(run, base_tokenizer(chat_template=QWEN3))
    param, message = _refusal(client, extra_body={"chat_template_kwargs": {"enable_thinkin": False}})
    assert param == "chat_template_kwargs.enable_thinkin"
    assert "reads enable_thinking, not 'enable_thinkin'" in message
    param, message = _refusal(client, extra_body={"chat_template_kwargs": {"add_generation_prompt": False}})
    assert param == "chat_template_kwargs.add_generation_prompt" and "set by the server's render" in message
    param, message = _refusal(client, extra_body={"chat_template_kwargs": {"eos_token": "x"}})
    assert param == "chat_template_kwargs.eos_token"
    named, _, _ = _serve(run, base_tokenizer(chat_template=QWEN3), name="chatml")
    param, message = _refusal(named, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert param == "chat_template_kwargs.enable_thinking" and "('chatml') reads no variables" in message


def test_reasoning_effort_is_honoured_where_the_template_reads_it(run, base_tokenizer):
    """`reasoning_effort` was refused whatever the model: it now reaches a template that reads it (gpt-oss's), and
    is refused, saying what to send instead, by one that does not; a value OpenAI does not take is refused too."""
    client, _, prompt = _serve(run, base_tokenizer(chat_template=EFFORT))
    client.chat.completions.create(model="tiny", messages=QUESTION, reasoning_effort="low")
    assert "effort: low\n<|im_start|>user" in prompt()
    assert _refusal(client, extra_body={"reasoning_effort": "maximum"})[0] == "reasoning_effort"
    qwen3, _, _ = _serve(run, base_tokenizer(chat_template=QWEN3))
    param, message = _refusal(qwen3, reasoning_effort="low")
    assert param == "reasoning_effort" and '{"enable_thinking": false}' in message


def test_every_effort_openai_takes_reaches_the_template(run, base_tokenizer):
    """ "max", the newest of OpenAI's efforts (the `openai` client's ReasoningEffort type lists it), was refused as an
    invalid value by a template that reads reasoning_effort; each of OpenAI's values now reaches it, on the chat
    route and as the Responses API's reasoning.effort, and a value OpenAI does not take is a 400 naming the field and
    listing those it does."""
    from typing import get_args

    from openai.types.shared import ReasoningEffort

    client, _, prompt = _serve(run, base_tokenizer(chat_template=EFFORT))
    efforts = [e for arg in get_args(ReasoningEffort) for e in get_args(arg)]
    assert "max" in efforts
    for effort in efforts:
        client.chat.completions.create(model="tiny", messages=QUESTION, reasoning_effort=effort)
        assert f"effort: {effort}\n<|im_start|>user" in prompt(), effort
    client.responses.create(model="tiny", input="Hi", reasoning={"effort": "max"})
    assert "effort: max\n<|im_start|>" in prompt()
    param, message = _refusal(client, extra_body={"reasoning_effort": "maximal"})
    assert param == "reasoning_effort" and 'invalid value "maximal"; allowed: none, minimal, low' in message
    assert "xhigh, max" in message
    param, message = _refusal(client, extra_body={"reasoning_effort": 3})
    assert param == "reasoning_effort" and "invalid value 3;" in message
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="tiny", input="Hi", reasoning={"effort": "maximal"})
    assert caught.value.body["param"] == "reasoning.effort" and "allowed: none" in caught.value.body["message"]
