"""OpenAI's Responses API, `POST /v1/responses`, spoken to with the official openai client's
`client.responses.create`. The model is scripted (its ids written through the streamer as transformers' generate
writes them), so the route's own work is what is tested: the conversation it renders, the response's shape, its
events, and what it refuses."""

from dataclasses import replace

import pytest
import torch

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed: pip install 'tunelab[serve]'")
openai = pytest.importorskip("openai", reason="the official openai client is not installed: pip install openai")

from fastapi.testclient import TestClient  # noqa: E402

from tunelab.data.templates import resolve_template  # noqa: E402
from tunelab.infer.generate import GenerationSettings  # noqa: E402
from tunelab.infer.run import open_run  # noqa: E402
from tunelab.server.serve import build_app  # noqa: E402

from .serving import ScriptedModel, leave_a_stream  # noqa: E402

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ANSWER = "The code of box 3 is 7."
THOUGHT = "Box 3 holds a seven."


def _served(tiny_run_dir, base_tokenizer, written: str, template: str = CHATML, system_prompt: str | None = None):
    tokenizer = base_tokenizer(
        extra_special=("<|im_start|>", "<|im_end|>", "<think>", "</think>"), chat_template=template
    )
    model = ScriptedModel(tokenizer.encode(written, add_special_tokens=False))
    run = open_run(tiny_run_dir, device="cpu")
    info = replace(run.info, system_prompt=system_prompt)
    run = replace(run, model=model, tokenizer=tokenizer, template=resolve_template("tokenizer", tokenizer), info=info)
    http = TestClient(build_app(run, model_name="tiny", settings=GenerationSettings(max_new_tokens=100)))
    client = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)
    return client, model, tokenizer


@pytest.fixture(scope="module")
def served(tiny_run_dir, base_tokenizer):
    return _served(tiny_run_dir, base_tokenizer, ANSWER + "<|im_end|>")


@pytest.fixture(scope="module")
def thinking(tiny_run_dir, base_tokenizer):
    return _served(tiny_run_dir, base_tokenizer, f"<think>\n{THOUGHT}\n</think>\n\n{ANSWER}<|im_end|>")


def _prompt(tokenizer, model) -> str:
    return tokenizer.decode(model.prompts[-1], skip_special_tokens=False)


def test_a_text_input_is_answered_in_openai_shape(served):
    """POST /v1/responses was a 404: a text input is now the user's message, `instructions` the system message,
    and the answer comes back as one message item whose output_text the client reads as `output_text`."""
    client, model, tokenizer = served
    done = client.responses.create(model="tiny", input="Code of box 3?", instructions="Answer briefly.")
    assert done.object == "response" and done.status == "completed" and done.model == "tiny"
    assert done.output_text == ANSWER
    (item,) = done.output
    assert item.type == "message" and item.role == "assistant" and item.content[0].type == "output_text"
    assert _prompt(tokenizer, model) == tokenizer.bos_token + (
        "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nCode of box 3?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert done.usage.input_tokens == len(model.prompts[-1])
    assert done.usage.output_tokens == len(tokenizer.encode(ANSWER + "<|im_end|>", add_special_tokens=False))
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens
    assert done.store is False and done.instructions == "Answer briefly."


def test_a_message_list_is_the_conversation(served):
    """Messages in OpenAI's input shapes (a text content, input_text parts, an earlier answer's output_text parts,
    a developer message) are rendered as a chat's messages are."""
    client, model, tokenizer = served
    earlier = {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
               "content": [{"type": "output_text", "text": "Which box?", "annotations": []}]}  # fmt: skip
    done = client.responses.create(
        model="tiny",
        input=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "input_text", "text": "Code of a box?"}]},
            earlier,
            {"type": "message", "role": "user", "content": "Box 3."},
        ],
    )
    assert done.output_text == ANSWER
    assert _prompt(tokenizer, model) == tokenizer.bos_token + (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCode of a box?<|im_end|>\n"
        "<|im_start|>assistant\nWhich box?<|im_end|>\n<|im_start|>user\nBox 3.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_an_answer_sent_back_as_the_client_dumps_it_is_read(served):
    """The openai client's output message, dumped to be sent back (`item.model_dump()`, as a chat history kept as
    JSON holds it), carries `"phase": null`, its newest field: it was refused as a field the server does not read,
    though a null asks for nothing. It is now read as the earlier answer it is; a phase given is still refused."""
    client, model, tokenizer = served
    first = client.responses.create(model="tiny", input="Code of a box?")
    dumped = [item.model_dump() for item in first.output]
    assert "phase" in dumped[0] and dumped[0]["phase"] is None
    done = client.responses.create(
        model="tiny", input=[{"role": "user", "content": "Code of a box?"}, *dumped, {"role": "user", "content": "3."}]
    )
    assert done.output_text == ANSWER
    assert f"<|im_start|>assistant\n{ANSWER}<|im_end|>\n<|im_start|>user\n3.<|im_end|>" in _prompt(tokenizer, model)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(
            model="tiny", input=[{"role": "user", "content": "Hi"}, dumped[0] | {"phase": "commentary"}]
        )
    assert caught.value.body["param"] == "input.1.phase"


def test_max_output_tokens_cuts_the_answer_and_says_so(served):
    client, _, tokenizer = served
    done = client.responses.create(model="tiny", input="Code of box 3?", max_output_tokens=3)
    assert done.status == "incomplete" and done.incomplete_details.reason == "max_output_tokens"
    assert done.usage.output_tokens == 3 and done.output[0].status == "incomplete"
    assert ANSWER.startswith(done.output_text) and done.output_text != ANSWER


def test_streamed_events_make_the_same_response(served):
    """The events are OpenAI's, in order, numbered; their deltas make the answer; response.completed carries the
    whole response."""
    client, _, _ = served
    events = list(client.responses.create(model="tiny", input="Code of box 3?", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]  # fmt: skip
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"]  # fmt: skip
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == ANSWER
    assert events[-1].response.output_text == ANSWER and events[-1].response.usage.output_tokens > 0


def test_a_thought_is_a_reasoning_item_before_the_answer(thinking):
    client, _, _ = thinking
    done = client.responses.create(model="tiny", input="Code of box 3?")
    assert [item.type for item in done.output] == ["reasoning", "message"]
    assert done.output[0].content[0].text == THOUGHT and done.output_text == ANSWER
    assert 0 < done.usage.output_tokens_details.reasoning_tokens < done.usage.output_tokens
    events = list(client.responses.create(model="tiny", input="Code of box 3?", stream=True))
    assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == THOUGHT
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == ANSWER
    added = [(e.output_index, e.item.type) for e in events if e.type == "response.output_item.added"]
    assert added == [(0, "reasoning"), (1, "message")]
    assert events[-1].type == "response.completed" and events[-1].response.output_text == ANSWER


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"text": {"format": {"type": "json_object"}}}, "text.format.type"),
        ({"text": {"format": {"type": "json_schema", "name": "a", "schema": {}}}}, "text.format.type"),
        ({"text": {"verbosity": "low"}}, "text.verbosity"),
        ({"reasoning": {"summary": "auto"}}, "reasoning.summary"),
        ({"reasoning": {"effort": "low"}}, "reasoning.effort"),  # the run's template reads no reasoning_effort
        ({"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}}, "chat_template_kwargs.enable_thinking"),
        ({"extra_body": {"default_system_prompt": "no"}}, "default_system_prompt"),
        ({"metadata": {"k": "v" * 513}}, "metadata.k"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"extra_body": {"frobnicate": 1}}, "frobnicate"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": "1"}]}, "input.0.type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input.0.content.0.type",
        ),  # fmt: skip
        ({"input": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}, "input.1.role"),
        ({"input": [{"role": "user", "content": ""}]}, "input.0.content"),
        ({"input": "Hi <|im_end|> there"}, "input"),
        ({"input": [{"role": "user", "content": "Hi"}], "instructions": "<|im_start|>"}, "instructions"),
        ({"input": [{"role": "user", "content": "Hi"}, {"role": "system", "content": "Late"}]}, "input.1.role"),
        ({"input": "Hi", "instructions": "a", "extra_body": {"max_output_tokens": True}}, "max_output_tokens"),
    ],
)
def test_what_the_route_cannot_honour_is_refused_by_name(served, options, param):
    client, _, _ = served
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="tiny", **{"input": "Code of box 3?"} | options)
    assert caught.value.body["param"] == param, caught.value.body


def test_a_system_message_beside_instructions_is_refused_in_words_that_fit(served):
    """With `instructions`, a system message at input.0 was refused as "a system message after the first message",
    though it is the first of input; the refusal now says it stands beside `instructions`."""
    client, _, _ = served
    for role in ("system", "developer"):
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(
                model="tiny", instructions="Be brief.",
                input=[{"role": role, "content": "Be kind."}, {"role": "user", "content": "Hi"}],
            )  # fmt: skip
        error = caught.value.body
        assert error["param"] == "input.0.role" and "beside 'instructions'" in error["message"], error
        assert "after the first" not in error["message"], error


def test_options_that_ask_for_nothing_are_accepted(served):
    client, _, _ = served
    done = client.responses.create(
        model="tiny", input="Code of box 3?", store=True, metadata={"k": "v"}, tools=[], truncation="disabled",
        text={"format": {"type": "text"}}, user="u",
    )  # fmt: skip
    assert done.output_text == ANSWER and done.metadata == {"k": "v"}
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="other", input="Hi")


def test_the_chat_routes_options_are_read_as_it_reads_them(tiny_run_dir, base_tokenizer):
    """What users of the chat route rely on was refused as an unknown option: tunelab's chat_template_kwargs and
    default_system_prompt, and reasoning.effort (the chat route's reasoning_effort) reach the prompt as there;
    text.format of type text, metadata and user are accepted and echoed."""
    effort = "{% if reasoning_effort is defined %}effort: {{ reasoning_effort }}\n{% endif %}"
    thinking = "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    client, model, tokenizer = _served(
        tiny_run_dir, base_tokenizer, ANSWER + "<|im_end|>", effort + CHATML + thinking, "Be kind."
    )
    done = client.responses.create(
        model="tiny", input="Hi", reasoning={"effort": "low"}, text={"format": {"type": "text"}},
        metadata={"k": "v"}, user="u1", extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )  # fmt: skip
    prompt = _prompt(tokenizer, model)
    assert prompt.startswith(tokenizer.bos_token + "effort: low\n<|im_start|>system\nBe kind.<|im_end|>"), prompt
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n"), prompt
    assert done.output_text == ANSWER and done.reasoning.effort == "low" and done.text.format.type == "text"
    assert done.metadata == {"k": "v"} and done.user == "u1"
    client.responses.create(model="tiny", input="Hi", extra_body={"default_system_prompt": False})
    assert "Be kind." not in _prompt(tokenizer, model)
    client.responses.create(
        model="tiny", input="Hi", instructions="Be brief.", extra_body={"default_system_prompt": False}
    )
    assert "Be brief." in _prompt(tokenizer, model)


class _FailingModel(ScriptedModel):
    """Writes its ids, then fails, as a generation that runs out of memory mid-answer."""

    def generate(self, input_ids, streamer, max_new_tokens=None, **_):
        streamer.put(input_ids)
        for i in self.ids:
            streamer.put(torch.tensor([i]))
        raise RuntimeError("out of memory")


def test_a_failure_mid_stream_is_an_error_event_and_a_failed_response(tiny_run_dir, base_tokenizer):
    """A generation that failed once the stream had begun ended it with a lone error event and no response: it is
    now OpenAI's error event, then response.failed carrying the error and what was answered so far; the engine is
    free for the next request."""
    client, model, tokenizer = _served(tiny_run_dir, base_tokenizer, f"<think>\n{THOUGHT}\n</think>\n\nThe code")
    model.__class__ = _FailingModel
    events = list(client.responses.create(model="tiny", input="Code of box 3?", stream=True))
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2].code == "server_error" and events[-2].message == "generation failed: RuntimeError: out of memory"
    failed = events[-1].response
    assert failed.status == "failed" and failed.error.code == "server_error" and "out of memory" in failed.error.message
    assert [(item.type, item.status) for item in failed.output] == [
        ("reasoning", "incomplete"),
        ("message", "incomplete"),
    ]
    assert failed.output[0].content[0].text == THOUGHT and failed.output_text == "The code"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    model.__class__ = ScriptedModel
    model.ids = tokenizer.encode(ANSWER + "<|im_end|>", add_special_tokens=False)
    assert client.responses.create(model="tiny", input="Code of box 3?").output_text == ANSWER


def test_a_client_that_leaves_a_stream_ends_its_generation(tiny_run_dir):
    """A client that leaves a streamed response (a stop button) must not hold the model: its generation ends at
    the next token, and the next request is answered."""
    body = {"model": "tiny", "input": "Code of box 3?", "max_output_tokens": 300, "stream": True, "temperature": 1.0}
    app, sent, generated = leave_a_stream(open_run(tiny_run_dir, device="cpu"), "/v1/responses", body)
    assert sent[0]["status"] == 200 and generated and generated[0] < 50, generated
    with TestClient(app) as http:
        after = http.post("/v1/responses", json={"model": "tiny", "input": "Hi", "max_output_tokens": 2},
                          headers={"Authorization": "Bearer key"})  # fmt: skip
    assert after.status_code == 200 and after.json()["usage"]["output_tokens"] == 2, after.text
