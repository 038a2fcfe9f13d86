"""A server started from Python says its own settings as the caller gave them (settings.max_new_tokens, argument
'device'), one started by `tunelab serve` by its flags."""

import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed: pip install 'tunelab[serve]'")
pytest.importorskip("uvicorn", reason="the 'serve' extra is not installed: pip install 'tunelab[serve]'")

from fastapi.testclient import TestClient  # noqa: E402

from tunelab.config.flags import CLI, PYTHON  # noqa: E402
from tunelab.infer.run import open_run  # noqa: E402
from tunelab.server.serve import build_app  # noqa: E402

ASKED = {"max_tokens": 10**6}
ROUTES = {  # each route's request for far more tokens than a model of unstated context may be asked
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], **ASKED},
    "/v1/completions": {"prompt": "hi", **ASKED},
    "/v1/responses": {"input": "hi", "max_output_tokens": 10**6},
}


def test_the_token_limit_names_the_servers_setting_as_it_was_given(tiny_run_dir, monkeypatch):
    """A server started with tunelab.serve(...) or start_server(...) answered such a request "this server's limit
    ..., or its --max-new-tokens if larger", a flag its owner never typed: it now names settings.max_new_tokens,
    and tunelab serve's still --max-new-tokens."""
    run = open_run(tiny_run_dir, device="cpu")
    monkeypatch.setattr("tunelab.server.replies.context_length", lambda model: None)
    for spelling, said, unsaid in (
        (PYTHON, "settings.max_new_tokens", "--max-new-tokens"),
        (CLI, "--max-new-tokens", "settings."),
    ):
        http = TestClient(build_app(run, model_name="tiny", spelling=spelling))
        for route, body in ROUTES.items():
            answer = http.post(route, json={"model": "tiny", **body})
            message = answer.json()["error"]["message"]
            assert answer.status_code == 400 and "does not state its context length" in message, (route, message)
            assert f"or its {said} if larger" in message and unsaid not in message, (route, message)
