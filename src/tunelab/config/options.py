"""How an option is declared: `opt` makes a dataclass field that carries its help text, allowed values and range, and
`Auto` types an option that may be left for the run to choose.

The help text feeds `tunelab train --help` (cli.py), and the constraints are checked where a value is read
(config/values.py), so each option is described once, at its field.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any, Literal

AUTO = "auto"
Auto = Literal["auto"]
"""An option typed `float | Auto` takes a number or `auto`: chosen at start from the data and the model
(training/auto.py holds the rules); the chosen value and its reason are printed and saved in run.json."""


def opt(default: Any, help: str, *, choices: tuple | None = None, min: float | None = None, max: float | None = None):
    """A config field with its help text and constraints; mutable defaults are copied per instance."""
    meta = {"help": help, "choices": choices, "min": min, "max": max}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)
