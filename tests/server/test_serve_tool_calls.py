"""Tool calls the model writes are answered as OpenAI's `message.tool_calls`, in the syntax the run's chat template
writes calls in (Hermes/Qwen `<tool_call>` blocks, Llama 3 JSON), streamed or not; text that is no call stays
content. The model's answer is faked (`Engine.stream`), so each case says exactly what the model wrote."""

import json

import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed: pip install 'tunelab[serve]'")
openai = pytest.importorskip("openai", reason="the official openai client is not installed: pip install openai")

from fastapi.testclient import TestClient  # noqa: E402

from tunelab.infer.run import open_run  # noqa: E402
from tunelab.server.engine import Completion, Engine  # noqa: E402
from tunelab.server.serve import build_app  # noqa: E402
from tunelab.server.tool_calls import ToolCallReader  # noqa: E402

from .serving import ScriptedModel  # noqa: E402

QUESTION = [{"role": "user", "content": "Weather in Paris?"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
_TURNS = (
    "{%- if tools %}<tools>{% for t in tools %}{{ t.function.name }};{% endfor %}</tools>\n{% endif %}"
    "{%- for m in messages %}{% if m.role == 'tool' %}<|im_start|>user\n<tool_response>{{ m.content }}"
    "</tool_response>{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}{% endif %}"
)
_END = "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
# Qwen 2.5's way of writing an assistant's calls, and Llama 3.1's
HERMES = (
    _TURNS + "{%- for c in m.tool_calls or [] %}<tool_call>\n"
    '{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}\n</tool_call>'
    "{%- endfor %}" + _END
)
LLAMA3 = (
    _TURNS + '{%- for c in m.tool_calls or [] %}{"name": "{{ c.function.name }}", "parameters": '
    "{{ c.function.arguments | tojson }}}{%- endfor %}" + _END
)
# Qwen3-Coder's (and Qwen3.5's) XML calls; Mistral 7B v0.3's list (its ids must be 9 letters and digits) and the
# [TOOL_CALLS]name[ARGS]{...} of Mistral Small 3.2
QWEN_XML = (
    _TURNS + "{%- for c in m.tool_calls or [] %}<tool_call>\n<function={{ c.function.name }}>\n"
    "{%- for k, v in c.function.arguments | items %}<parameter={{ k }}>\n"
    "{{ v | tojson if v is mapping or (v is sequence and v is not string) else v | string }}\n</parameter>\n"
    "{%- endfor %}</function>\n</tool_call>{%- endfor %}" + _END
)
MISTRAL_LIST = (
    _TURNS + "{%- if m.tool_calls %}[TOOL_CALLS] [{%- for c in m.tool_calls %}"
    "{%- if c.id | length != 9 %}{{ raise_exception('Tool call IDs should be alphanumeric strings of length 9') }}"
    '{%- endif %}{{ (c.function | tojson)[:-1] }}, "id": "{{ c.id }}"}{{ ", " if not loop.last }}{%- endfor %}]'
    "{%- endif %}" + _END
)
MISTRAL_ARGS = (
    _TURNS + "{%- for c in m.tool_calls or [] %}[TOOL_CALLS]{{ c.function.name }}[ARGS]"
    "{{ c.function.arguments | tojson }}{%- endfor %}" + _END
)
OTHER = _TURNS + "{%- for c in m.tool_calls or [] %}<call>{{ c.function.name }}</call>{%- endfor %}" + _END


class FakeReply:
    thought = None  # the model writes no thought

    def __init__(self, pieces: list[str]):
        self.pieces = pieces

    def cancel(self) -> None:
        pass

    def __iter__(self):
        yield from self.pieces
        yield Completion("", 5, 7, "stop")


@pytest.fixture
def serve(tiny_run_dir, monkeypatch):
    """An openai client on a server whose run has `template` and whose model writes `pieces`."""

    def start(template: str, pieces: list[str]):
        run = open_run(tiny_run_dir, device="cpu")
        run.tokenizer.chat_template = template
        monkeypatch.setattr(Engine, "stream", lambda self, *args, **kwargs: FakeReply(pieces))
        http = TestClient(build_app(run, model_name="tiny"))
        return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)

    return start


def _both(client, **options):
    """The plain answer's message and finish reason, and the same rebuilt from the stream's chunks."""
    ask = {"model": "tiny", "messages": QUESTION, "tools": TOOLS} | options
    plain = client.chat.completions.create(**ask).choices[0]
    content, calls, finish = "", {}, None
    for chunk in client.chat.completions.create(**ask, stream=True):
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for call in delta.tool_calls or []:
            calls[call.index] = call
        finish = chunk.choices[0].finish_reason or finish
    return plain, (content, [calls[k] for k in sorted(calls)], finish)


def test_hermes_tool_calls_are_answered_as_tool_calls(serve):
    """A Qwen-style model's `<tool_call>{...}</tool_call>` came back as content text, which an OpenAI client shows
    the user instead of calling the tool. It is now `message.tool_calls` (an id, the arguments as JSON text) with
    finish_reason "tool_calls", streamed or not, and the text before the call stays the content."""
    pieces = ["Let me look.", "\n<tool", '_call>\n{"name": "get_weather", ', '"arguments": {"city": "Paris"}}\n', "</"]
    pieces += ['tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>']
    client = serve(HERMES, pieces)
    plain, (content, calls, finish) = _both(client)
    assert plain.finish_reason == finish == "tool_calls"
    assert plain.message.content == content == "Let me look."
    for answered in (plain.message.tool_calls, calls):
        assert [c.function.name for c in answered] == ["get_weather", "get_weather"]
        assert [json.loads(c.function.arguments) for c in answered] == [{"city": "Paris"}, {"city": "Rome"}]
        assert all(c.id.startswith("call_") and c.type == "function" for c in answered)
    assert len({c.id for c in plain.message.tool_calls}) == 2


def test_parallel_tool_calls_false_answers_the_first_call_only(serve, caplog):
    """A request of parallel_tool_calls: false got both calls a model wrote, where OpenAI answers zero or one. It
    now gets the first alone, streamed or not, with the others said in a log line; true or absent keeps both, and a
    value that is no bool is a 400 naming the option."""
    pieces = ['<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n']
    pieces += ['<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>']
    client = serve(HERMES, pieces)
    with caplog.at_level("WARNING", logger="tunelab.server.tool_calls"):
        plain, (content, calls, finish) = _both(client, parallel_tool_calls=False)
    assert plain.finish_reason == finish == "tool_calls" and plain.message.content is None and content == ""
    for answered in (plain.message.tool_calls, calls):
        assert [json.loads(c.function.arguments) for c in answered] == [{"city": "Paris"}]
    assert "dropped the other 1 (get_weather)" in caplog.text
    plain, (_, calls, _) = _both(client, parallel_tool_calls=True)
    assert len(plain.message.tool_calls) == len(calls) == 2
    with pytest.raises(openai.BadRequestError, match="parallel_tool_calls"):
        client.chat.completions.create(
            model="tiny", messages=QUESTION, tools=TOOLS, extra_body={"parallel_tool_calls": "no"}
        )


def test_llama3_json_tool_calls_are_answered_as_tool_calls(serve):
    """Llama 3's templates write a call as a bare JSON object with "parameters": read as a call too."""
    client = serve(LLAMA3, ['{"name": "get_weather", ', '"parameters": {"city": "Paris"}}'])
    plain, (content, calls, finish) = _both(client)
    assert plain.finish_reason == finish == "tool_calls" and plain.message.content is None and content == ""
    for answered in (plain.message.tool_calls, calls):
        assert [(c.function.name, json.loads(c.function.arguments)) for c in answered] == [
            ("get_weather", {"city": "Paris"})
        ]


def test_text_that_is_no_call_stays_content(serve):
    """Nothing the model wrote is lost: a malformed call, a call of a function the request did not define, a JSON
    answer with text around it, a template of an unknown call syntax, or tool_choice "none" leave the whole
    answer as content, with the finish reason generation gave."""
    cases = [
        (HERMES, 'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {city: Paris}}\n</tool_call>', {}),
        (HERMES, '<tool_call>{"name": "send_mail", "arguments": {}}</tool_call>', {}),
        (LLAMA3, 'The call is {"name": "get_weather", "parameters": {}} as you asked.', {}),
        (OTHER, '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>', {}),
        (HERMES, '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>', {"tool_choice": "none"}),
    ]
    for template, text, options in cases:
        client = serve(template, [text[:9], text[9:]])
        plain, (content, calls, finish) = _both(client, **options)
        assert plain.message.content == content == text, (text, plain.message.content, content)
        assert not plain.message.tool_calls and not calls and plain.finish_reason == finish == "stop"


def test_held_back_text_is_only_what_may_become_a_call():
    """While streaming, the content before a possible call goes out as it is generated."""
    hermes = ToolCallReader("hermes", frozenset({"f"}))
    assert hermes.safe("Let me look.\n<tool") == len("Let me look.")
    assert hermes.safe("Let me look at it") == len("Let me look at it")
    json_calls = ToolCallReader("json", frozenset({"f"}))
    assert json_calls.safe('  {"name"') == 0 and json_calls.safe("Paris is sunny.") == len("Paris is sunny.")


def test_qwen_xml_tool_calls_are_answered_with_values_of_their_schema_types(serve):
    """Qwen3-Coder's `<tool_call><function=NAME><parameter=ARG>VALUE</parameter>...` came back as content (its
    template was taken for Hermes JSON). It is now `message.tool_calls`, streamed or not, each value converted by the
    type the request's schema gives its parameter; a string parameter, one the schema does not type, and text that
    is no value of its type stay strings."""
    properties = {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "metric": {"type": "boolean"},
        "hours": {"type": "array"},
        "scale": {"type": "number"},
        "zip": {"type": "string"},
        "limit": {"type": ["integer", "null"]},
        "count": {"type": "integer"},
        "unit": {"type": ["string", "null"]},
        "label": {"type": "string"},
    }
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"properties": properties}}}]
    call = (
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nNew York\n</parameter>\n<parameter=days>\n3\n"
        "</parameter>\n<parameter=metric>\ntrue\n</parameter>\n<parameter=hours>\n[9, 12]\n</parameter>\n"
        "<parameter=scale>\n0.5\n</parameter>\n<parameter=zip>\n01234\n</parameter>\n<parameter=limit>\nnull\n"
        "</parameter>\n<parameter=count>\nthree\n</parameter>\n<parameter=note>\n42\n</parameter>\n"
        "<parameter=unit>\nnull\n</parameter>\n<parameter=label>\nnull\n</parameter>\n</function>\n"
        "</tool_call>"
    )
    client = serve(QWEN_XML, ["I'll check.\n\n", call[:30], call[30:]])
    plain, (content, calls, finish) = _both(client, tools=tools)
    assert plain.finish_reason == finish == "tool_calls"
    assert plain.message.content == content == "I'll check."
    expected = {"city": "New York", "days": 3, "metric": True, "hours": [9, 12], "scale": 0.5, "zip": "01234"}
    expected |= {"limit": None, "count": "three", "note": "42", "unit": None, "label": "null"}
    for answered in (plain.message.tool_calls, calls):
        assert [(c.function.name, json.loads(c.function.arguments)) for c in answered] == [("get_weather", expected)]


def test_mistral_tool_calls_are_answered_with_or_without_their_special_tokens(serve):
    """Mistral's `[TOOL_CALLS][{...}]` (7B v0.3, whose template took no probe call: its ids must be 9 characters)
    and `[TOOL_CALLS]NAME[ARGS]{...}` (Small 3.2) came back as content. They are now tool calls, streamed or not,
    and so are the same answers decoded without their special tokens, as the server decodes an answer's text."""
    rome = '{"name": "get_weather", "arguments": {"city": "Rome"}}'
    cases = [
        (MISTRAL_LIST, '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, ' + rome + "]"),
        (MISTRAL_LIST, ' [{"name": "get_weather", "arguments": {"city": "Paris"}}, ' + rome + "]"),
        (MISTRAL_ARGS, '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_weather[ARGS]{"city": "Rome"}'),
        (MISTRAL_ARGS, 'get_weather{"city": "Paris"}get_weather{"city": "Rome"}'),
    ]
    for template, text in cases:
        client = serve(template, [text[:7], text[7:20], text[20:]])
        plain, (content, calls, finish) = _both(client)
        assert plain.finish_reason == finish == "tool_calls", text
        assert plain.message.content is None and content == ""
        for answered in (plain.message.tool_calls, calls):
            assert [json.loads(c.function.arguments)["city"] for c in answered] == ["Paris", "Rome"]
    client = serve(MISTRAL_ARGS, ["Paris is ", "sunny."])
    plain, (content, calls, finish) = _both(client)
    assert plain.message.content == content == "Paris is sunny." and not calls and finish == "stop"
    client = serve(MISTRAL_ARGS, ["get_weather is ", "a tool."])
    plain, (content, calls, finish) = _both(client)
    assert plain.message.content == content == "get_weather is a tool." and not calls and finish == "stop"


def test_a_mistral_call_can_be_sent_back_with_its_result(serve, monkeypatch):
    """A Mistral call was answered with an id "call_" + 24 characters, which Mistral's templates refuse when the
    client sends the call back with the tool's result (ids of 9 letters and digits only): the conversation could not
    go on. Its id is now 9 letters and digits, and the next request is answered."""
    client = serve(MISTRAL_LIST, ['[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]'])
    call = client.chat.completions.create(model="tiny", messages=QUESTION, tools=TOOLS).choices[0].message
    assert call.tool_calls[0].id.isalnum() and len(call.tool_calls[0].id) == 9, call

    def written(self, messages, settings, stop, tools=None, **_):  # the template writes it
        self._prompt(messages, settings, tools)
        return FakeReply(["Sunny."])

    monkeypatch.setattr(Engine, "stream", written)
    result = {"role": "tool", "tool_call_id": call.tool_calls[0].id, "content": "sunny"}
    messages = [*QUESTION, call.model_dump(exclude_none=True), result]
    answer = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS)
    assert answer.choices[0].message.content == "Sunny."


def test_a_mistral_call_after_text_is_read_by_its_special_tokens(tiny_run_dir, base_tokenizer):
    """The answer was decoded without special tokens, Mistral's [TOOL_CALLS] and [ARGS] among them, so "Let me
    check." followed by a call came back as the content "Let me check.get_weather{...}". Those markers now stay in
    the text the calls are read from, streamed or not: the call is a tool call, the text before it the content; a
    marker of no call is left out of the content, and the end of turn is never text."""
    from dataclasses import replace

    from tunelab.data.templates import resolve_template

    tokenizer = base_tokenizer(extra_special=("[TOOL_CALLS]", "[ARGS]"), chat_template=MISTRAL_ARGS)
    run = open_run(tiny_run_dir, device="cpu")
    for written, content, calls in (
        ('Let me check.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}</s>', "Let me check.", ["Paris"]),
        ("Sure.[TOOL_CALLS]get_weather[ARGS]{city</s>", "Sure.get_weather{city", []),
    ):
        ids = tokenizer.encode(written, add_special_tokens=False)
        assert tokenizer.decode(ids, skip_special_tokens=True) == written.replace("[TOOL_CALLS]", "").replace(
            "[ARGS]", ""
        ).removesuffix("</s>")
        scripted = replace(
            run, model=ScriptedModel(ids), tokenizer=tokenizer, template=resolve_template("tokenizer", tokenizer)
        )
        http = TestClient(build_app(scripted, model_name="tiny"))
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)
        plain, (streamed, answered, finish) = _both(client)
        assert (plain.message.content or "") == streamed == content, (written, plain.message.content, streamed)
        for got in (plain.message.tool_calls or [], answered):
            assert [json.loads(c.function.arguments)["city"] for c in got] == calls, written
        assert plain.finish_reason == finish == ("tool_calls" if calls else "stop")


def test_a_stop_string_is_looked_for_in_the_text_not_in_a_call(tiny_run_dir, base_tokenizer):
    """A stop string was looked for in the whole text, the calls' included, so `"stop": "["` ended an answer at
    Mistral's [TOOL_CALLS], and `"stop": "<"` at a Qwen-style <tool_call>: the call was lost and "stop" answered.
    Stop strings are looked for in the answer's text only, up to a call (a marker a special token or plain text): the
    call is answered, streamed or not, and a stop string in the text before it still ends the answer there, its usage
    counting the tokens up to it."""
    from dataclasses import replace

    from tunelab.data.templates import resolve_template

    run = open_run(tiny_run_dir, device="cpu")
    mistral = base_tokenizer(extra_special=("[TOOL_CALLS]", "[ARGS]"), chat_template=MISTRAL_ARGS)
    hermes = base_tokenizer(chat_template=HERMES)
    hermes_call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call></s>'
    for tokenizer, written, content, calls in (
        (mistral, 'Let me check.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}</s>', "Let me check.", ["Paris"]),
        (mistral, 'Let me [check].[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}</s>', "Let me", []),
        (hermes, "Let me look." + hermes_call, "Let me look.", ["Paris"]),
        (hermes, "Let me <b>look</b>." + hermes_call, "Let me", []),
    ):
        assert ("<tool_call>" in tokenizer.decode(tokenizer.encode(written), skip_special_tokens=True)) == (
            tokenizer is hermes
        )  # Qwen's <tool_call> is text, Mistral's [TOOL_CALLS] a special token
        ids = tokenizer.encode(written, add_special_tokens=False)
        scripted = replace(
            run, model=ScriptedModel(ids), tokenizer=tokenizer, template=resolve_template("tokenizer", tokenizer)
        )
        http = TestClient(build_app(scripted, model_name="tiny"))
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)
        plain, (streamed, answered, finish) = _both(client, stop=["[", "<", "ARGS"])
        assert (plain.message.content or "") == streamed == content, (written, plain.message.content, streamed)
        for got in (plain.message.tool_calls or [], answered):
            assert [json.loads(c.function.arguments)["city"] for c in got] == calls, written
        assert plain.finish_reason == finish == ("tool_calls" if calls else "stop")
        if not calls:  # the tokens up to the stop string, not the whole answer
            upto = tokenizer.encode(written[: written.index(content) + len(content) + 2], add_special_tokens=False)
            usage = client.chat.completions.create(model="tiny", messages=QUESTION, tools=TOOLS, stop=["[", "<"]).usage
            assert usage.completion_tokens < len(ids) and usage.completion_tokens <= len(upto), written
    # an answer that ends (here at max_tokens) where a call might have opened: the "<" held back was a stop string
    ids = hermes.encode("Let me look <", add_special_tokens=False)
    scripted = replace(run, model=ScriptedModel(ids), tokenizer=hermes, template=resolve_template("tokenizer", hermes))
    http = TestClient(build_app(scripted, model_name="tiny"))
    client = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)
    plain, (streamed, _, finish) = _both(client, stop="<", max_tokens=len(ids))
    assert plain.message.content == streamed == "Let me look" and plain.finish_reason == finish == "stop"


def test_a_stop_string_does_not_cut_a_llama3_json_call(tiny_run_dir, base_tokenizer):
    """Llama 3's call is bare JSON, which opens with no marker, so a stop string was looked for inside it: `"stop":
    "}"` (or "," or '"') ended the answer at the call's first brace, the call was lost and its cut JSON answered as
    content. The answer's own text ends where its "{" opens the call: the call is answered whole, streamed or not,
    and a stop string in an answer that is no call still ends it."""
    from dataclasses import replace

    from tunelab.data.templates import resolve_template

    run = open_run(tiny_run_dir, device="cpu")
    tokenizer = base_tokenizer(chat_template=LLAMA3)
    for written, content, calls in (
        (' {"name": "get_weather", "parameters": {"city": "Paris"}}</s>', "", ["Paris"]),
        ("Sunny, 21 C } today.</s>", "Sunny, 21 C", []),
    ):
        ids = tokenizer.encode(written, add_special_tokens=False)
        scripted = replace(
            run, model=ScriptedModel(ids), tokenizer=tokenizer, template=resolve_template("tokenizer", tokenizer)
        )
        http = TestClient(build_app(scripted, model_name="tiny"))
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)
        plain, (streamed, answered, finish) = _both(client, stop=["}", '"'])
        assert (plain.message.content or "") == streamed == content, (written, plain.message.content, streamed)
        for got in (plain.message.tool_calls or [], answered):
            assert [json.loads(c.function.arguments)["city"] for c in got] == calls, written
        assert plain.finish_reason == finish == ("tool_calls" if calls else "stop")
