"""`tunelab serve` from the command line and `tunelab.serve` from Python: what it prints before serving, and the
addresses, ports, keys and names it refuses before the model loads."""

import json
import socket

import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed: pip install 'tunelab[serve]'")
pytest.importorskip("uvicorn", reason="the 'serve' extra is not installed: pip install 'tunelab[serve]'")
openai = pytest.importorskip("openai", reason="the official openai client is not installed: pip install openai")

from tunelab.cli import main  # noqa: E402
from tunelab.errors import ConfigError, TunelabError  # noqa: E402
from tunelab.infer.run import open_run  # noqa: E402
from tunelab.server.serve import start_server  # noqa: E402

from .serving import http  # noqa: E402


def test_port_0_prints_the_port_the_system_chose(tiny_run_dir, monkeypatch, capsys):
    """`tunelab serve --port 0` printed the base URL http://127.0.0.1:0/v1, which no client can reach; it prints the
    port the system chose, the one the server listens on."""
    import tunelab.server.serve as serve_module

    listened = []

    class Server:  # uvicorn's, which would serve until Ctrl-C
        def run(self, sockets):
            listened.append(sockets[0].getsockname()[1])

    monkeypatch.setattr(serve_module, "_server", lambda app, level: Server())
    assert main(["serve", str(tiny_run_dir), "--port", "0", "--device", "cpu"]) == 0
    port = listened[0]
    assert port != 0 and f"OpenAI base URL: http://127.0.0.1:{port}/v1 " in capsys.readouterr().out


def test_a_port_of_the_wrong_type_or_range_is_named(tiny_run_dir):
    """tunelab.serve(run, port="8000") (a port read from the environment) failed with a bare TypeError from
    socket.bind, and port=70000 with an OverflowError; each is a ConfigError naming the port."""
    import tunelab
    from tunelab.errors import ConfigError
    from tunelab.server.serve import start_server

    with pytest.raises(ConfigError, match=r"serve\(\): argument 'port' must be int, got a str \('8000'\)"):
        tunelab.serve(tiny_run_dir, port="8000")
    for port in (70000, -1):
        with pytest.raises(ConfigError, match=rf"argument 'port' is {port}; allowed: 0 to 65535"):
            tunelab.serve(tiny_run_dir, port=port)
        with pytest.raises(ConfigError, match=rf"argument 'port' is {port}"):
            start_server(tiny_run_dir, port=port)


def test_a_mixture_of_system_prompts_is_said_before_serving(mixed_system_run_dir, monkeypatch, capsys):
    """A run trained on sources of different system prompts was served under data.system_prompt alone, without a
    word. serve now says which system prompt answers use, names the sources' others, and that a request's own
    system message gives another."""
    import tunelab.server.serve as serve_module

    class Server:
        def run(self, sockets):
            pass

    monkeypatch.setattr(serve_module, "_server", lambda app, level: Server())
    assert main(["serve", str(mixed_system_run_dir), "--port", "0", "--device", "cpu"]) == 0
    said = capsys.readouterr().err
    assert "(pirate: 'You are a pirate.'; plain: none); answers use data.system_prompt, 'You are helpful.', " in said
    assert 'unless a request sends its own system message, or "default_system_prompt": false for none.)' in said


def test_a_port_in_use_is_refused_with_exit_2(tiny_run_dir, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(tiny_run_dir), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is in use" in err and "--port" in err and "Traceback" not in err


def test_an_ipv6_address_gives_a_url_that_works(tiny_run_dir):
    """Listening on an IPv6 address (--host ::1) gave the URL http://::1:PORT, which no client can open; it is written
    http://[::1]:PORT, as URLs write such an address."""
    try:
        running = start_server(open_run(tiny_run_dir, device="cpu"), host="::1", model_name="tiny")
    except TunelabError as exc:  # a machine without IPv6
        pytest.skip(str(exc))
    try:
        assert running.url.startswith("http://[::1]:")
        status, _, body = http("GET", f"{running.url}/health", key=None)
        assert status == 200 and json.loads(body)["model"] == "tiny"
    finally:
        running.stop()


def test_an_empty_api_key_is_refused(tiny_run_dir, monkeypatch, capsys):
    """`--api-key "$KEY"` with KEY unset served everyone without a key, saying nothing; a key with a space at its end
    could never be sent (HTTP drops it). Each is refused before the model loads, exit 2; an empty $TUNELAB_API_KEY is
    no key."""
    import tunelab.server.serve as serve_module

    def open_run_stub(run_dir, *args):
        raise TunelabError("stub: opened")

    monkeypatch.setattr(serve_module, "opened", open_run_stub)
    for key, says in [("", "is empty"), ("  ", "is empty"), ("key ", "ends with whitespace")]:
        assert main(["serve", str(tiny_run_dir), "--port", "0", "--api-key", key]) == 2
        err = capsys.readouterr().err
        assert f"option '--api-key' {says}" in err and "stub" not in err, err
    with pytest.raises(TunelabError, match="is empty"):
        start_server(tiny_run_dir, api_key="")
    monkeypatch.setenv("TUNELAB_API_KEY", "")
    assert main(["serve", str(tiny_run_dir), "--port", "0"]) == 2
    assert "stub: opened" in capsys.readouterr().err


def test_an_empty_host_is_refused_not_read_as_every_interface(tiny_run_dir, monkeypatch, capsys):
    """`--host "$HOST"` with HOST unset listened on every network interface (the system's reading of an empty
    address), serving the run to the network unasked. An empty or blank host is refused before the model loads."""
    import tunelab.server.serve as serve_module

    def open_run_stub(run_dir, *args):
        raise TunelabError("stub: opened")

    monkeypatch.setattr(serve_module, "opened", open_run_stub)
    for host, says in [("", "is empty"), (" ", "is blank")]:
        assert main(["serve", str(tiny_run_dir), "--port", "0", "--host", host]) == 2
        err = capsys.readouterr().err
        assert f"option '--host' {says}, which would listen on every network interface" in err and "stub" not in err
    with pytest.raises(TunelabError, match="argument 'host' is empty"):
        start_server(tiny_run_dir, host="")
    assert main(["serve", str(tiny_run_dir), "--port", "0", "--host", "127.0.0.1"]) == 2
    assert "stub: opened" in capsys.readouterr().err


def test_an_empty_model_name_is_refused_not_replaced_by_the_directory_name(tiny_run_dir, monkeypatch, capsys):
    """`--model-name "$NAME"` with NAME unset served the run as its directory's name, without a word, and clients
    asking for the intended name got 404. An empty or blank name is refused before the model loads, exit 2."""
    import tunelab.server.serve as serve_module

    def open_run_stub(run_dir, *args):
        raise TunelabError("stub: opened")

    monkeypatch.setattr(serve_module, "opened", open_run_stub)
    for name, says in [("", "is empty"), ("  ", "is blank")]:
        assert main(["serve", str(tiny_run_dir), "--port", "0", "--model-name", name]) == 2
        err = capsys.readouterr().err
        assert f"option '--model-name' {says}" in err and "stub" not in err, err
    with pytest.raises(TunelabError, match="argument 'model_name' is empty"):
        start_server(tiny_run_dir, model_name="")
    assert main(["serve", str(tiny_run_dir), "--port", "0", "--model-name", "faq"]) == 2
    assert "stub: opened" in capsys.readouterr().err


def test_serve_from_python_requires_the_key_of_the_environment_as_the_cli_does(tiny_run_dir, monkeypatch):
    """`tunelab serve RUN` with $TUNELAB_API_KEY set requires that key; tunelab.serve(RUN) served everyone."""
    import tunelab
    import tunelab.server.serve as serve_module

    seen = []

    def stop(run, api_key, *args):
        seen.append(api_key)
        raise KeyboardInterrupt  # before a model is loaded or a request served

    monkeypatch.setattr(serve_module, "build_app", stop)
    monkeypatch.setenv("TUNELAB_API_KEY", "from-the-environment")
    for key in (None, "given"):
        with pytest.raises(KeyboardInterrupt):
            tunelab.serve(tiny_run_dir, port=0, api_key=key)
    monkeypatch.setenv("TUNELAB_API_KEY", "")
    with pytest.raises(KeyboardInterrupt):
        tunelab.serve(tiny_run_dir, port=0)
    assert seen == ["from-the-environment", "given", None]


def test_a_python_caller_is_told_its_arguments_not_the_flags(tiny_run_dir, monkeypatch):
    """tunelab.serve(run, api_key="", ...) was refused as "option '--api-key' is empty", and a port in use was to be
    changed "with --port", and device="gpu" was "option '--device'": flags a Python caller never typed. Each refusal
    now names the argument it passed (the command line's still names its flags), the device before the port is
    bound."""
    import tunelab
    import tunelab.server.serve as serve_module

    def open_run_stub(run_dir, *args):
        raise TunelabError("stub: opened")

    monkeypatch.setattr(serve_module, "opened", open_run_stub)
    for arguments, says in [
        ({"api_key": ""}, "argument 'api_key' is empty, which would serve anyone without a key; give the key, or "
         "leave the argument out"),
        ({"api_key": "key "}, "argument 'api_key' ends with whitespace"),
        ({"model_name": " "}, "argument 'model_name' is blank (an unset variable in it?)"),
        ({"host": ""}, "argument 'host' is empty"),
        ({"allowed_origins": ["localhost:3000"]}, "argument 'allowed_origins' has 'localhost:3000'"),
        ({"device": "gpu"}, "argument 'device' is 'gpu'; allowed values: auto, cpu, cuda"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError) as caught:
            tunelab.serve(tiny_run_dir, port=0, **arguments)
        assert says in str(caught.value) and "--" not in str(caught.value), str(caught.value)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as caught:
            tunelab.serve(tiny_run_dir, port=port)
    assert f"argument 'port': port {port} on 127.0.0.1 is in use by another program; choose another with port=." in (
        str(caught.value)
    )


def test_a_head_run_is_refused_naming_the_commands_to_type(tiny_run_dir, tmp_path, capsys):
    """`tunelab serve` of a classify run told its user to 'Use tunelab.predict() or tunelab.evaluate()', the Python
    functions, where generate, merge and export name the commands to type; serve names them too, and Python's
    serve() the functions."""
    import shutil

    import tunelab

    run = tmp_path / "head-run"
    shutil.copytree(tiny_run_dir, run)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info | {"task": "classify"}))
    assert main(["serve", str(run), "--port", "0", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "Use 'tunelab predict' or 'tunelab eval' with it" in err and "tunelab.predict()" not in err
    with pytest.raises(TunelabError, match=r"Use tunelab\.predict\(\) or tunelab\.evaluate\(\) with it"):
        tunelab.serve(run, port=0, device="cpu")
