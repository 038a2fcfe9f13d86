"""The command line's arguments around argparse: a negative number joined to its flag, an option of
one value given twice refused (argparse keeps the last one without a word: `eval --data a.jsonl --data b.jsonl`
scored b alone); the argparse types of the commands' plain options (device, whole, finite, positive); and
generate's prompt read from either of its places (`one_prompt`); and how a message names a run's own arguments to
the one who gave them, as flags or as Python (`Spelling`)."""

from __future__ import annotations

import argparse
import math
import shlex
from dataclasses import dataclass

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


def path(text: str) -> str:
    """An argparse type: a file or folder argument, refused when empty (`--out "$OUT"` with $OUT unset), which would
    name the current folder; argparse names the argument as typed (--out, run_dir) and exits 2."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"{text!r} is an empty path (an unset shell variable?), which would name the current folder; give the "
            "file or folder"
        )
    return text


path.__name__ = "path"


def whole(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high]; argparse reports anything else (exit 2)."""

    def parse(text: str) -> int:
        value = int(text)  # ValueError: argparse says "invalid integer value"
        if value < low or (high is not None and value > high):
            allowed = f"from {low} to {high}" if high is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"{value} is out of range; give an integer {allowed}")
        return value

    parse.__name__ = "integer"
    return parse


def finite(text: str) -> float:
    """An argparse type: a finite number (nan passes every range check downstream)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


finite.__name__ = "number"


def positive(text: str) -> float:
    """An argparse type: a finite number above 0."""
    value = finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is out of range; give a number above 0")
    return value


positive.__name__ = "number"


def keep_double_dash(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """`--gpu-memory=--` gives the option the text '--', checked like any other value: argparse drops a '--' value as
    if it ended the options, and the option got an empty list, reported as "must be str | None, got a list"."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices.get(
        getattr(args, "command", None)
    )

    def dashes(action: argparse.Action):
        try:
            value = sub._get_value(action, "--")  # its type refuses it as argparse would
            if action.choices is not None:
                sub._check_value(action, value)
        except argparse.ArgumentError as exc:
            sub.error(str(exc))  # argparse's message and exit code 2
        return value

    for action in sub._actions if sub is not None else ():
        value = getattr(args, action.dest, None)
        if not action.option_strings or not isinstance(value, list):
            continue
        if type(action) is argparse._StoreAction and value == []:
            setattr(args, action.dest, dashes(action))
        elif type(action) is argparse._AppendAction:
            setattr(args, action.dest, [dashes(action) if v == [] else v for v in value])


def one_prompt(positional: str | None, flag: str | None, run: str) -> str:
    """`tunelab generate`'s prompt, given after the run (`generate RUN "Hi"`) or as --prompt: exactly one of them;
    none is told with the command that gives one to `run`."""
    if positional is not None and flag is not None:
        raise ConfigError(
            f"tunelab generate takes one prompt; it got {positional!r} and --prompt {flag!r}. Give one of them."
        )
    if positional is None and flag is None:
        raise ConfigError(
            f'tunelab generate needs a prompt: tunelab generate {shlex.quote(run)} "your prompt" (or --prompt "...").'
        )
    return flag if positional is None else positional


@dataclass(frozen=True)
class Spelling:
    """How a caller names a run's arguments that are no options, in the messages it gets: the CLI by its flags
    (--resume, --overwrite), a Python caller as it wrote them (train(..., resume=True), overrides['overwrite'])."""

    flags: bool = True

    @property
    def resume(self) -> str:
        return "--resume" if self.flags else "resume=True"

    @property
    def overwrite(self) -> str:
        return "--overwrite" if self.flags else "overrides['overwrite'] = True"

    @property
    def rerun(self) -> str:
        """How a stopped training run is continued: the same command with --resume, or the same call with resume."""
        return "the same command and --resume" if self.flags else "the same train(...) call and resume=True"

    def option(self, name: str) -> str:
        """A command's option named as its caller gave it: option '--api-key', or argument 'api_key' in Python."""
        return f"option '--{name.replace('_', '-')}'" if self.flags else f"argument '{name}'"

    def given(self, name: str) -> str:
        """How the caller gives that option: --api-key, or api_key= in Python."""
        return f"--{name.replace('_', '-')}" if self.flags else f"{name}="

    def merge_then_push(self, run: str, repo: str) -> str:
        """The commands (or the API's calls) that merge run `run` into a model folder beside it, RUN-merged, and push
        that folder to the hub repository `repo`: how a result that is no adapter to push alone is shared."""
        out = f"{str(run).rstrip('/')}-merged"
        if self.flags:
            merge, push = ["tunelab", "merge", str(run), "--out", out], ["tunelab", "push", out, "--repo", repo]
            return f"{shlex.join(merge)}, then {shlex.join(push)}"
        return f"tunelab.merge({str(run)!r}, {out!r}), then tunelab.push({out!r}, {repo!r})"


CLI, PYTHON = Spelling(flags=True), Spelling(flags=False)
