"""Training objectives behind one seam (`tasks/task.py` states it): each task module exposes a frozen `Task`, or a
`make_task(options)` when its functions depend on the task's own config section (dpo, grpo)."""

from __future__ import annotations

import dataclasses
import functools

from tunelab.config import RunConfig
from tunelab.config.flags import CLI, Spelling
from tunelab.errors import ConfigError
from tunelab.tasks import dpo, grpo
from tunelab.tasks.classify import CLASSIFY
from tunelab.tasks.reward import REWARD
from tunelab.tasks.sft import SFT
from tunelab.tasks.task import Task

TASKS: dict[str, Task] = {task.name: task for task in (SFT, CLASSIFY, REWARD)}
CONFIGURED = ("dpo", "grpo")  # tasks built from their config section by get_task


def get_task(name: str, cfg: RunConfig | None = None, spelling: Spelling = CLI) -> Task:
    """The task `name` (bound to its section of `cfg` for dpo and grpo); `spelling`: how grpo's refusal of a reward
    model's run, and a head task's of eval.questions, name the commands (as the caller gave them)."""
    if name == "dpo":
        return dpo.make_task((cfg or RunConfig()).dpo)
    if name == "grpo":
        return grpo.make_task((cfg or RunConfig()).grpo, spelling)
    if name not in TASKS:
        raise ConfigError(f"option 'task' is {name!r}; allowed values: {', '.join([*TASKS, *CONFIGURED])}.")
    task = TASKS[name]
    if name in ("classify", "reward"):
        return dataclasses.replace(task, build_data=functools.partial(task.build_data, spelling=spelling))
    return task
