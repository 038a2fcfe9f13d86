"""Training objectives behind one seam (`tasks/task.py` states it): each task module exposes a frozen `Task`."""

from __future__ import annotations

from tunelab.errors import ConfigError
from tunelab.tasks.classify import CLASSIFY
from tunelab.tasks.reward import REWARD
from tunelab.tasks.sft import SFT
from tunelab.tasks.task import Task

TASKS: dict[str, Task] = {task.name: task for task in (SFT, CLASSIFY, REWARD)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"option 'task' is {name!r}; allowed values: {', '.join(TASKS)}.")
    return TASKS[name]
