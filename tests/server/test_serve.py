"""`tunelab serve` spoken to with the official `openai` client: models and health, answers with and without
streaming (the streamed text equals the plain answer, as server-sent events), system messages read as training read
them, the served model as trained."""

import json

import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed: pip install 'tunelab[serve]'")
pytest.importorskip("uvicorn", reason="the 'serve' extra is not installed: pip install 'tunelab[serve]'")
openai = pytest.importorskip("openai", reason="the official openai client is not installed: pip install openai")

from tunelab.cli import main  # noqa: E402
from tunelab.errors import TunelabError  # noqa: E402
from tunelab.infer.generate import GenerationSettings  # noqa: E402
from tunelab.infer.run import open_run  # noqa: E402
from tunelab.server.serve import start_server  # noqa: E402

from .serving import QUESTION, SAMPLED, http  # noqa: E402


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").owned_by == "tunelab"
    status, _, health = http("GET", f"{server.url}/health", key=None)  # no key needed
    assert status == 200 and json.loads(health) == {"status": "ok", "model": "tiny"}


def test_health_answers_head(server):
    """`HEAD /health`, what load balancers and uptime checks send, was a 405, so a healthy server looked down. It is
    answered as GET is, without the body (its headers those of GET's answer), with the API key set or not."""
    status, headers, body = http("HEAD", f"{server.url}/health", key=None)
    assert status == 200 and body == b"" and headers["content-type"] == "application/json"
    _, got, _ = http("GET", f"{server.url}/health", key=None)
    assert headers["content-length"] == got["content-length"] != "0"


def test_answers_with_and_without_streaming_agree(client, tiny_run_dir):
    plain = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=10, **SAMPLED)
    choice = plain.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert 0 < plain.usage.completion_tokens <= 10 and plain.usage.prompt_tokens > 5
    assert len(choice.message.content) > 3
    # the answer tunelab generate gives with the same seed and settings
    import torch

    from tunelab.api import generate

    run = open_run(tiny_run_dir, device="cpu")
    torch.manual_seed(SAMPLED["seed"])
    settings = GenerationSettings(max_new_tokens=10, temperature=1.0)
    assert choice.message.content == generate(run, "Code of box 3?", settings=settings)

    chunks = list(
        client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=10, stream=True, **SAMPLED)
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == choice.message.content and len(chunks) > 3
    assert chunks[-1].choices[0].finish_reason == choice.finish_reason
    assert all(c.usage is None for c in chunks)  # usage only when asked for, as OpenAI streams it
    counted = list(
        client.chat.completions.create(
            model="tiny",
            messages=QUESTION,
            max_tokens=10,
            stream=True,
            stream_options={"include_usage": True},
            **SAMPLED,
        )
    )
    assert counted[-1].choices == [] and counted[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert all(c.usage is None for c in counted[:-1]) and counted[-2].choices[0].finish_reason == choice.finish_reason


def test_stream_chunks_are_server_sent_events(server):
    body = json.dumps({"model": "tiny", "messages": QUESTION, "max_tokens": 3, "stream": True}).encode()
    status, headers, raw = http("POST", f"{server.url}/v1/chat/completions", body)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    lines = [line for line in raw.decode().split("\n") if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["object"] == "chat.completion.chunk"


def test_system_messages_are_read_as_training_read_them(server, client, tiny_run_dir):
    """An empty system message (a client's blank system box) was rendered as an empty system turn, where training
    reads it as none: the run's data.system_prompt, or the template's own default. A system message after the first,
    which training skips and the llama2 and alpaca templates write as an answer, was rendered too; now it is a 400."""
    from dataclasses import replace

    from tunelab.data.render import render_prompt
    from tunelab.server.engine import Engine

    def prompt_tokens(messages: list[dict]) -> int:
        return client.chat.completions.create(model="tiny", messages=messages, max_tokens=1).usage.prompt_tokens

    assert prompt_tokens([{"role": "system", "content": " "}, *QUESTION]) == prompt_tokens(QUESTION)
    run = open_run(tiny_run_dir, device="cpu")
    told = replace(run, info=replace(run.info, system_prompt="You answer box questions."))
    ids, _ = Engine(told, "tiny")._prompt([{"role": "system", "content": ""}, *QUESTION], GenerationSettings(4))
    trained = [{"role": "system", "content": "You answer box questions."}, *QUESTION]
    assert ids[0].tolist() == render_prompt(trained, run.tokenizer, run.template)

    late = [*QUESTION, {"role": "assistant", "content": "Box 3."}, {"role": "developer", "content": "Be brief."}]
    for stream in (False, True):
        body = {"model": "tiny", "messages": [*late, *QUESTION], "stream": stream}
        status, _, raw = http("POST", f"{server.url}/v1/chat/completions", json.dumps(body).encode())
        error = json.loads(raw)["error"]
        assert status == 400 and error["param"] == "messages.2.role", raw
        assert error["message"].startswith("messages.2 is a system"), raw


def test_base_precision_reaches_the_served_model(tiny_run_dir, monkeypatch, capsys):
    """`tunelab serve --base-precision 16bit` was accepted and not used: a QLoRA run was served over its NF4 base
    all the same. Now the run is opened with it."""
    import tunelab.server.serve as serve_module

    opened = []

    def open_run_stub(run_dir, device="auto", base_precision="trained", spelling=None):
        opened.append({"base_precision": base_precision})
        raise TunelabError("stub: opened")

    monkeypatch.setattr(serve_module, "opened", open_run_stub)
    assert main(["serve", str(tiny_run_dir), "--port", "0", "--base-precision", "16bit"]) == 2
    assert "stub: opened" in capsys.readouterr().err and opened[0]["base_precision"] == "16bit"
    with pytest.raises(TunelabError, match="stub: opened"):
        start_server(tiny_run_dir, base_precision="16bit")
    assert opened[1]["base_precision"] == "16bit"


def test_a_model_name_with_a_slash_is_found(tiny_run_dir):
    """--model-name org/tiny (as hub ids are written) was answered, but GET /v1/models/org/tiny, the openai client's
    models.retrieve, was a bare 404 "Not Found"; it gives the model, and an unknown one the model_not_found error."""
    from fastapi.testclient import TestClient

    from tunelab.server.serve import build_app

    client = TestClient(build_app(open_run(tiny_run_dir, device="cpu"), model_name="org/tiny"))
    assert client.get("/v1/models/org/tiny").json()["id"] == "org/tiny"
    missing = client.get("/v1/models/org/other")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
