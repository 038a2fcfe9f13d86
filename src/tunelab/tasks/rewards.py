"""Reward functions of task grpo: what a sampled answer is worth, as one float per answer.

Built-in kinds (`grpo.rewards` entries; a bare kind takes the defaults):

    contains   1 if the row's expected text (column `expected`, or `column`) occurs in the answer as a whole phrase
               ("4" is not in "14"), else 0: `data.match.contains`, the rule `tunelab eval` scores answers by
    equals     1 if the answer equals the expected text, else 0; with `pattern`, the first group of its LAST match in
               the answer is compared instead (e.g. "Answer:\\s*(-?\\d+)" reads the final number). Both sides are
               normalised first (`data.match.normalize`: lower case, white space runs as one space, no final
               punctuation)
    regex      1 if `pattern` matches anywhere in the answer as written, its thought included (re.search; write
               ^...$ and (?m) as you need), else 0
    length     0 up to `max_tokens` answer tokens, then -(tokens - max_tokens) / max_tokens (-1 at twice the limit)
    function   a user's `module:function` or `file.py:function` (relative to the YAML config), called as
               f(prompt, answer, row) -> float: the prompt the model was asked (`prompt_data`: the user's text, an
               instruction joined with its input, or the turns of a chat or history as {role, content} messages),
               the answer text, the whole row (a dict: expected and any other column; a column read under another
               case, `Expected` as `expected`, is in it under both names); a function that takes a `thought` keyword
               (or **kwargs) gets the answer's thought too (None where it has none). Further parameters are
               columns, as TRL passes a data set's columns as keywords: `def score(prompt, answer, row, Answer)`
               gets the row's `Answer` (its name as the file writes it, else as read, else the one column of that
               name in another case); a **kwargs function gets every column so. A parameter without a default
               that no column of a row gives is an error naming the function, the parameter and the row's columns
               (`refuse_missing_columns`, when the data is read)
    model      a finished `task: reward` run (its directory), loaded with `tasks.head_run.load_reward_model`

A reasoning model's thought is read apart (`Sample`): all but `regex` and `length` read the answer after it.

The total reward of an answer is the weighted sum of its rewards. A function that raises (or calls sys.exit) or
returns anything but a real number within +-MAX_REWARD is a failure of that answer: `score` reports each failure with the reward's name and the row,
and the task stops the run or skips the prompt's group as grpo.on_reward_error says.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunelab.config import RewardSpec
from tunelab.config.flags import CLI, Spelling
from tunelab.data.formats import scalar_text
from tunelab.data.match import contains, exact_match
from tunelab.data.report import location
from tunelab.data.transform import load_transform
from tunelab.errors import ConfigError, DataError, RunDirError, TunelabError, article
from tunelab.rundir import open_info
from tunelab.tasks.head_run import load_reward_model

KINDS = RewardSpec.__dataclass_fields__["kind"].metadata["choices"]


@dataclass(frozen=True)
class Sample:
    """One sampled answer to score. A reasoning model's answer opens with a thought (`<think>...</think>`,
    data/reasoning.py): `answer` is what follows it, what the rewards that check the answer read (a thought that
    names the expected text is no hit, as in `tunelab eval`), and `text` the answer as written, thought and markers
    included, which `regex` matches (a format reward, as TRL's think_format_reward reads the whole completion)."""

    prompt: str | list[dict]  # what the model was asked (prompt_data.Prompt)
    answer: str  # the decoded answer after its thought, without its stop token
    row: dict  # the whole data row
    tokens: int  # answer tokens (its stop token included; its thought's too)
    where: str  # file:line of the row
    thought: str | None = None  # the thought, None where the answer opens with none
    text: str | None = None  # the whole answer as written; None: `answer` is all of it
    spelled: dict[str, str] | None = None  # {name read: column as written} of the columns read under another case

    @property
    def written(self) -> str:
        return self.answer if self.text is None else self.text


@dataclass(frozen=True)
class Reward:
    name: str
    weight: float
    score: Callable[[list[Sample]], list[Any]]  # one value per sample; a value may be an Exception (a failure)


@dataclass(frozen=True)
class Failure:
    sample: int  # index into the scored samples
    reward: str  # the reward's name
    reason: str  # what it did: raised X, returned Y


def reward_run(run: str, where: str, spelling: Spelling = CLI) -> None:
    """ConfigError naming grpo.rewards' entry unless `run` is a finished `task: reward` run: another task's run (a
    classifier's scores of K labels, a text model) is no reward. `spelling`: how an unfinished run is told to be
    resumed (tunelab train --resume, or tunelab.train(..., resume=True))."""
    if not Path(run).is_dir():
        raise ConfigError(
            f"{where}: run {run!r} is not a directory; give a finished `task: reward` run (in a config file the path "
            "is relative to the file's folder, while output_dir is relative to the folder tunelab runs in)."
        )
    try:
        info = open_info(run, heads=True, spelling=spelling)
    except RunDirError as exc:
        raise ConfigError(f"{where}: run {run!r} cannot be used: {exc}") from None
    if info.task != "reward":
        raise ConfigError(
            f"{where}: run {run!r} is {article(info.task)} run; kind model scores answers with a finished `task: reward` "
            "run (one score per answer)."
        )


def specs(entries: list[str | RewardSpec], spelling: Spelling = CLI) -> list[RewardSpec]:
    """The grpo.rewards entries as checked RewardSpecs with unique names; ConfigError naming the entry otherwise. A
    `function` entry's module is imported here, so a typo stops the run before the model loads."""
    if not entries:
        raise ConfigError("option 'grpo.rewards' is empty; give at least one reward, e.g. [contains].")
    out = []
    for i, entry in enumerate(entries, 1):
        spec = entry if isinstance(entry, RewardSpec) else RewardSpec(kind=str(entry))
        where = f"option 'grpo.rewards', entry {i}"
        if spec.kind not in KINDS:
            raise ConfigError(f"{where}: kind {spec.kind!r}; allowed values: {', '.join(KINDS)}.")
        _refuse_unread(spec, where)
        if spec.kind in ("contains", "equals") and not spec.column.strip():
            raise ConfigError(f"{where} ({spec.kind}): 'column' is empty; name the row's column of expected answers.")
        need = {"regex": "pattern", "function": "function", "model": "run"}.get(spec.kind)
        if need and not getattr(spec, need):
            raise ConfigError(f"{where} ({spec.kind}) needs '{need}', e.g. {{kind: {spec.kind}, {need}: ...}}.")
        if spec.pattern is not None:
            try:
                compiled = re.compile(spec.pattern)
            except re.error as exc:
                raise ConfigError(f"{where}: pattern {spec.pattern!r} is not a regular expression ({exc}).") from None
            if spec.kind == "equals" and compiled.groups < 1:
                raise ConfigError(f"{where}: equals compares the pattern's first group; {spec.pattern!r} has none.")
        if spec.kind == "function":
            _refuse_uncallable(user_function(spec.function, where), spec.function, where)
        if spec.kind == "model":
            reward_run(spec.run, where, spelling)
        out.append(spec)
    counts: dict[str, int] = {}
    named = []
    for spec in out:
        base = spec.name or (spec.function.partition(":")[2] if spec.kind == "function" else spec.kind)
        counts[base] = counts.get(base, 0) + 1
        named.append((spec, base if counts[base] == 1 else f"{base}{counts[base]}"))
    names = [n for _, n in named]
    if len(set(names)) < len(names):
        raise ConfigError(f"option 'grpo.rewards': the names {names} repeat; give each entry its own name.")
    return [RewardSpec(**{**vars(spec), "name": name}) for spec, name in named]


READS = {  # what each kind reads besides kind, name and weight
    "contains": ("column",),
    "equals": ("column", "pattern"),
    "regex": ("pattern",),
    "length": ("max_tokens",),
    "function": ("function",),
    "model": ("run",),
}


def _refuse_unread(spec: RewardSpec, where: str) -> None:
    """ConfigError for a key the entry's kind does not read (`{kind: contains, pattern: ...}`): the user meant it to
    change the reward, and it would not."""
    for field in dataclasses.fields(RewardSpec):
        if field.name in ("kind", "name", "weight", *READS[spec.kind]):
            continue
        if getattr(spec, field.name) != field.default:
            reads = ", ".join(("name", "weight", *READS[spec.kind]))
            raise ConfigError(
                f"{where} ({spec.kind}): kind {spec.kind} does not read '{field.name}'; it reads {reads}. Remove "
                f"'{field.name}', or choose the kind that reads it."
            )


def user_function(path: str, where: str) -> Callable:
    """`module:function` (an installed module, or MODULE.py in the working directory) or `file.py:function`,
    loaded as data.transform loads its function."""
    return load_transform(path, where)


def _refuse_uncallable(fn: Callable, name: str, where: str) -> None:
    """ConfigError unless `fn` can be called as f(prompt, answer, row) and gives its value: a function of other
    arguments, or an `async def` one (its call gives a coroutine), failed only at the first step's scoring, after the
    model had loaded and sampled, and `tunelab check` passed it."""
    if inspect.iscoroutinefunction(fn):
        raise ConfigError(
            f"{where}: {name} is an async function, whose call gives a coroutine, not a number; write it with def, "
            "returning the reward."
        )
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: its call says what is wrong
        return
    try:
        signature.bind("prompt", "answer", {}, **dict.fromkeys(takes(fn).required))
    except TypeError as exc:
        raise ConfigError(
            f"{where}: {name}{signature} cannot be called as f(prompt, answer, row) ({exc}); a reward function takes "
            "the prompt, the answer text and the row, e.g. def score(prompt, answer, row): ..."
        ) from None


@dataclass(frozen=True)
class Takes:
    """What a user's function takes beside the prompt, answer and row it is given by position."""

    bound: tuple[str, ...] = ()  # the names of the parameters that take prompt, answer and row
    columns: tuple[str, ...] = ()  # further keyword parameters: columns of the row (`column_value`)
    required: tuple[str, ...] = ()  # those of them without a default
    thought: bool = False  # a `thought` keyword, or **kwargs
    every: bool = False  # **kwargs: every column of the row, under its own name


def takes(fn: Callable) -> Takes:
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: given prompt, answer and row only
        return Takes()
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:3]
    named = [p for p in parameters if p not in positional and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    every = any(p.kind is p.VAR_KEYWORD for p in parameters)
    columns = [p for p in named if p.name != "thought"]
    return Takes(
        bound=tuple(p.name for p in positional),
        columns=tuple(p.name for p in columns),
        required=tuple(p.name for p in columns if p.default is p.empty),
        thought=every or len(columns) < len(named),
        every=every,
    )


def own_columns(s: Sample) -> dict:
    """The row under the file's own column names (a column read under another case by its name as written)."""
    spelled = s.spelled or {}
    return {spelled.get(k, k): v for k, v in s.row.items()}


MISSING = object()


def column_value(name: str, s: Sample, own: dict | None = None) -> Any:
    """The row's column for parameter `name`: the column of that name as the file writes it, else as read, else the
    one column whose name is `name` in another case; MISSING where none is (or two are, in other cases). `own`:
    `own_columns(s)` where the caller has it."""
    own = own_columns(s) if own is None else own
    if name in own:
        return own[name]
    if name in s.row:
        return s.row[name]
    alike = [k for k in own if isinstance(k, str) and k.lower() == name.lower()]
    return own[alike[0]] if len(alike) == 1 else MISSING


def _missing_column(name: str, function: str, s: Sample) -> str:
    columns = ", ".join(map(str, own_columns(s))) or "none"
    return (
        f"{s.where}: reward function {function} takes the parameter '{name}', which no column of the row gives (its "
        f"columns: {columns}); parameters after prompt, answer and row are read from the row's columns by name, "
        "in any case. Add the column, give the parameter a default, or read it from row."
    )


def call(fn: Callable, took: Takes, function: str, s: Sample) -> Any:
    """fn(prompt, answer, row, **what it takes by keyword): the row with its renamed columns under their own names
    too; the columns its parameters name; every column for **kwargs; the thought."""
    own = own_columns(s)
    row = {**s.row, **own}
    keywords = {}
    if took.every:
        keywords = {k: v for k, v in own.items() if isinstance(k, str) and k not in (*took.bound, "thought")}
    for name in took.columns:
        value = column_value(name, s, own)
        if value is not MISSING:
            keywords[name] = value
        elif name in took.required:
            raise DataError(_missing_column(name, function, s))
    if took.thought:
        keywords["thought"] = s.thought
    return fn(s.prompt, s.answer, row, **keywords)


def refuse_missing_columns(specs: list[RewardSpec], rows: list) -> None:
    """DataError naming the row, the function, its parameter and the row's columns where a function's parameter
    without a default has no column in a row (`rows`: prompt_data.PromptRow), before the model loads."""
    for spec in specs:
        if spec.kind != "function":
            continue
        required = takes(user_function(spec.function, f"option 'grpo.rewards', reward {spec.name!r}")).required
        for r in rows if required else ():
            s = Sample(r.prompt, "", r.row, 0, location(r.path, r.line), spelled=r.spelled)
            for name in required:
                if column_value(name, s) is MISSING:
                    raise DataError(_missing_column(name, spec.function, s))


class _Exited(Exception):
    """A reward function called sys.exit: its failure, said as such (not as an exception it raised)."""


def _each(fn: Callable[[Sample], Any]) -> Callable[[list[Sample]], list[Any]]:
    """A per-sample function as a batch one; what it raises becomes that sample's value (a failure)."""

    def score(samples: list[Sample]) -> list[Any]:
        out = []
        for s in samples:
            try:
                out.append(fn(s))
            except Exception as exc:  # a user's function may raise anything: the row and the function are reported
                out.append(exc)
            except SystemExit as exc:  # sys.exit() in a reward function would end the run half written
                out.append(_Exited(f"called sys.exit({exc.code!r})"))
        return out

    return score


def _expected(s: Sample, column: str) -> str:
    """The row's expected text; a number or true/false as `tunelab eval` reads it (`data.formats.scalar_text`)."""
    value = s.row[column]
    return scalar_text(value) if isinstance(value, bool | int | float) else str(value)


def _final_group(pattern: re.Pattern, answer: str) -> str | None:
    matches = list(pattern.finditer(answer))
    return matches[-1].group(1) if matches else None


def build(spec: RewardSpec, device: torch.device | str = "cpu") -> Reward:
    """The scoring function of a checked spec (a reward model is loaded here, onto `device`)."""
    pattern = re.compile(spec.pattern) if spec.pattern is not None else None
    if spec.kind == "contains":
        fn = _each(lambda s: float(contains(s.answer, _expected(s, spec.column))))
    elif spec.kind == "equals":

        def equals(s: Sample) -> float:
            got = _final_group(pattern, s.answer) if pattern is not None else s.answer
            return float(got is not None and exact_match(got, _expected(s, spec.column)))

        fn = _each(equals)
    elif spec.kind == "regex":
        fn = _each(lambda s: float(pattern.search(s.written) is not None))
    elif spec.kind == "length":
        fn = _each(lambda s: -max(0, s.tokens - spec.max_tokens) / spec.max_tokens)
    elif spec.kind == "function":
        user = user_function(spec.function, f"option 'grpo.rewards', reward {spec.name!r}")
        took = takes(user)
        fn = _each(lambda s: call(user, took, spec.function, s))
    else:
        try:
            from_model = load_reward_model(spec.run, device=str(device))
        except TunelabError as exc:  # a damaged or moved run: the option that named it, and why it failed
            raise ConfigError(f"option 'grpo.rewards', reward {spec.name!r} (kind model): {exc}") from None

        def fn(samples: list[Sample]) -> list[Any]:
            return from_model.score([s.prompt for s in samples], [s.answer for s in samples])  # read apart already

    return Reward(spec.name, spec.weight, fn)


MAX_REWARD = 1e6  # rewards are summed and normalised per group in fp32: larger values overflow there


def _number(value: Any) -> Any:
    """A 0-d torch tensor or numpy array (`torch.tensor(0.5)`, what a reward computed with torch gives) or a numpy
    scalar (`np.mean(x) > 0.5` is a numpy bool, which counts as 0/1 as a Python bool does) as its one value; anything
    else as it is. An array of more dimensions is no reward of one answer, even of one element."""
    if (isinstance(value, torch.Tensor | np.ndarray) and value.ndim == 0) or isinstance(value, np.generic):
        return value.item()
    return value


def _reason(value: Any) -> str | None:
    """Why a reward value is not usable, or None when it is a finite real number within +-MAX_REWARD."""
    if isinstance(value, Exception):
        return str(value) if isinstance(value, _Exited) else f"raised {type(value).__name__}: {value}"
    if isinstance(value, torch.Tensor | np.ndarray):
        return (
            f"returned {type(value).__name__} of shape {tuple(value.shape)}, not a number; return one number (a "
            "float, or a 0-d tensor such as x.sum() or x[0])"
        )
    if not isinstance(value, numbers.Real):
        return f"returned {value!r} ({type(value).__name__}), not a number"
    try:
        number = float(value)
    except OverflowError:
        return f"returned a number too large for a float, beyond +-{MAX_REWARD:g}"
    if not math.isfinite(number):
        return f"returned {value!r}, not a finite number"
    if abs(number) > MAX_REWARD:
        return f"returned {number:g}, beyond +-{MAX_REWARD:g} (scale the reward down)"
    return None


def score(rewards: list[Reward], samples: list[Sample]) -> tuple[torch.Tensor, list[Failure]]:
    """(N, R) fp32 rewards of N samples under R functions (NaN where one failed), and the failures."""
    values = torch.full((len(samples), len(rewards)), float("nan"))
    failures = []
    for j, reward in enumerate(rewards):
        got = reward.score(samples)
        for i, value in enumerate(got):
            value = _number(value)
            reason = _reason(value)
            if reason is None:
                values[i, j] = float(value)
            else:
                failures.append(Failure(i, reward.name, reason))
    return values, failures
