"""A reward function of examples/arithmetic_grpo, named in its config as `rewards.py:closeness`: partial credit for
a result near the right one, so that answers which are all wrong still differ in worth (a group that scores the same
everywhere teaches nothing)."""

from __future__ import annotations

import re

RESULT = re.compile(r"=\s*(-?\d+)")


def closeness(prompt: str, answer: str, row: dict) -> float:
    """1 for the right result after the last '=', falling linearly to 0 at 50 away; 0 when there is no '= N'."""
    found = RESULT.findall(answer)
    if not found:
        return 0.0
    return max(0.0, 1.0 - abs(int(found[-1]) - int(row["expected"])) / 50)
