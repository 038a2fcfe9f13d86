"""Errors a user can cause. The CLI prints them as one paragraph, without a traceback, and exits with code 2."""


class TunelabError(Exception):
    """A problem with the user's input: the message says what, where (file, line, field or option) and how to fix it."""


class ConfigError(TunelabError):
    """An option is unknown, has the wrong type or is out of range."""


class DataError(TunelabError):
    """A data file is missing or a row cannot be used."""


class ModelError(TunelabError):
    """A model cannot be found or loaded."""


class RunDirError(TunelabError):
    """A run directory is missing, incomplete, or would be overwritten."""
