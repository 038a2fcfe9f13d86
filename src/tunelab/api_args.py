"""The Python API's argument checks: an argument whose type its annotation does not allow is refused by name, before
any work (`tunelab.api` wraps its functions in `checked`)."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Mapping

from tunelab.config import ResolvedConfig, RunConfig
from tunelab.errors import ConfigError, article
from tunelab.infer.generate import GenerationSettings
from tunelab.infer.run import LoadedRun


def a(value) -> str:
    """'a str', 'an int': the type of `value` with its article."""
    return article(type(value).__name__)


# The types an API argument's annotation names (read as text: `from __future__ import annotations`)
_KINDS: dict[str, tuple[type, ...]] = {
    "bool": (bool,),
    "str": (str,),
    "Path": (os.PathLike,),
    "None": (type(None),),
    "int": (int,),
    "LoadedRun": (LoadedRun,),
    "GenerationSettings": (GenerationSettings,),
    "RunConfig": (RunConfig,),
    "ResolvedConfig": (ResolvedConfig,),
    "dict": (Mapping,),
    "list": (list, tuple),
}


def checked(function: Callable) -> Callable:
    """Refuse an argument whose type its annotation does not allow, naming it, before any work: `resume="no"` (a
    truthy text) resumed a run, `merge(run, None)` failed deep inside with a bare TypeError. Generic annotations are
    checked by their outer type (list[str] -> a list or tuple); `bool` is no `int`. `config` and `overrides` have
    checks of their own that say more (`resolve`, `check_overrides`). A path given as an empty text is refused too:
    Path("") is the current folder."""
    signature = inspect.signature(function)
    allowed = {}
    for name, parameter in signature.parameters.items():
        if name in ("config", "overrides"):
            continue
        names = [part.strip().split("[")[0] for part in str(parameter.annotation).split("|")]
        if parameter.annotation is not inspect.Parameter.empty and all(n in _KINDS for n in names):
            allowed[name] = (str(parameter.annotation), tuple(t for n in names for t in _KINDS[n]))

    @functools.wraps(function)
    def checked(*args, **kwargs):
        for name, value in signature.bind(*args, **kwargs).arguments.items():
            if name not in allowed:
                continue
            annotation, types = allowed[name]
            if "Path" in annotation and isinstance(value, str) and not value.strip():  # Path("") is the current folder
                raise ConfigError(
                    f"{function.__name__}(): argument '{name}' is an empty path (an unset shell variable?), which "
                    "would name the current folder and read every data file under it; give the file or folder."
                )
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
                raise ConfigError(
                    f"{function.__name__}(): argument '{name}' must be {annotation}, got {a(value)} ({shown})."
                )
        return function(*args, **kwargs)

    return checked
