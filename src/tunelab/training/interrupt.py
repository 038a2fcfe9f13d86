"""Ctrl-C (or SIGTERM) during training: finish the step under way, write a checkpoint, and stop with the way to
resume.

While `graceful_interrupt()` is active, the first SIGINT or SIGTERM only sets `requested`; the loop sees it between
steps, so the checkpoint it writes is of a completed step (weights and optimizer state consistent). SIGTERM is what
`kill`, `docker stop`, systemd and a batch scheduler's preemption send, most of them with a grace period before
SIGKILL: it used to end the process at once, losing every step since the last checkpoint. A second signal stops at
once, as usual. The run then exits as a shell reports a process the signal ended: 130 after SIGINT, 143 (128 + 15)
after SIGTERM, so a scheduler can tell a preemption from a Ctrl-C. Outside the main thread (where signal handlers
cannot be set) it does nothing.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tunelab.errors import Terminated


@dataclass
class StopRequest:
    requested: bool = False
    signum: int = signal.SIGINT  # the signal that asked: the run's exit code is 128 + it


STEP = "stopping after the current step and writing a checkpoint"


@contextmanager
def graceful_interrupt(doing: str = STEP) -> Iterator[StopRequest]:
    """`doing`: what the first Ctrl-C lets finish, as the message to it says."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum, frame):
        if request.requested:
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        request.requested, request.signum = True, signum
        name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        print(f"\ninterrupt ({name}): {doing} ({name} again stops at once)", file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM raises `Terminated` (exit 143) instead of ending the process where it stands, so that the `except` and
    `finally` around the work run: outdir.failure_noted says where a run an --overwrite moved aside waits, also when
    the signal comes while the model loads or the first evaluation runs, before `graceful_interrupt` (which takes
    SIGTERM over while it is active) starts. Outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
