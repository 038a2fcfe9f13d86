"""The Python API's argument checks: an argument whose type its annotation does not allow is refused by name, before
any work (`tunelab.api` wraps its functions in `checked`); and the value checks several API functions share (a count's
lowest value, texts that can be tokenized, batch_size beside settings, flags that contradict each other), which name
an argument as the caller gave it (a Python argument or the CLI's option)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from collections.abc import Callable, Mapping

from tunelab.config import ResolvedConfig, RunConfig
from tunelab.config.flags import PYTHON, Spelling
from tunelab.errors import ConfigError, article, not_text
from tunelab.infer.generate import GenerationSettings
from tunelab.infer.run import LoadedRun
from tunelab.tasks.head_run import HeadRun


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
    "HeadRun": (HeadRun,),
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
                read = " and read every data file under it" if name in ("data", "questions") else ""
                raise ConfigError(
                    f"{function.__name__}(): argument '{name}' is an empty path (an unset shell variable?), which "
                    f"would name the current folder{read}; give the file or folder."
                )
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
                raise ConfigError(
                    f"{function.__name__}(): argument '{name}' must be {annotation}, got {a(value)} ({shown})."
                )
        return function(*args, **kwargs)

    return checked


def at_least(value: int, name: str, low: int, spelling: Spelling = PYTHON) -> None:
    """ConfigError for a count below `low`, as the CLI refuses it (-1 examples previewed all but one); named as the
    caller gave it: argument 'nproc', or option '--nproc' from the command line."""
    if value < low:
        raise ConfigError(f"{spelling.option(name)} is {value}; give a whole number, {low} or more.")


def refuse_overwrite_unsaved(save: bool, overwrite: bool, what: str, spelling: Spelling) -> None:
    """ConfigError for --overwrite with --no-save: nothing is written, so nothing is replaced, and the command did
    one and dropped the other without a word."""
    if overwrite and not save:
        unsaved, given = ("--no-save", "--overwrite") if spelling.flags else ("save=False", "overwrite=True")
        raise ConfigError(f"{unsaved} writes no {what}, so {given} has nothing to replace; give one of them.")


def shown_answers(show: bool, show_answers: bool) -> None:
    """show_answers prints the answers after the printed scores; without show nothing is printed, without a word."""
    if show_answers and not show:
        raise ConfigError(
            "argument 'show_answers' prints the answers after the scores, and show=False prints nothing; pass "
            "show=True too (the answers are in the result's rows either way)."
        )


def checked_texts(value, name: str, blank: bool = True, flag: str | None = None) -> list[str]:
    """A list-of-texts argument as a list: one text given alone is a list of one (iterating it would ask each of its
    characters). Each must be a str that can be tokenized (errors.not_text), and not blank unless `blank`. `flag`:
    the CLI's name for the argument where it is not --name (texts is --text), said beside it."""
    if value is None:
        return []
    named = f"argument '{name}'" + (f" ({flag})" if flag else "")
    if not isinstance(value, str | list | tuple):
        raise ConfigError(f"{named} must be a text or a list of texts, got {a(value)}.")
    texts = [value] if isinstance(value, str) else list(value)
    for i, text in enumerate(texts, 1):
        which = named if isinstance(value, str) else f"{named}, item {i},"
        if not isinstance(text, str):
            raise ConfigError(f"{which} must be a text, got {a(text)} ({str(text)[:40]!r}).")
        if problem := not_text(text):
            raise ConfigError(f"{which}: {problem}.")
        if not blank and not text.strip():
            raise ConfigError(f"{which} is empty; give the text itself.")
    return texts


def checked_text(value: str, name: str, blank: bool = True, flag: str | None = None) -> str:
    """A text argument (its type checked by `checked`), checked as `checked_texts` checks each item."""
    return checked_texts(value, name, blank, flag)[0]


def with_batch_size(settings: GenerationSettings | None, batch_size: int | None) -> GenerationSettings | None:
    """`settings` with the `batch_size` argument in them; ConfigError when both name one and they differ."""
    if batch_size is None:
        return settings
    at_least(batch_size, "batch_size", 1)
    if settings is not None and settings.batch_size not in (batch_size, GenerationSettings.batch_size):
        raise ConfigError(
            f"argument 'batch_size' is {batch_size} and settings.batch_size is {settings.batch_size}; give one of them."
        )
    return dataclasses.replace(settings or GenerationSettings(), batch_size=batch_size)
