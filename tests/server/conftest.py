"""The server tests choose their API key themselves: one set in the environment ($TUNELAB_API_KEY, read by
`tunelab serve`, tunelab.serve() and start_server() alike) would make the servers they start without one require
it."""

import pytest


@pytest.fixture(autouse=True)
def _no_key_from_the_environment(monkeypatch):
    monkeypatch.delenv("TUNELAB_API_KEY", raising=False)


@pytest.fixture(scope="module")
def server(tiny_run_dir):
    """The tiny run served on a background thread with the key of serving.py, answers of at most 12 tokens."""
    pytest.importorskip("uvicorn", reason="the 'serve' extra is not installed: pip install 'tunelab[serve]'")
    from tunelab.infer.generate import GenerationSettings
    from tunelab.infer.run import open_run
    from tunelab.server.serve import start_server

    from .serving import KEY

    run = open_run(tiny_run_dir, device="cpu")
    running = start_server(run, api_key=KEY, model_name="tiny", settings=GenerationSettings(max_new_tokens=12))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai", reason="the official openai client is not installed: pip install openai")
    from .serving import KEY

    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)
