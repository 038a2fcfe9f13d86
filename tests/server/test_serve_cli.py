"""`tunelab serve` from the command line: what it prints before serving."""

import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed: pip install 'tunelab[serve]'")
pytest.importorskip("uvicorn", reason="the 'serve' extra is not installed: pip install 'tunelab[serve]'")

from tunelab.cli import main  # noqa: E402


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
        with pytest.raises(ConfigError, match=rf"option '--port' is {port}; allowed: 0 to 65535"):
            tunelab.serve(tiny_run_dir, port=port)
        with pytest.raises(ConfigError, match=rf"option '--port' is {port}"):
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
