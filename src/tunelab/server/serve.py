"""Start the OpenAI-compatible server for a run: the port is bound first (a port in use is an error before a
minute of model loading), then the run is loaded once, then uvicorn serves on the bound socket.

`serve` blocks until Ctrl-C (the CLI); `start_server` runs the same server on a background thread and returns a
handle with its URL (tests and notebooks).
"""

from __future__ import annotations

import errno
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tunelab.config.flags import PYTHON, Spelling
from tunelab.errors import ConfigError, TunelabError
from tunelab.infer.generate import GenerationSettings, say, say_config_notice
from tunelab.infer.run import LoadedRun, check_base_precision, opened
from tunelab.models.load import pick_device

INSTALL = "pip install 'tunelab[serve]'   (FastAPI and uvicorn)"


def _check_installed() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise TunelabError(f"tunelab serve needs FastAPI and uvicorn ({exc}). Install them with: {INSTALL}") from None


def bind(host: str, port: int, spelling: Spelling = PYTHON) -> socket.socket:
    """A listening-ready socket on (host, port); ConfigError naming the option (as `spelling` names it: the CLI's
    flag, or the Python argument) when the port is taken, or for an empty host (`--host "$HOST"` with HOST unset),
    which the system reads as every interface: the run was served to the network unasked."""
    if not host.strip():
        raise ConfigError(
            f"{spelling.option('host')} is {'empty' if not host else 'blank'}, which would listen on every network "
            "interface; give the address: 127.0.0.1 (this machine, the default) or 0.0.0.0 (every interface, on "
            "purpose)."
        )
    if not 0 <= port <= 65535:  # socket.bind would raise an OverflowError
        raise ConfigError(
            f"{spelling.option('port')} is {port}; allowed: 0 to 65535 (0: a free port the system chooses)."
        )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart may reuse TIME_WAIT
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"{spelling.option('port')}: port {port} on {host} is in use by another program; choose another with "
                f"{spelling.given('port')}."
            ) from None
        raise ConfigError(
            f"{spelling.option('host')}, {spelling.option('port')}: cannot listen on {host}:{port} ({exc.strerror})."
        ) from None
    sock.set_inheritable(True)
    return sock


def check_api_key(api_key: str | None, spelling: Spelling = PYTHON) -> None:
    """ConfigError for a key no client could send: an empty one (`--api-key "$KEY"` with KEY unset) would serve
    everyone unasked, one with spaces at its ends could never match, HTTP dropping them from the header, nor one
    with a character outside printable ASCII (an accent, a tab, a line break)."""
    if api_key is None:
        return
    name = spelling.option("api_key")
    if not api_key.strip():
        raise ConfigError(
            f"{name} is empty, which would serve anyone without a key; give the key, or leave the "
            f"{'option' if spelling.flags else 'argument'} out to serve without one."
        )
    if api_key != api_key.strip():
        raise ConfigError(
            f"{name} {'begins' if api_key[0].isspace() else 'ends'} with whitespace, which HTTP drops from the "
            "Authorization header, so no client could send it; remove the whitespace."
        )
    odd = next((c for c in api_key if not " " <= c <= "~"), None)
    if odd is not None:
        raise ConfigError(
            f"{name} holds the character {odd!r}, which an HTTP header cannot carry as written, so no client could "
            "send the key; use printable ASCII characters only."
        )


_ORIGIN = re.compile(r"https?://[^/\s:]+(:\d{1,5})?")


def check_origins(origins: list[str] | None, spelling: Spelling = PYTHON) -> None:
    """ConfigError for an --allowed-origins entry a browser never sends: an origin is "*" (any) or a scheme, a host
    and an optional port, with no path ("http://localhost:3000", not "localhost:3000" nor ".../chat/")."""
    for origin in origins or ():
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise ConfigError(
                f"{spelling.option('allowed_origins')} has {origin!r}, which is no origin a browser sends; give each as "
                "scheme://host[:port] without a path (http://localhost:3000), or * for any origin."
            )


def environment_key(api_key: str | None) -> str | None:
    """`api_key`, or when it is None $TUNELAB_API_KEY where set and not empty, as `tunelab serve` reads it."""
    return (os.environ.get("TUNELAB_API_KEY") or None) if api_key is None else api_key


def check_model_name(model_name: str | None, spelling: Spelling = PYTHON) -> None:
    """ConfigError for an empty model name (`--model-name "$NAME"` with NAME unset), which served the run under its
    directory's name instead, so that clients asking for the intended name got 404."""
    if model_name is not None and not model_name.strip():
        unset = '--model-name "$NAME"' if spelling.flags else "it"
        raise ConfigError(
            f"{spelling.option('model_name')} is {'empty' if not model_name else 'blank'} (an unset variable in "
            f"{unset}?); give the model id clients ask for, or leave it out to use the run directory's name."
        )


def check_device(device: str, spelling: Spelling = PYTHON) -> None:
    """ConfigError (or ModelError for a missing GPU) for a device the run cannot be served on, named as the caller
    gave it (option '--device', or argument 'device'), before the port is bound and the model loaded."""
    pick_device(device, spelling.option("device"))


def base_url(host: str, port: int) -> str:
    """The server's URL; an IPv6 address goes in brackets (http://[::1]:8000), as URLs write it."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run_name(run: str | Path) -> str:
    """The model id a run is served under without --model-name: its directory's name as given, so that a link
    (runs/latest -> runs/2026-12-04) serves "latest"; "." and ".." name the directories they stand for."""
    return Path(os.path.abspath(run)).name or Path(run).resolve().name


def check_arguments(
    run: str | Path | LoadedRun,
    api_key: str | None,
    model_name: str | None,
    device: str,
    base_precision: str,
    allowed_origins: list[str] | None,
    spelling: Spelling,
) -> None:
    """Every refusal of the server's own arguments, named as `spelling` says, before a port is bound or the model
    loaded (a refused value must leave no bound port, no half-started server)."""
    _check_installed()
    check_api_key(api_key, spelling)
    check_model_name(model_name, spelling)
    check_origins(allowed_origins, spelling)
    check_base_precision(base_precision)
    if isinstance(run, LoadedRun):
        opened(run, device, base_precision)  # a device or base_precision other than the run's: refused, not loaded
    else:
        check_device(device, spelling)


def build_app(
    run: str | Path | LoadedRun,
    api_key: str | None = None,
    model_name: str | None = None,
    settings: GenerationSettings | None = None,
    device: str = "auto",
    base_precision: str = "trained",
    allowed_origins: list[str] | None = None,
    spelling: Spelling = PYTHON,
):
    """The FastAPI application for a run (loaded here unless given loaded; `base_precision` as in open_run;
    `allowed_origins`: the web pages whose scripts may call it, see create_app; `spelling`: how errors name the
    options, the Python arguments unless the CLI's flags)."""
    check_arguments(run, api_key, model_name, device, base_precision, allowed_origins, spelling)
    from tunelab.server.app import create_app
    from tunelab.server.engine import Engine

    loaded = opened(run, device, base_precision, spelling)  # a head run's refusal names the commands to type
    say_config_notice(loaded.model)  # before serving: the same line chat, generate and compare print
    say(
        loaded.system_prompt_notice(
            'a request sends its own system message, or "default_system_prompt": false for none'
        )
    )
    if model_name:
        engine = Engine(loaded, model_name)
    else:  # a request may name the directory a link leads to as well
        engine = Engine(loaded, run_name(loaded.run_dir), {loaded.run_dir.resolve().name})
    return create_app(engine, api_key=api_key, defaults=settings, allowed_origins=allowed_origins, spelling=spelling)


def _server(app, log_level: str):
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))


def serve(
    run: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    model_name: str | None = None,
    settings: GenerationSettings | None = None,
    device: str = "auto",
    base_precision: str = "trained",
    allowed_origins: list[str] | None = None,
    *,
    spelling: Spelling = PYTHON,
) -> None:
    """Serve the run over HTTP in OpenAI's chat-completions dialect until interrupted (needs the 'serve' extra).
    Refuses a port in use before loading anything. `start_server` does the same on a background thread and returns
    its URL. `api_key` None: $TUNELAB_API_KEY when it is set and not empty, as `tunelab serve` reads it.
    `allowed_origins`: the origins of web pages whose scripts may call the server from a browser (CORS; "*" any).
    `spelling`: how errors name the options: these arguments (port=), or `tunelab serve`'s flags (--port)."""
    api_key = environment_key(api_key)
    check_arguments(run, api_key, model_name, device, base_precision, allowed_origins, spelling)
    sock = bind(host, port, spelling)
    name = model_name or run_name(run)
    try:
        app = build_app(run, api_key, model_name, settings, device, base_precision, allowed_origins, spelling)
        print(f"tunelab serve: {run} as model {name!r}{' (API key required)' if api_key else ''}")
        url = base_url(host, sock.getsockname()[1])  # --port 0: the port the system chose
        print(f"  OpenAI base URL: {url}/v1   (health: {url}/health)", flush=True)
        _server(app, "info").run(sockets=[sock])
    finally:
        sock.close()


@dataclass
class RunningServer:
    """A server on a background thread: `url` is its base URL (…/v1 for OpenAI clients); `stop()` ends it."""

    url: str
    server: object
    thread: threading.Thread
    sock: socket.socket

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def start_server(
    run: str | Path | LoadedRun,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
    model_name: str | None = None,
    settings: GenerationSettings | None = None,
    device: str = "auto",
    base_precision: str = "trained",
    allowed_origins: list[str] | None = None,
) -> RunningServer:
    """Serve on a background thread (port 0: a free one) and return once it accepts connections. `api_key` None:
    $TUNELAB_API_KEY when it is set and not empty, as `serve` reads it. Its arguments are checked before the port is
    bound."""
    api_key = environment_key(api_key)
    check_arguments(run, api_key, model_name, device, base_precision, allowed_origins, PYTHON)
    sock = bind(host, port)
    try:
        server = _server(
            build_app(run, api_key, model_name, settings, device, base_precision, allowed_origins), "warning"
        )
    except BaseException:
        sock.close()
        raise
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise TunelabError("tunelab serve: the server did not start (see the messages above).")
        time.sleep(0.02)
    return RunningServer(base_url(host, sock.getsockname()[1]), server, thread, sock)
