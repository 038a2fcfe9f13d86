"""A reasoning model's thought (<think>...</think>) answered apart from its answer, as vLLM answers it: the
message's `reasoning_content` (and `reasoning`), streamed as deltas of those names, `content` the answer alone. The
model is scripted (its ids written through the streamer as transformers' generate writes them), so the server's own
reading of the answer is what is tested."""

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
CHATML = TURNS + "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
# DeepSeek-R1's later templates open the thought in the generation prompt: the answer starts inside it
OPENED = TURNS + "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
THOUGHT = "<think>\nThe lid says seven.\n</think>\n\nThe code is 7.</s>"


@pytest.fixture(scope="module")
def run(tiny_run_dir):
    return open_run(tiny_run_dir, device="cpu")


def _client(run, tokenizer, written: str):
    ids = tokenizer.encode(written, add_special_tokens=False)
    template = resolve_template("tokenizer", tokenizer)
    scripted = replace(run, model=ScriptedModel(ids), tokenizer=tokenizer, template=template)
    http = TestClient(build_app(scripted, model_name="tiny"))
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)


def _both(client, **options):
    """The plain answer's message and finish reason, and the reasoning, content and finish rebuilt from the stream."""
    ask = {"model": "tiny", "messages": QUESTION} | options
    plain = client.chat.completions.create(**ask).choices[0]
    reasoning, content, finish, twins = "", "", None, True
    for chunk in client.chat.completions.create(**ask, stream=True):
        delta = chunk.choices[0].delta
        said = (delta.model_extra or {}).get("reasoning_content")
        twins &= said == (delta.model_extra or {}).get("reasoning")
        reasoning += said or ""
        content += delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    assert twins  # vLLM's new name and its old one, the same text
    return plain, (reasoning, content, finish)


def _thought(message) -> str | None:
    extra = message.model_extra or {}
    assert extra.get("reasoning_content") == extra.get("reasoning")
    return extra.get("reasoning_content")


def test_a_thought_is_answered_as_reasoning_content(run, base_tokenizer):
    """A Qwen3 or DeepSeek-R1 model's `<think>...</think>` came back inside `content`, so a client showed the user
    the model's scratch work (and a multi-turn client sent it back as the answer). The thought is now the message's
    `reasoning_content` (and vLLM's newer `reasoning`), streamed as deltas of those names, and `content` holds the
    answer alone; the same where the prompt opens the thought (R1's later templates), where `<think>` and `</think>`
    are special tokens (decoded with them, never lost), and where the thought never ends (all thought, no answer). A
    model that writes no thought is answered as before, without those fields. The usage counts the thought's tokens
    as OpenAI does (`completion_tokens_details.reasoning_tokens`)."""
    plain_tokenizer = base_tokenizer(chat_template=CHATML)
    special = base_tokenizer(extra_special=("<think>", "</think>"), chat_template=CHATML)
    for tokenizer, written, thought, answer in (
        (plain_tokenizer, THOUGHT, "The lid says seven.", "The code is 7."),
        (special, THOUGHT, "The lid says seven.", "The code is 7."),
        (
            base_tokenizer(chat_template=OPENED),
            "The lid says seven.\n</think>\n\nSeven.</s>",
            "The lid says seven.",
            "Seven.",
        ),
        (plain_tokenizer, "<think>\nStill counting the boxes", "Still counting the boxes", ""),
        (plain_tokenizer, "The code is 7.</s>", None, "The code is 7."),
    ):
        client = _client(run, tokenizer, written)
        plain, (reasoning, content, finish) = _both(client)
        assert (_thought(plain.message), plain.message.content) == (thought, answer), written
        assert (reasoning or None, content) == (thought, answer), written
        assert plain.finish_reason == finish
        # OpenAI's count of the thought's tokens, its </think> included (all of them where it never ended)
        details = client.chat.completions.create(model="tiny", messages=QUESTION).usage.completion_tokens_details
        if thought is None:
            assert details is None
        else:
            upto = written[: written.index("</think>") + len("</think>")] if "</think>" in written else written
            assert details.reasoning_tokens == len(tokenizer.encode(upto, add_special_tokens=False)), written
    assert "<think>" not in special.decode(special.encode(THOUGHT), skip_special_tokens=True)  # special indeed


def test_a_stop_string_is_looked_for_in_the_answer_not_in_the_thought(run, base_tokenizer):
    """A stop string is looked for in the answer after the thought: one the thought holds ("lid") does not end the
    generation mid-thought, and one in the answer ends it there, streamed or not. An earlier answer sent back with
    its `reasoning_content` (the openai client's message as it came) is taken, not refused as an unknown field."""
    client = _client(run, base_tokenizer(chat_template=CHATML), THOUGHT)
    plain, (reasoning, content, finish) = _both(client, stop=["lid", "7"])
    assert (_thought(plain.message), plain.message.content) == ("The lid says seven.", "The code is")
    assert (reasoning, content, finish) == (
        "The lid says seven.",
        "The code is",
        "stop",
    ) and plain.finish_reason == "stop"
    earlier = plain.message.model_dump(exclude_none=True)
    assert "reasoning_content" in earlier
    again = client.chat.completions.create(
        model="tiny", messages=[*QUESTION, earlier, {"role": "user", "content": "And box 4?"}]
    )
    assert again.choices[0].message.content == "The code is 7."


def test_a_thought_before_a_tool_call(run, base_tokenizer):
    """Qwen3 thinks, then calls a tool: the thought is the reasoning, the call a tool call, and no content is left,
    streamed or not; a stop string ("<") neither cuts the thought nor the call's <tool_call>."""
    import json

    hermes = (
        "{% if tools %}<tools>{% for t in tools %}{{ t.function.name }};{% endfor %}</tools>\n{% endif %}"
        + CHATML.replace(
            "{{ m.content }}",
            "{{ m.content }}{% for c in m.tool_calls or [] %}<tool_call>\n"
            '{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}\n</tool_call>{% endfor %}',
        )
    )
    tools = [{"type": "function", "function": {"name": "get_code", "parameters": {"type": "object"}}}]
    call = '<tool_call>\n{"name": "get_code", "arguments": {"box": 3}}\n</tool_call></s>'
    client = _client(run, base_tokenizer(chat_template=hermes), "<think>\nI need <b>the</b> tool.\n</think>\n\n" + call)
    ask = {"model": "tiny", "messages": QUESTION, "tools": tools, "stop": "<"}
    plain = client.chat.completions.create(**ask).choices[0]
    assert _thought(plain.message) == "I need <b>the</b> tool." and plain.message.content is None
    assert [json.loads(c.function.arguments) for c in plain.message.tool_calls] == [{"box": 3}]
    chunks = list(client.chat.completions.create(**ask, stream=True))
    said = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks)
    calls = [t for c in chunks for t in c.choices[0].delta.tool_calls or []]
    assert said == "I need <b>the</b> tool." and not "".join(c.choices[0].delta.content or "" for c in chunks)
    assert [json.loads(t.function.arguments) for t in calls] == [{"box": 3}]
    assert plain.finish_reason == chunks[-1].choices[0].finish_reason == "tool_calls"
