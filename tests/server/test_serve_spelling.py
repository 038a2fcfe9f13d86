"""A server started from Python says its own settings as the caller gave them (settings.max_new_tokens, argument
'device'), one started by `tunelab serve` by its flags; and start_server refuses its arguments before binding."""

import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed: pip install 'tunelab[serve]'")
pytest.importorskip("uvicorn", reason="the 'serve' extra is not installed: pip install 'tunelab[serve]'")

import torch  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

import tunelab.server.serve as serve_module  # noqa: E402
from tunelab.config.flags import CLI, PYTHON  # noqa: E402
from tunelab.errors import ConfigError  # noqa: E402
from tunelab.infer.run import open_run  # noqa: E402
from tunelab.server.serve import build_app, start_server  # noqa: E402

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


def test_start_server_refuses_its_arguments_before_it_binds_the_port(tiny_run_dir, monkeypatch):
    """start_server checked allowed_origins, base_precision and the device only after binding the port, so a port
    in use was said instead of the value refused (and a bound socket waited on the model's loading first)."""

    def bind(*args, **kwargs):
        raise AssertionError("the port was bound before the arguments were checked")

    monkeypatch.setattr(serve_module, "bind", bind)
    run = open_run(tiny_run_dir, device="cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # cuda:0 exists, and the run is on the CPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for given, arguments, said in [
        (tiny_run_dir, {"allowed_origins": ["localhost:3000"]}, "argument 'allowed_origins' has 'localhost:3000'"),
        (tiny_run_dir, {"base_precision": "8bit"}, "argument 'base_precision' is '8bit'; allowed values: trained, 16bit"),
        (tiny_run_dir, {"device": "gpu"}, "argument 'device' is 'gpu'; allowed values"),
        (run, {"device": "cuda:0"}, "argument 'device' is cuda:0, but the run given was opened on cpu"),
        (run, {"base_precision": "16bit"}, "argument 'base_precision' is 16bit, but the run given was opened with trained"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError) as caught:
            start_server(given, **arguments)
        assert said in str(caught.value) and "--" not in str(caught.value), str(caught.value)
