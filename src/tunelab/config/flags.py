"""The command line's argument list before argparse reads it: a negative number joined to its flag, and an option of
one value given twice refused (argparse keeps the last one without a word: `eval --data a.jsonl --data b.jsonl`
scored b alone)."""

from __future__ import annotations

import argparse

from tunelab.config.model import DEVICE_NAMES, is_device
from tunelab.errors import ConfigError


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def join_negative_values(argv: list[str]) -> list[str]:
    """`--opt -1e-4` -> `--opt=-1e-4`: argparse takes a value starting with '-' for a flag unless it is joined."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        if arg.startswith("--") and "=" not in arg and nxt.startswith("-") and _is_number(nxt):
            out.append(f"{arg}={nxt}")
            i += 2
        else:
            out.append(arg)
            i += 1
    return out


def device(text: str) -> str:
    """An argparse type: the --device of a command that opens a run, as the API's `device` takes it (argparse reports
    anything else, exit 2)."""
    if not is_device(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; allowed values: {DEVICE_NAMES}")
    return text


def _single_value_options(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each long option string of `parser` that takes one value, mapped to the option's first spelling."""
    options = {}
    for action in parser._actions:
        if type(action) is argparse._StoreAction and action.nargs in (None, "?"):  # "?": a BOOL config flag
            for flag in action.option_strings:
                if flag.startswith("--"):
                    options[flag] = action.option_strings[0]
    return options


def refuse_repeated(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """ConfigError when a subcommand is given an option of one value more than once (any of its spellings, `--opt=v`
    and unique abbreviations counted): `train --data.train a.jsonl --data.train b.jsonl` trained on b alone.
    Repeatable options (append) and switches are not counted."""
    if not argv:
        return
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices.get(argv[0])
    if sub is None:
        return
    options = _single_value_options(sub)
    every = [a for action in sub._actions for a in action.option_strings if a.startswith("--")]
    seen: dict[str, int] = {}
    for arg in argv[1:]:
        if arg == "--":
            break
        name = arg.split("=", 1)[0]
        if not name.startswith("--"):
            continue
        matches = [name] if name in every else [flag for flag in every if flag.startswith(name)]
        if len(matches) != 1 or matches[0] not in options:
            continue
        option = options[matches[0]]
        seen[option] = seen.get(option, 0) + 1
        if seen[option] == 2:
            raise ConfigError(
                f"option '{option}' is given more than once; it takes one value, and only the last would be used. Give "
                "it once"
                + (
                    " (several files: put them in one folder and give the folder)."
                    if option in ("--data", "--questions")
                    else "."
                )
            )
