"""The queue of requests: concurrent requests all answered, one at a time; a client that leaves frees it, and
health is answered while requests wait."""

import json
import socket
import threading

import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed: pip install 'tunelab[serve]'")
pytest.importorskip("uvicorn", reason="the 'serve' extra is not installed: pip install 'tunelab[serve]'")
openai = pytest.importorskip("openai", reason="the official openai client is not installed: pip install openai")

from tunelab.infer.run import open_run  # noqa: E402
from tunelab.server.serve import start_server  # noqa: E402

from .serving import QUESTION, SAMPLED, http  # noqa: E402


def test_a_client_that_leaves_a_stream_frees_the_queue(client):
    """A client that stops reading a stream (a stop button) left the server unable to answer anyone: the abandoned
    answer kept the queue's lock, and its clean-up, run later by the garbage collector on the generation's own
    thread, waited for that thread. Now the generation ends at its next token and the next request is answered."""
    for after in (1, 3):
        stream = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=400, stream=True, **SAMPLED)
        for i, _ in enumerate(stream):
            if i + 1 == after:
                break
        stream.close()
        answered: list = []

        def ask(into: list = answered) -> None:
            into.append(client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=3).choices[0])

        worker = threading.Thread(target=ask, daemon=True)
        worker.start()
        worker.join(timeout=60)
        assert answered, f"no answer within 60 s after a client left a stream at chunk {after}"


def test_a_client_that_leaves_before_a_plain_answer_frees_the_queue(tiny_run_dir):
    """A client that gave up on a plain (not streamed) answer, a timeout or a closed page, left its generation running
    to max_tokens while every other request waited behind it (a stream's was already cancelled). Now it ends at its
    next token too."""
    import time

    run = open_run(tiny_run_dir, device="cpu")
    generated, generate, started = [], run.model.generate, threading.Event()

    def counted(**kwargs):
        started.set()
        out = generate(**kwargs)
        generated.append(out.shape[1] - kwargs["input_ids"].shape[1])
        return out

    run.model.generate = counted
    running = start_server(run, model_name="tiny")
    try:
        body = json.dumps({"model": "tiny", "messages": QUESTION, "max_tokens": 900, **SAMPLED}).encode()
        with socket.create_connection(("127.0.0.1", int(running.url.rsplit(":", 1)[1]))) as left:
            head = "POST /v1/chat/completions HTTP/1.1\r\nHost: tiny\r\nContent-Type: application/json\r\n"
            left.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            assert started.wait(timeout=60)  # the client leaves while the answer is written
            time.sleep(0.2)  # 900 tokens take the tiny model several seconds on a CPU
        after = json.dumps({"model": "tiny", "messages": QUESTION, "max_tokens": 1}).encode()
        assert http("POST", f"{running.url}/v1/chat/completions", after, key=None)[0] == 200  # waited for the first
    finally:
        running.stop()
    assert generated[0] < 900 and generated[1] == 1, generated

    from fastapi.testclient import TestClient

    from tunelab.server.serve import build_app

    def failing(**kwargs):
        raise RuntimeError("out of memory")

    run.model.generate = failing  # a failure inside generation is still a 500 saying what failed
    client = TestClient(build_app(run, model_name="tiny"), raise_server_exceptions=False)
    failed = client.post("/v1/chat/completions", json={"model": "tiny", "messages": QUESTION})
    assert failed.status_code == 500
    assert failed.json()["error"]["message"] == "generation failed: RuntimeError: out of memory"


def test_health_is_answered_while_requests_wait(tiny_run_dir):
    """/health and /v1/models ran on the worker threads that queued requests hold while they wait for the model, so a
    server with a full queue did not answer its health check (a supervisor would restart it) until an answer ended.
    They are answered at once."""
    import time

    import anyio
    from fastapi.testclient import TestClient

    from tunelab.server.serve import build_app

    run = open_run(tiny_run_dir, device="cpu")
    started, release, released, generate = threading.Event(), threading.Event(), [], run.model.generate

    def held(**kwargs):
        """The model busy until the health check is answered (or 30 s pass: the old server answered only then)."""
        started.set()
        released.append(release.wait(timeout=30))
        return generate(**kwargs)

    run.model.generate = held
    with TestClient(build_app(run, model_name="tiny")) as client:
        # one worker thread, as when the queue holds as many requests as the pool has threads (40)
        client.portal.call(lambda: setattr(anyio.to_thread.current_default_thread_limiter(), "total_tokens", 1))
        body = {"model": "tiny", "messages": QUESTION, "max_tokens": 4}
        busy = [
            threading.Thread(target=client.post, args=("/v1/chat/completions",), kwargs={"json": body}, daemon=True)
            for _ in range(2)
        ]
        for thread in busy:
            thread.start()
        assert started.wait(timeout=60)
        time.sleep(0.2)  # the second request queued behind the first
        assert client.get("/health").json()["model"] == "tiny" and client.get("/v1/models").status_code == 200
        release.set()
        for thread in busy:
            thread.join(timeout=120)
    assert released[0]  # answered while the first request still held the model


def test_concurrent_requests_are_all_answered(client):
    answers, errors = [], []

    def ask(i: int):
        try:
            stream = i % 2 == 1
            out = client.chat.completions.create(
                model="tiny", messages=QUESTION, max_tokens=6, stream=stream, **SAMPLED
            )
            text = "".join(c.choices[0].delta.content or "" for c in out) if stream else out.choices[0].message.content
            answers.append(text.strip())
        except Exception as exc:  # collected: a crash in a thread must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(answers) == 6
    assert len(set(answers)) == 1 and answers[0]  # one seed, one answer, however the requests were interleaved
