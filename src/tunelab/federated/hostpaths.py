"""The server's paths that every client reads: what each SuperNode host must hold at the same path.

The recipe the server sends (payload.recipe_text) drops the server's data, but names the base model and a
data.transform's file.py as the server's config does: every client must train over the same base (its untrained
rows repaired alike, its adapter keys and shapes the same), so the model is not a client's own choice. In the
simulation engine every client runs on the server's host; on the deployment engine each SuperNode host needs them at
those paths. `tunelab federate --app-dir` lists them, and a client without one says so before it loads anything.
"""

from __future__ import annotations

from pathlib import Path

from tunelab.config import RunConfig
from tunelab.data.transform import load_transform
from tunelab.errors import ConfigError
from tunelab.models.load import EMBEDDED


def local_model(name: str) -> bool:
    """Does model.name name a file or folder (not a hub id or the embedded alias)?"""
    if name in EMBEDDED:
        return False
    path = Path(name).expanduser()
    return path.exists() or path.is_absolute() or path.suffix.lower() == ".gguf" or name.startswith((".", "~"))


def server_paths(config: RunConfig) -> list[tuple[str, str]]:
    """(option, path) of each file or folder a client reads at the path the server's config gives: model.name when
    it is local, a data.transform's file.py."""
    paths = []
    if local_model(config.model.name):
        paths.append(("model.name", config.model.name))
    transform = config.data.transform
    if transform and (file := transform.rpartition(":")[0]).endswith(".py"):
        paths.append(("data.transform", file))
    return paths


def absolute_model(config: RunConfig) -> None:
    """model.name made absolute where it names a local file or folder (as output_dir is): the ServerApp and the
    ClientApps of the deployment engine, and Ray's workers, do not run in the folder tunelab federate ran in."""
    if local_model(config.model.name) and Path(config.model.name).expanduser().exists():
        config.model.name = str(Path(config.model.name).expanduser().resolve())


def app_note(config: RunConfig) -> str:
    """What a deployment's client hosts need besides their own data."""
    paths = server_paths(config)
    if not paths:
        return ""
    listed = "; ".join(f"{option}: {path}" for option, path in paths)
    return (
        f"every SuperNode host reads these at the server's paths, so each needs them there: {listed} (every client "
        "trains over the same base model)"
    )


def check_on_this_host(config: RunConfig, client: str) -> None:
    """ConfigError, before a client loads anything, when this host lacks a path of `server_paths`, or a data.transform
    the server names by an installed module's name (that module must be installed on every client host). `client`:
    how messages name it (`ClientData.label`)."""
    for option, path in server_paths(config):
        if not Path(path).expanduser().exists():
            raise ConfigError(
                f"{client}: {option} is {path} on the server, which this host does not have. Every client "
                "reads it at the server's path (every client trains over the same base): copy it to that path on "
                "this host."
            )
    transform = config.data.transform
    if transform and not transform.rpartition(":")[0].endswith(".py"):
        load_transform(transform, f"{client}: option 'data.transform' (the server's, {transform})")
