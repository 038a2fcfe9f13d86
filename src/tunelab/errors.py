"""Errors a user can cause. The CLI prints them as one paragraph, without a traceback, and exits with `exit_code`
(2 unless a subclass says otherwise)."""


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


class TrainingStopped(TunelabError):
    """Training stopped because it could only produce garbage (NaN/inf losses or gradients): exit code 3."""

    exit_code = 3


class Interrupted(TunelabError):
    """The user interrupted training (Ctrl-C); the message says where a checkpoint is and how to resume."""

    exit_code = 130

    def __init__(self, message: str, step: int, checkpoint: str | None):
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint
