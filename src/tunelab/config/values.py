"""One option's value read against its field: its type hint (converting where that is unambiguous: int -> float, a
scalar -> a list of one, a mapping -> a record such as DataSource) and its allowed values and range.

Rules that involve more than one option are config/validate.py's; unknown names are config/suggest.py's.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from tunelab.errors import ConfigError, article, not_text

# Text options whose line breaks and tabs a shell's quotes cannot type: prompts of several lines. Not refusal
# sentences (one line), paths, names, column names or reward patterns (a regex reads its own \n).
ESCAPED_FLAGS = ("classify.prompt_format", "data.system_prompt")
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def read_escapes(text: str) -> str:
    """A flag's text with \\n, \\t and \\\\ read as a newline, a tab and one backslash, as YAML's double-quoted strings
    read them (`--classify.prompt_format "Text: {text}\\nLabel:"`); any other backslash is kept as written. A YAML
    file's value and a Python override are already what their writer meant, and are not read so."""
    return re.sub(r"\\([nt\\])", lambda m: _ESCAPES[m.group(1)], text)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " or ".join(repr(v) for v in typing.get_args(hint))
    if dataclasses.is_dataclass(hint):  # a record: what the user writes is a mapping of its keys
        return f"a mapping {{{', '.join(f.name for f in dataclasses.fields(hint))}}}"
    if isinstance(hint, type):
        return hint.__name__
    return re.sub(r"\b(?:typing|tunelab(?:\.\w+)*)\.", "", str(hint))  # list[str | DataSource], not module paths


FINITE = "it must be a finite number."
WHOLE_DIGITS = 4000  # a whole number written with a larger exponent (1e1000000000) is refused, not expanded


class _Refused(ConfigError):
    """A value of the right type that is still wrong (an infinite number, a text with a lone surrogate): a union's
    other arms are not tried, so the error says this, not "must be float or str"."""


def checked(name: str, value: Any, hint: Any, f: dataclasses.Field, where: str) -> Any:
    """`value` converted by `coerce` and within the field's constraints. An option of fixed choices (all text) takes
    text only: a number or list there is refused naming the choices, not read as its Python text ('3', '[1, 2]')."""
    choices = f.metadata.get("choices")
    items = value if isinstance(value, list) and typing.get_origin(hint) is list else [value]
    bad = next((v for v in items if v is not None and not isinstance(v, str)), None) if choices else None
    if bad is not None:
        what = "a number" if isinstance(bad, int | float) and not isinstance(bad, bool) else article(type(bad).__name__)
        raise ConfigError(
            f"{where}: option '{name}' is {bad!r} ({what}, not text); allowed values: {', '.join(choices)}."
        )
    given = value
    try:
        value = coerce(name, value, hint, where)
    except _Refused:
        raise
    except ConfigError:
        if not choices:
            raise
        raise ConfigError(f"{where}: option '{name}' is {value!r}; allowed values: {', '.join(choices)}.") from None
    check_constraints(name, value, f, where, given)
    return value


def coerce(name: str, value: Any, hint: Any, where: str) -> Any:
    """Check `value` against the type hint, converting where it is unambiguous (int -> float, scalar -> list)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        records = [kind for kind in inner if dataclasses.is_dataclass(kind)]
        for kind in records:  # a mapping where the union allows a record (an entry of data.train)
            if isinstance(value, (dict, kind)):
                return _record(name, value, kind, where)
        if records and not isinstance(value, str):  # a bare 3 or 2024.10 (read 2024.1) is no kind or path
            what = (
                "a number"
                if isinstance(value, int | float) and not isinstance(value, bool)
                else article(type(value).__name__)
            )
            raise ConfigError(
                f"{where}: option '{name}' is {value!r} ({what}); it must be text or {_type_name(records[0])}"
                f"{_kinds(records[0])}."
            )
        for arm in inner:  # the first type that takes the value: `float | Auto` reads 1e-4 as float, "auto" as Auto
            try:
                return coerce(name, value, arm, where)
            except _Refused:
                raise
            except ConfigError:
                pass
        names = " or ".join(_type_name(a) for a in inner)
        auto = " Did you mean auto?" if isinstance(value, str) and value.strip().lower() == "auto" else ""
        raise ConfigError(f"{where}: option '{name}' must be {names}, got {_got(value, inner)}.{auto}")
    if origin is Literal:
        if value in typing.get_args(hint):
            return value
        raise ConfigError(f"{where}: option '{name}' must be {_type_name(hint)}, got {value!r}.")
    if origin is list:
        (item,) = typing.get_args(hint)
        mappings = typing.get_origin(item) is dict  # stages: a scalar is no list of one
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and not mappings:
            value = [value]
        if not isinstance(value, list):
            what = "mappings" if mappings else _type_name(item)
            raise ConfigError(f"{where}: option '{name}' must be a list of {what}, got {value!r}.")
        for k, v in enumerate(value, 1):
            if mappings and not isinstance(v, dict):
                raise ConfigError(
                    f"{where}: option '{name}', entry {k}, must be a mapping like {{key: value}}, got {v!r}."
                )
        return [_entry(name, k, v, item, where) for k, v in enumerate(value, 1)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: option '{name}' must be a mapping like {{key: value}}, got {value!r}.")
        keep = typing.get_args(hint)[1:] == (Any,)  # dict[str, Any]: values are checked by whoever reads them
        texts = [str(k) for k in value] + ([] if keep else [str(v) for v in value.values()])
        if problem := next(filter(None, map(not_text, texts)), None):
            raise _Refused(f"{where}: option '{name}': {problem}. Fix the text.")
        return {str(k): (v if keep else str(v)) for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        number = _number(value)
        if number is not None and number == number.to_integral_value():  # 512, 2048.0, "1e3", as float reads them
            if number.adjusted() > WHOLE_DIGITS:
                raise _Refused(f"{where}: option '{name}' is {value!r}, too large a number.")
            return int(number)
        if number is not None:  # 1.5, "0.5": a number, but no whole one (nor auto, nor null)
            raise _Refused(
                f"{where}: option '{name}' is {value!r}; it must be a whole number (written 512, 512.0 or 5.12e2)."
            )
    elif hint is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML reads "1e-4" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                percent = _number(value.strip()[:-1]) if value.strip().endswith("%") else None
                if percent is not None:  # eval_fraction: 10% reads as text; the options take shares as fractions
                    raise _Refused(
                        f"{where}: option '{name}' is {value!r}, a percentage; write it as a fraction: "
                        f"{float(percent) / 100:g} for {value.strip()}."
                    ) from None
        if number is not None and not math.isfinite(number):  # nan passes every range check (nan < 0 is False)
            raise _Refused(f"{where}: option '{name}' is {value!r}; {FINITE}")
        if number is not None:
            return number
    elif hint is str:
        if isinstance(value, str) and (problem := not_text(value)):
            raise _Refused(f"{where}: option '{name}': {problem}. Fix the text.")
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{where}: option '{name}' must be {_type_name(hint)}, got {_got(value, [hint])}.")


def _number(value: Any) -> Decimal | None:
    """A number as written (an int, a float, or a text such as "1e3", which YAML reads as text: an exponent without
    a dot), exactly; None for anything else (a bool, a text that is no number, inf, nan)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _got(value: Any, hints: list) -> str:
    """How a refused value is shown: a boolean says that YAML made it one (`save_every: no` is False, not 0)."""
    if not isinstance(value, bool) or bool in hints:
        return f"{value!r} ({type(value).__name__})"
    fix = "quote it for the text" if str in hints else "give a number"
    return f"{value!r} (bool: YAML reads yes, no, on, off, true and false as booleans; {fix})"


def _entry(name: str, k: int, value: Any, hint: Any, where: str) -> Any:
    """One entry of a list option, coerced; an error names the entry ('option 'grpo.rewards', entry 2, ...')."""
    try:
        return coerce(name, value, hint, where)
    except ConfigError as error:
        head, text = f"{where}: option '{name}", str(error)
        if text.startswith(f"{head}': an entry has"):  # an unknown key of a mapping entry
            raise type(error)(f"{head}', entry {k}, has{text.partition(': an entry has')[2]}") from None
        if text.startswith(f"{head}'") and not text.startswith(f"{head}', entry"):
            raise type(error)(f"{head}', entry {k},{text[len(head) + 1 :]}") from None
        if text.startswith(f"{head}[]."):  # a key of a mapping entry: 'data.train[].weight'
            key, _, rest = text[len(head) + 3 :].partition("'")
            raise type(error)(f"{head}', entry {k}, key '{key}'{rest}") from None
        raise


def _kinds(record: type) -> str:
    """'; its kind is one of ...' for a record with a field `kind` of fixed choices (a grpo reward), else ''."""
    field = {f.name: f for f in dataclasses.fields(record)}.get("kind")
    choices = field.metadata.get("choices") if field else None
    return f" (a bare kind is one of {', '.join(choices)})" if choices else ""


# Keys of a dataset entry in other tools (axolotl's `type`, LLaMA-Factory's `file_name`, the datasets library's
# `data_files`) and ours: spelling alone answered file_name with name (a source's label).
_RECORD_KEYS = {"type": "format", "file_name": "path", "data_files": "path", "data_dir": "path"}


def _record(name: str, value: Any, kind: type, where: str) -> Any:
    """A mapping -> an instance of the dataclass `kind`, each key checked like an option ('data.train[].weight')."""
    if isinstance(value, kind):
        return value
    fields = {f.name: f for f in dataclasses.fields(kind)}
    hints = typing.get_type_hints(kind)
    values = {}
    for key, item in value.items():
        if key not in fields:
            meant = _RECORD_KEYS.get(str(key))
            close = [meant] if meant in fields else difflib.get_close_matches(str(key), list(fields), n=2)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"{where}: option '{name}': an entry has the unknown key '{key}'.{hint} Its keys are "
                f"{', '.join(fields)}."
            )
        values[key] = checked(f"{name}[].{key}", item, hints[key], fields[key], where)
    return kind(**values)


# Values users give that name something other options set, or that other tools (torch, transformers, TRL, axolotl)
# spell otherwise: (option, value in lower case) -> how to ask for it.
_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}
VALUE_HINTS = {
    ("method.name", "qlora"): "QLoRA is method.name: lora with method.quantize_base: nf4.",
    **{("model.dtype", v): f"Did you mean {ours}?" for name, ours in _DTYPES.items() for v in (name, f"torch.{name}")},
    ("train.report_to", "none"): "No tracker is report_to: [] (the default).",
    ("train.optimizer", "paged_adamw_8bit"): "Did you mean adamw_8bit?",
    ("train.optimizer", "adamw_bnb_8bit"): "Did you mean adamw_8bit?",
    ("train.optimizer", "adamw_torch_fused"): "Did you mean adamw (fused on CUDA)?",
    ("method.quantize_base", "4bit"): "Did you mean nf4?",
    # LLaMA-Factory's and Unsloth's template names (llama3, qwen, mistral, ...): ours names only the fallbacks
    ("data.template", "*"): "A model's own chat template (its tokenizer's) is used with auto, the default; the named "
    "ones are for models without one.",
    # axolotl's dataset types
    **{
        ("data.format", kind): f"Did you mean {ours}?"
        for kind, ours in (("chat_template", "messages"), ("completion", "text"), ("input_output", "prompt_completion"))
    },
}


def value_hint(name: str, value: Any, choices: tuple) -> str:
    """What a value outside the choices may have meant: a known spelling of another tool, the choice it is in
    another case ('BF16', 'LoRA'), or what the option's choices are for."""
    text = str(value)
    if hint := VALUE_HINTS.get((name, text.lower())):
        return f" {hint}"
    if same := [c for c in choices if str(c).lower() == text.lower()]:
        return f" Did you mean {same[0]}?"
    return f" {VALUE_HINTS[(name, '*')]}" if (name, "*") in VALUE_HINTS else ""


def check_constraints(name: str, value: Any, f: dataclasses.Field, where: str, given: Any = None) -> None:
    """Refuse a value outside the field's choices or bounds; `given`: the value as the user wrote it, shown in the
    message (`--train.epochs 0` is 0 there, not the float 0.0 it became)."""
    meta = f.metadata
    values = value if isinstance(value, list) else [value]
    for v in values:
        if v is None:
            continue
        shown = given if given is not None and not isinstance(value, list) else v
        if meta.get("choices") and v not in meta["choices"]:
            allowed = ", ".join(map(str, meta["choices"]))
            raise ConfigError(
                f"{where}: option '{name}' is {v!r}; allowed values: {allowed}.{value_hint(name, v, meta['choices'])}"
            )
        if meta.get("min") is not None and isinstance(v, (int, float)) and v < meta["min"]:
            # max_steps: -1, transformers' "no limit": ours is null
            unset = " (or null, its default, to leave it unset)" if f.default is None else ""
            raise ConfigError(f"{where}: option '{name}' is {shown}; it must be >= {meta['min']}{unset}.")
        if meta.get("max") is not None and isinstance(v, (int, float)) and v > meta["max"]:
            raise ConfigError(f"{where}: option '{name}' is {shown}; it must be <= {meta['max']}.")
