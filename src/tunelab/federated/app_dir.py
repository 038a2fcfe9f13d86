"""--app-dir: the Flower App folder for Flower's deployment engine. Its pyproject.toml names tunelab's ServerApp and
ClientApp (tunelab.federated.app) and carries the resolved config, read on the server host; Flower's own tools run it
(`flower-superlink`, one `flower-supernode --node-config "data='...'"` per client host, `flwr run APP_DIR`). The
server sends no data: each SuperNode trains on the files its node config names (`data_note` says so of the config's
client data)."""

from __future__ import annotations

from pathlib import Path

from tunelab.atomic import write_failed, write_text
from tunelab.config import ClientSource, FederatedConfig, ResolvedConfig, dump_yaml
from tunelab.config.flags import CLI, Spelling
from tunelab.errors import RunDirError, counted
from tunelab.federated.hostpaths import server_paths
from tunelab.rundir import is_run_dir

APP_NAME = "tunelab-federation"
APP_TOML = """\
# A Flower App for tunelab's federated fine-tuning. Run it with Flower's deployment engine (flwr >= 1.42):
#   flower-superlink --insecure --host 0.0.0.0 --port 8000          on the server host (writes the run directory)
#   flower-supernode --insecure --superlink SERVER_HOST:8000 --port 9094 --node-config "data='/path/to/data.jsonl' name='clinic-a'"
#                                                                    on each client host: its own data, named there
#   flwr run {app_dir} CONNECTION --stream                         CONNECTION: a [superlink.NAME] entry of
#                                                                    $FLWR_HOME/config.toml (address = "SERVER_HOST:8000")
# The server waits for federated.num_clients = {num_clients} SuperNodes, and writes {output_dir}.{needs}
# --insecure is for trying it out: real deployments use TLS (Flower's --ssl-* and --root-certificates options).
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{app_name}"
version = "1.0.0"
description = "tunelab federated fine-tuning: the ServerApp and ClientApp of tunelab.federated.app"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "tunelab"

[tool.flwr.app.components]
serverapp = "tunelab.federated.app:server_app"
clientapp = "tunelab.federated.app:client_app"

[tool.flwr.app.config]
{config_lines}
"""


def _app_dir_named(app_dir: Path, spelling: Spelling) -> str:
    """The app folder as the caller gave it: --app-dir DIR, or argument 'app_dir' (DIR) in Python."""
    return f"--app-dir {app_dir}" if spelling.flags else f"argument 'app_dir' ({app_dir})"


def _refuse_app_in_a_run(app_dir: Path, output_dir: Path, spelling: Spelling = CLI) -> None:
    """RunDirError when the app folder is, or lies inside, the run's output_dir or another run directory: the server
    then refused a folder that held the app, or (with --overwrite) moved it aside with the run and deleted it."""
    target = app_dir.resolve()
    holder = next((f for f in (target, *target.parents) if f == output_dir.resolve() or is_run_dir(f)), None)
    if holder is not None:
        raise RunDirError(
            f"{_app_dir_named(app_dir, spelling)}: is {'' if holder == target else 'inside '}the run directory "
            f"{holder}, which the federation writes and whose {spelling.overwrite} stops at files tunelab did not "
            "write there (refused, naming them); write the app to a folder of its own, outside it."
        )


def data_note(f: FederatedConfig) -> str:
    """What a deployment does with the config's client data: nothing. Each SuperNode trains on the files its own
    --node-config names; the server never sends data, so federated.clients only counts the SuperNodes, and
    federated.split_file is not dealt out among them (a SuperNode given that file trains on all of it)."""
    if f.clients:
        own = [k for k, entry in enumerate(f.clients, 1) if isinstance(entry, ClientSource)]
        options = (
            f"; nor the reading options of entr{'y' if len(own) == 1 else 'ies'} {', '.join(map(str, own))}: a "
            "SuperNode reads its files with data.* unless its --node-config gives its own format, fields "
            "('output=response,input=context') or delimiter, and is named by its name"
            if own
            else ""
        )
        return (
            f"federated.clients: the deployment reads none of its {counted(len(f.clients), 'entry', 'entries')} (it counts the "
            f"SuperNodes the server waits for): each SuperNode trains on the files its --node-config data names{options}"
        )
    if f.split_file:
        return (
            f"federated.split_file: the deployment does not split {f.split_file} among the SuperNodes (a SuperNode "
            "given it trains on all of it): each trains on the files its --node-config data names, its own share"
        )
    return ""


def write_flower_app(app_dir: str | Path, resolved: ResolvedConfig, resume: bool, overwrite: bool = False) -> Path:
    """A Flower App folder whose run config holds the resolved config (absolute paths, read on the server host)."""
    import tomli_w

    from tunelab.federated.server import RESUME_KEY, RUN_CONFIG_KEY

    app_dir = Path(app_dir)
    spelling = resolved.spelling
    _refuse_app_in_a_run(app_dir, Path(resolved.config.output_dir), spelling)
    toml = app_dir / "pyproject.toml"
    another = "--app-dir" if spelling.flags else "app_dir"
    if toml.exists() and not overwrite:
        raise RunDirError(f"{toml} exists. Pass {spelling.overwrite} to replace it, or choose another {another}.")
    if toml.is_file() and f'name = "{APP_NAME}"' not in toml.read_text(encoding="utf-8", errors="replace"):
        raise RunDirError(  # --overwrite replaces an app this wrote, never a project's own pyproject.toml
            f'{toml} is not a Flower App tunelab wrote (no name = "{APP_NAME}"), so {spelling.overwrite} will not '
            f"replace it. Choose another {another}, e.g. a new folder."
        )
    in_the_way = next((f for f in (app_dir, *app_dir.parents) if f.exists() and not f.is_dir()), None)
    if in_the_way is not None:
        raise RunDirError(
            f"{_app_dir_named(app_dir, spelling)}: {'is' if in_the_way == app_dir else 'lies under'} the file "
            f"{in_the_way}, not a folder; choose a folder name for the app (e.g. a new folder)."
        )
    try:
        app_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only filesystem, a folder without write permission
        raise write_failed(app_dir, exc) from None
    cfg = resolved.config
    config_lines = tomli_w.dumps({RUN_CONFIG_KEY: dump_yaml(cfg), RESUME_KEY: resume}, multiline_strings=True)
    write_text(  # whole or not at all: an --overwrite that fails keeps the app that was there
        toml,
        APP_TOML.format(
            app_name=APP_NAME,
            num_clients=cfg.federated.num_clients,
            app_dir=app_dir.resolve(),
            output_dir=Path(cfg.output_dir).resolve(),
            needs="".join(
                f"\n# Every SuperNode host reads {option} at the server's path: {path}"
                for option, path in server_paths(cfg)
            ),
            config_lines=config_lines,
        ),
    )
    return app_dir
