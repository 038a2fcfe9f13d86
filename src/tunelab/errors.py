"""Errors a user can cause. The CLI prints them as one paragraph, without a traceback, and exits with `exit_code`
(2 unless a subclass says otherwise)."""

import os
import signal
import sys


class TunelabError(Exception):
    """A problem with the user's input: the message says what, where (file, line, field or option) and how to fix it."""

    exit_code = 2


class ConfigError(TunelabError):
    """An option is unknown, has the wrong type or is out of range."""


class DataError(TunelabError):
    """A data file is missing or a row cannot be used."""


class ModelError(TunelabError):
    """A model cannot be found or loaded."""


class RunDirError(TunelabError):
    """A run directory is missing, incomplete, or would be overwritten."""


class WriteFailed(TunelabError):
    """A file or folder could not be written (a full disk, a read-only file or filesystem); what it replaced is kept."""


class CheckFailed(TunelabError):
    """`tunelab train`'s checks before training found a problem; `tunelab check` shows the details."""


class HubRequestFailed(TunelabError):
    """A request to the Hugging Face Hub failed (refused, not found, no network): exit code 1, since the input was
    checked and may be right; the message names the repository and what the hub answered."""

    exit_code = 1


class PushFailed(TunelabError):
    """Training finished and its run is saved, but pushing it to the hub (train.push_to) failed: exit code 1; the
    message says what failed and, where pushing again can work, the command that does."""

    exit_code = 1


class TrainingStopped(TunelabError):
    """Training stopped because it could only produce garbage (NaN/inf losses or gradients), or a federation ended
    with no round's update applied (its adapter the untrained one): exit code 3."""

    exit_code = 3


class Interrupted(TunelabError):
    """The user interrupted training (Ctrl-C, or SIGTERM from kill or a scheduler); the message says where a
    checkpoint is and how to resume. The exit code is 128 + the signal's number, as a shell reports a process that
    signal ended: 130 for SIGINT, 143 for SIGTERM."""

    exit_code = 128 + signal.SIGINT

    def __init__(
        self,
        message: str,
        step: int,
        checkpoint: str | None,
        signum: int = signal.SIGINT,
        at: str | None = None,
        resumable: bool = True,
    ):
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint
        self.exit_code = 128 + signum
        self.at = at or f"step {step}"  # where it stopped, in words: a staged run's names the stage
        self.resumable = resumable  # False: --resume has nothing to go on from, and the message says what to do


class Terminated(KeyboardInterrupt):
    """A second SIGTERM while training stops: stop at once, with exit code 143 (a second Ctrl-C's is 130)."""

    exit_code = 128 + signal.SIGTERM


def not_text(text: str) -> str | None:
    """Why `text` cannot be tokenized, or None when it can: a lone UTF-16 surrogate, which UTF-8 cannot encode. It
    comes from an unpaired escape in JSON or YAML ("\\ud800"), or from a byte that is not UTF-8 in a command-line
    argument or a terminal's line, which Python keeps as one of U+DC80..U+DCFF."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        source = f"an unpaired \\u{code:04x} escape in JSON or YAML"
        if 0xDC80 <= code <= 0xDCFF:
            source += f", or the byte 0x{code - 0xDC00:02x} of text that is not UTF-8"
        return f"character {exc.start + 1} is U+{code:04X}, a lone UTF-16 surrogate, which is not text ({source})"
    return None


# Initialisms read letter by letter that begin with a vowel sound ("an S-F-T run"), and words that begin with a vowel
# letter but not a vowel sound ("a user message").
_SPELLED = {"sft", "hf", "lm", "mlp", "rl", "nf4", "llm"}
_CONSONANT_SOUND = ("user", "use", "uni", "one")


def article(word: object) -> str:
    """`word` with its indefinite article, for messages: 'an sft run', 'a dpo run', 'an int', 'a user message'."""
    text = str(word)
    low = text.lower()
    vowel = low[:1] in tuple("aeiou") and not low.startswith(_CONSONANT_SOUND)
    return f"{'an' if vowel or low in _SPELLED else 'a'} {text}"


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`n` and its noun for messages, singular at 1: '1 row', '8 rows', counted(1, 'entry', 'entries')."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def stdout_closed() -> int:
    """What a command does when its reader closed stdout early (`tunelab plan CONFIG | head -3`), as Python's docs
    advise ("Note on SIGPIPE"): stdout goes to os.devnull, so that the interpreter's last flush fails no more, and no
    traceback. Its exit code, 141, is 128 + SIGPIPE: what a shell reports of a process that SIGPIPE ended (Python
    ignores the signal, so the write raised BrokenPipeError instead)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 128 + 13
