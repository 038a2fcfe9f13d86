"""Whether Flower is installed: the federated extra is optional, and its absence is a user's fixable problem. And
Flower's log lines that speak to a Flower user, not to one of tunelab federate (`without_flower_lines`,
`flower_warnings_only`)."""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from tunelab.errors import ConfigError


def require_flower(simulation: bool = True) -> None:
    """Flower, and Ray for its simulation engine (the deployment engine needs no Ray)."""
    missing = [name for name in ("flwr", "ray")[: 2 if simulation else 1] if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"tunelab federate needs Flower with its simulation engine ({' and '.join(missing)} not installed): "
            "pip install 'tunelab[federated]'."
        )


class _Drop(logging.Filter):
    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().lstrip().startswith(self.starts)


@contextmanager
def without_flower_lines(*starts: str) -> Iterator[None]:
    """Flower's log records (logger "flwr") that begin with one of `starts` are dropped within the block: warnings
    about choices tunelab made for the user (the server evaluates itself, so fraction_evaluate is 0; it runs the
    simulation through run_simulation), which read as problems and which a user of tunelab federate cannot act on."""
    logger = logging.getLogger("flwr")
    drop = _Drop(starts)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def without_flower_lines_in_this_process(*starts: str) -> None:
    """As `without_flower_lines`, for the rest of this process: for a Ray worker of the simulation, which runs the
    ClientApp and whose Flower lines reach the terminal through Ray, where no block encloses them. Once per process."""
    logger = logging.getLogger("flwr")
    if not any(isinstance(f, _Drop) and f.starts == starts for f in logger.filters):
        logger.addFilter(_Drop(starts))


def flower_verbose() -> bool:
    """Whether the user asked for Flower's own lines, through Flower's own switch: FLWR_LOG_LEVEL, which Flower reads
    when it is imported and applies to its console handler."""
    return bool(os.environ.get("FLWR_LOG_LEVEL", "").strip())


@contextmanager
def flower_warnings_only() -> Iterator[None]:
    """Flower's console lines at WARNING and above within the block, unless FLWR_LOG_LEVEL asks otherwise. Flower
    logs each round at INFO (about eight lines: sampling, aggregation, the averaged metrics) and a block of every
    round's averaged metrics at the end, beside the one line a round tunelab prints with the same numbers."""
    handlers = [h for h in logging.getLogger("flwr").handlers if isinstance(h, logging.StreamHandler)]
    if flower_verbose():
        handlers = []
    levels = [h.level for h in handlers]
    for handler in handlers:
        handler.setLevel(max(handler.level, logging.WARNING))
    try:
        yield
    finally:
        for handler, level in zip(handlers, levels, strict=True):
            handler.setLevel(level)


def require_accountant() -> None:
    """federated.dp reports its epsilon through Flower's RDP accountant, which needs Google's dp-accounting."""
    if importlib.util.find_spec("dp_accounting") is None:
        raise ConfigError(
            "option 'federated.dp' reports the epsilon spent with Flower's privacy accountant, which needs the "
            "dp-accounting package: pip install 'tunelab[federated]'."
        )
