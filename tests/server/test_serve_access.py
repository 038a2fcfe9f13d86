"""Who and what `tunelab serve` answers: with an API key, every path but /health needs it."""

import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed: pip install 'tunelab[serve]'")

from fastapi.testclient import TestClient  # noqa: E402

from tunelab.infer.run import open_run  # noqa: E402
from tunelab.server.serve import build_app  # noqa: E402

KEY = "test-key-123"


@pytest.fixture(scope="module")
def loaded(tiny_run_dir):
    return open_run(tiny_run_dir, device="cpu")


def test_the_schema_needs_the_key_when_one_is_set(loaded):
    """With --api-key, /openapi.json listed the server's routes and options to anyone; it now needs the key, as
    /v1/ does (/docs and /redoc are not served). Without a key it stays open, and /health never needs one."""
    client = TestClient(build_app(loaded, api_key=KEY, model_name="tiny"))
    for path in ("/openapi.json", "/docs", "/redoc", "/v1/models"):
        answer = client.get(path)
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key", path
    assert client.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()["info"]["title"]
    assert client.get("/docs", headers={"Authorization": f"Bearer {KEY}"}).status_code == 404
    assert client.get("/health").status_code == 200
    assert TestClient(build_app(loaded, model_name="tiny")).get("/openapi.json").status_code == 200


def test_a_run_reached_through_a_link_is_served_under_the_links_name(tiny_run_dir, tmp_path, monkeypatch):
    """`tunelab serve runs/latest` (a link to runs/2026-12-04) served the model as "2026-12-04", so a client asking
    for "latest" got 404. It is served as "latest", and a request naming the directory it leads to is answered too;
    --model-name still names it alone."""
    from tunelab.server.serve import run_name

    link = tmp_path / "latest"
    link.symlink_to(tiny_run_dir, target_is_directory=True)
    client = TestClient(build_app(open_run(link, device="cpu")))
    for name in ("latest", tiny_run_dir.name):
        assert client.get(f"/v1/models/{name}").json()["id"] == name, name
        body = {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        answer = client.post("/v1/chat/completions", json=body)
        assert answer.status_code == 200 and answer.json()["model"] == name, answer.json()  # the id asked for
    named = TestClient(build_app(open_run(link, device="cpu"), model_name="tiny"))
    assert named.get(f"/v1/models/{tiny_run_dir.name}").status_code == 404
    assert run_name(f"{link}/") == "latest"
    monkeypatch.chdir(link)
    assert run_name(".") == tiny_run_dir.name  # "." names the directory it stands for


def test_a_negative_seed_is_a_seed_and_minus_one_asks_for_none(loaded, monkeypatch):
    """ "seed": -1, which front-ends send to mean "random", was a 400, and so was any negative seed, which OpenAI's
    API accepts (a 64-bit signed integer). A negative seed now seeds the sampling like any other, and -1 asks for
    none, as vLLM reads it; a seed outside 64 bits is still a 400."""
    import tunelab.server.engine as engine
    from tunelab.infer.generate import GenerationSettings

    client = TestClient(build_app(loaded, model_name="tiny", settings=GenerationSettings(max_new_tokens=6)))
    seeded = []
    real = engine.seeded_generator
    monkeypatch.setattr(engine, "seeded_generator", lambda seed, device: seeded.append(seed) or real(seed, device))

    def ask(seed):
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 1.0, "seed": seed}
        return client.post("/v1/chat/completions", json=body)

    answers = [ask(-5) for _ in range(2)]
    assert all(a.status_code == 200 for a in answers), answers[0].json()
    assert answers[0].json()["choices"] == answers[1].json()["choices"] and seeded == [-5, -5]
    assert ask(-1).status_code == 200 and seeded == [-5, -5]  # -1: no seed set
    assert ask(-(2**63)).status_code == 200 and seeded[-1] == -(2**63)
    refused = ask(-(2**63) - 1)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "seed"


def test_the_models_listed_are_those_a_request_may_name(tiny_run_dir, tmp_path, monkeypatch):
    """A run served through a link answered requests naming the directory the link leads to, but /v1/models listed
    the link's name only, and `tunelab serve runs/latest` (the CLI) answered the directory's name with a 404. Both
    names are listed, the link's first, both are answered from the CLI too, and any other name gets OpenAI's 404
    body (type invalid_request_error, code model_not_found), listing the names served."""
    import tunelab.server.serve as serve_module
    from tunelab.cli import main

    link = tmp_path / "latest"
    link.symlink_to(tiny_run_dir, target_is_directory=True)
    apps = []
    real = serve_module.build_app

    class Server:  # uvicorn's, which would serve until Ctrl-C
        def run(self, sockets):
            pass

    monkeypatch.setattr(serve_module, "build_app", lambda *a, **k: apps.append(real(*a, **k)) or apps[-1])
    monkeypatch.setattr(serve_module, "_server", lambda app, level: Server())
    assert main(["serve", str(link), "--port", "0", "--device", "cpu"]) == 0
    client = TestClient(apps[0])
    listed = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert listed == ["latest", tiny_run_dir.name]
    for name in listed:
        body = {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        assert client.post("/v1/chat/completions", json=body).status_code == 200, name
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    for answer in (client.post("/v1/chat/completions", json=body), client.get("/v1/models/gpt-4o")):
        assert answer.status_code == 404
        error = answer.json()["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == "model_not_found", error
        assert "'gpt-4o'" in error["message"] and f"'{tiny_run_dir.name}'" in error["message"], error
    named = TestClient(build_app(open_run(link, device="cpu"), model_name="tiny"))
    assert [m["id"] for m in named.get("/v1/models").json()["data"]] == ["tiny"]


def test_allowed_origins_let_a_web_page_call_the_server(loaded, tiny_run_dir):
    """A chat page in the browser (another origin than the server's) could not call `tunelab serve`: the browser's
    preflight (OPTIONS, no API key) was a 405 with no CORS header, so every request was blocked. `--allowed-origins`
    names the pages allowed, as vLLM's option does: their preflight is answered (before the key check, which a
    preflight cannot pass) and their answers carry the header; another origin gets none. Without the option no page
    may (vLLM allows any by default; a page the user visits could then drive the model on their machine), and an
    entry that is no origin is refused, naming the option."""
    from tunelab.cli import main

    page, other = "http://localhost:3000", "https://elsewhere.example"
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    client = TestClient(build_app(loaded, api_key=KEY, model_name="tiny", allowed_origins=[page]))
    answer = client.options("/v1/chat/completions", headers={"Origin": page} | preflight)
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == page, answer.text
    assert "authorization" in answer.headers["access-control-allow-headers"].lower()
    answer = client.get("/v1/models", headers={"Origin": page, "Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == page
    answer = client.options("/v1/chat/completions", headers={"Origin": other} | preflight)
    assert "access-control-allow-origin" not in answer.headers
    closed = TestClient(build_app(loaded, model_name="tiny")).options(
        "/v1/models", headers={"Origin": page} | preflight
    )
    assert "access-control-allow-origin" not in closed.headers
    assert main(["serve", str(tiny_run_dir), "--allowed-origins", "localhost:3000"]) == 2
