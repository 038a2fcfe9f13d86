"""transformers' own progress bars ("Loading weights", "Writing model shards", the GGUF conversion's) turned off while
tunelab loads or saves a model through it: tunelab prints its own progress, and the Python API should read as the
CLI does. The setting is transformers' process-wide one, so it is put back as it was on leaving: a program that uses
transformers beside tunelab keeps its bars."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_progress() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    if not hf_logging.is_progress_bar_enabled():  # already off (the CLI turns them off for the whole command)
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()
