"""Tool calls the model writes, read back out of its answer into OpenAI's `message.tool_calls`.

A model calls a tool in the syntax its chat template writes an assistant's earlier calls in, so the syntax is read off
the run's own template (`call_syntax`): the template is asked to write a probe call, and the text shows which of the
common syntaxes it uses:

    hermes   <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>   (Qwen 2.5/3, Hermes)
    xml      <tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>
                                                                                 (Qwen3-Coder, Qwen3.5)
    mistral  [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]        (Mistral 7B v0.3, Nemo)
             [TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}                              (Mistral Small 3.2, later)
    json     {"name": "get_weather", "parameters": {"city": "Paris"}}                         (Llama 3.1-3.3)

An xml call's parameter values are text: each is converted by the type the request's JSON schema gives that parameter
(integer, number, boolean, object, array, null), and kept as a string where it gives none or the text is no such value.
Where a syntax's markers are special tokens of the run's tokenizer (Mistral's `[TOOL_CALLS]` and `[ARGS]`, a
`<tool_call>` made special), the answer is decoded with them (`special_markers`, data.render.KeepingDecoder), so
text before a call is told from the call, and they are taken out of the content answered. A mistral call is read
without them too, where the answer opens with it; its id is 9 letters and digits, the only ids Mistral's templates
take back.

A call is read only for a function the request defined, with an object of arguments; anything else (a malformed
call, text around a JSON call, another syntax) stays in the answer's content, so no text is lost. Each call gets an
id (`call_...`, a mistral call's as said above) and its arguments as JSON text, as OpenAI gives them. With `parallel_tool_calls: false` a request
gets at most one call, as OpenAI documents ("zero or one tool is called"): the first; the others the model wrote are
dropped with a log line (not kept as content, which would show the user a call's JSON).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass, field

from tunelab.data.render import special_ids

_NAME = "tunelab_probe_call"
_PROBE = [
    {"role": "user", "content": "Hi"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [  # Mistral's templates take only ids of 9 letters and digits
            {"id": "call00000", "type": "function", "function": {"name": _NAME, "arguments": {"tunelab_probe_arg": 1}}}
        ],
    },
]
_log = logging.getLogger(__name__)
_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
_HERMES = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.S)  # the last call may be cut by the end of turn
_XML = re.compile(r"<tool_call>\s*<function=([^>\n]+)>(.*?)(?:</function>\s*(?:</tool_call>|$)|$)", re.S)
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>(.*?)(?:</parameter>|(?=<parameter=)|$)", re.S)
_MISTRAL = "[TOOL_CALLS]"
_MISTRAL_NAME = re.compile(r"\s*([A-Za-z0-9_.:-]+)(?:\[CALL_ID\][A-Za-z0-9]*)?(?:\[ARGS\])?")
_JSON = re.compile(r'\{\s*"name"\s*:\s*"' + _NAME + r'"\s*,\s*"(?:parameters|arguments)"\s*:')


# The texts a syntax marks calls with: kept in the answer's text where the tokenizer has them as special tokens.
MARKERS = {
    "mistral": (_MISTRAL, "[ARGS]", "[CALL_ID]"),
    "hermes": (_OPEN, _CLOSE),
    "xml": (_OPEN, _CLOSE),
}


def special_markers(tokenizer, syntax: str) -> dict[str, int]:
    """{marker: id} for the markers of `syntax` that are one special token of `tokenizer`, which decoding with
    skip_special_tokens would take out of the answer's text."""
    specials, out = special_ids(tokenizer), {}
    for marker in MARKERS.get(syntax, ()):
        token = tokenizer.convert_tokens_to_ids(marker)  # the unknown token's id where it has none
        if token in specials and tokenizer.convert_ids_to_tokens(token) == marker:
            out[marker] = token
    return out


def call_syntax(template) -> str | None:
    """ "hermes", "xml", "mistral" or "json", the syntax in which the run's template writes an assistant's tool
    calls; None for a template that writes none, or writes them otherwise."""
    if not template.uses("tool_calls"):
        return None
    try:
        text = template.write(_PROBE, False)
    except Exception:  # the template refuses the probe's arguments: its calls are not read
        return None
    if f"<function={_NAME}>" in text:
        return "xml"
    if _OPEN in text and _NAME in text:
        return "hermes"
    if _MISTRAL in text and _NAME in text:
        return "mistral"
    return "json" if _JSON.search(text) else None


@dataclass
class ToolCallReader:
    """Reads the calls of one answer: `syntax` from `call_syntax`, `names` the functions the request defined,
    `parallel` False for a request of `parallel_tool_calls: false` (at most one call answered), `types` each
    function's parameters' JSON schema types (`{"get_weather": {"days": "integer"}}`), which xml values are read as."""

    syntax: str
    names: frozenset[str]
    parallel: bool = True
    types: dict[str, dict] = field(default_factory=dict)
    markers: dict[str, int] = field(default_factory=dict)  # special_markers: kept in the text, never in content

    @property
    def opens(self) -> tuple[str, ...]:
        """The texts a call of this syntax opens with (a mistral call's [ARGS] too, where [TOOL_CALLS] was left out)."""
        return tuple(m for m in MARKERS.get(self.syntax, ()) if m != _CLOSE)

    def span(self, text: str) -> tuple[int, int, bool]:
        """(0, where a call opens, whether it has) in an answer being generated (engine.AnswerSpan): the first
        opening's index; else where a tail that may still become one starts, or the text's end. A JSON call (Llama
        3's) is the whole answer: it opens with the answer's first "{"."""
        if self.syntax == "json":
            lead = len(text) - len(text.lstrip())
            return (0, lead, True) if text[lead : lead + 1] == "{" else (0, len(text), False)
        at = min((i for i in (text.find(m) for m in self.opens) if i >= 0), default=-1)
        if at >= 0:
            return 0, at, True
        tail = (k for m in self.opens for k in range(min(len(m) - 1, len(text)), 0, -1) if text.endswith(m[:k]))
        return 0, len(text) - max(tail, default=0), False

    def split(self, text: str) -> tuple[str, list[dict]]:
        """(the content left, the calls in OpenAI's shape) of a whole answer; without `parallel`, its first call."""
        content, calls = self._split(text)
        for marker in self.markers:  # a marker of no call read (a malformed one) is no text the user should see
            content = content.replace(marker, "")
        if not self.parallel and len(calls) > 1:
            names = ", ".join(c["function"]["name"] for c in calls[1:])
            _log.warning(
                "parallel_tool_calls is false and the model wrote %d tool calls: answered with the first (%s), "
                "dropped the other %d (%s)",
                len(calls),
                calls[0]["function"]["name"],
                len(calls) - 1,
                names,
            )
            calls = calls[:1]
        return content, calls

    def _split(self, text: str) -> tuple[str, list[dict]]:
        if self.syntax == "mistral":
            return self._mistral(text)
        if self.syntax in ("hermes", "xml"):
            kept, calls, at = [], [], 0
            for match in (_HERMES if self.syntax == "hermes" else _XML).finditer(text):
                value = _json(match.group(1).strip()) if self.syntax == "hermes" else self._xml(*match.groups())
                call = self._call(value)
                if call is not None:
                    kept.append(text[at : match.start()])
                    calls.append(call)
                    at = match.end()
            return ("".join(kept) + text[at:]).strip(), calls
        calls, at, body = [], 0, text.strip()  # json: the whole answer is one call or several, split by ";"
        while at < len(body):
            try:
                value, at = json.JSONDecoder().raw_decode(body, at)
            except json.JSONDecodeError:
                return text, []
            call = self._call(value)
            if call is None:
                return text, []
            calls.append(call)
            while at < len(body) and body[at] in " \t\r\n;":
                at += 1
        return ("", calls) if calls else (text, [])

    def _xml(self, name: str, body: str) -> dict:
        """The call of a `<function=name>` block, its values read by the types of the function's parameters."""
        types = self.types.get(name.strip(), {})
        arguments = {}
        for key, value in _PARAMETER.findall(body):
            value = value.removeprefix("\n").removesuffix("\n")  # the template's own line breaks around a value
            arguments[key.strip()] = _typed(value, types.get(key.strip()))
        return {"name": name.strip(), "arguments": arguments}

    def _mistral(self, text: str) -> tuple[str, list[dict]]:
        """`[TOOL_CALLS][{...}, ...]` or `[TOOL_CALLS]name[ARGS]{...}` repeated; all of it calls, or all content."""
        at = text.find(_MISTRAL)
        head, body, calls = (text[:at], text[at:], []) if at >= 0 else ("", text.strip(), [])
        decoder, at = json.JSONDecoder(), 0
        while True:
            while body.startswith(_MISTRAL, at) or body[at : at + 1].isspace():
                at += len(_MISTRAL) if body.startswith(_MISTRAL, at) else 1
            if at >= len(body):
                break
            try:
                if body[at] == "[":  # the older form: a JSON list of {"name", "arguments"}
                    values, at = decoder.raw_decode(body, at)
                else:  # the newer: the name, [ARGS], the arguments' JSON
                    name = _MISTRAL_NAME.match(body, at)
                    if name is None or not name.group(1):
                        return text, []
                    arguments, at = decoder.raw_decode(body, name.end())
                    values = [{"name": name.group(1), "arguments": arguments}]
            except json.JSONDecodeError:
                return text, []
            for value in values if isinstance(values, list) else [values]:
                call = self._call(value)
                if call is None:
                    return text, []
                calls.append(call)
        return (head.strip(), calls) if calls else (text, [])

    def safe(self, text: str) -> int:
        """How much of an answer being generated may be sent as content: what precedes anything that may still
        become a call (trailing whitespace held too, as content is stripped)."""
        if self.syntax == "mistral" and _could_open(text.lstrip(), self.names):
            cut = 0  # a call whose [TOOL_CALLS] the decoding left out opens the answer
        elif self.syntax != "json":
            marker = _MISTRAL if self.syntax == "mistral" else _OPEN
            cut = text.find(marker)
            if cut < 0:
                cut = len(text) - next((k for k in range(len(marker) - 1, 0, -1) if text.endswith(marker[:k])), 0)
        else:
            cut = 0 if text.lstrip()[:1] in ("", "{") else len(text)
        kept = [at for at in (text.find(m) for m in self.markers) if at >= 0]  # each comes whole, as one token
        return len(text[: min([cut, *kept])].rstrip())

    def _call(self, value) -> dict | None:
        if not isinstance(value, dict) or value.get("name") not in self.names:
            return None
        arguments = value.get("arguments", value.get("parameters", {}))
        if isinstance(arguments, str):
            arguments = _json(arguments)
        if not isinstance(arguments, dict):
            return None
        return {
            # Mistral's templates refuse an earlier call whose id is not 9 letters and digits: the id the client sends
            # back with the tool's result must be one they take
            "id": uuid.uuid4().hex[:9] if self.syntax == "mistral" else f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": value["name"], "arguments": json.dumps(arguments, ensure_ascii=False)},
        }


def _could_open(lead: str, names: frozenset[str]) -> bool:
    """Whether an answer that opens with `lead` may still be a mistral call without its [TOOL_CALLS]: empty, a
    JSON list, or a function's name (or the start of one)."""
    return not lead or lead[0] == "[" or any(lead.startswith(n) or n.startswith(lead) for n in names)


def _typed(value: str, kind) -> object:
    """An xml parameter's text as its JSON schema `kind` (a type name, or a list of them) reads it; the text itself
    for a string, for no type given, or for text that is no value of the type."""
    kinds = kind if isinstance(kind, list) else [kind]
    text = value.strip()
    if "null" in kinds and text == "null":  # ["string", "null"]: a null, not the text "null"
        return None
    if not isinstance(kind, (str, list)) or "string" in kinds:
        return value
    for kind in kinds:
        if kind == "boolean" and text.lower() in ("true", "false"):
            return text.lower() == "true"
        if kind in ("integer", "number") and re.fullmatch(r"-?\d+", text):
            return int(text)
        if kind == "number" and re.fullmatch(r"-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text):
            return float(text)
        if kind in ("object", "array"):
            parsed = _json(text)
            if isinstance(parsed, dict if kind == "object" else list):
                return parsed
    return value


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def tool_definition_problem(tools: list) -> tuple[str, str] | None:
    """(the field, the message) of the first tool definition not in OpenAI's shape, {"type": "function", "function":
    {"name": ..., "description"?: ..., "parameters"?: {...}}}; None when all are. A template would write a malformed
    one as it comes (or fail on it), and its calls could not be read back."""
    shape = 'give each tool as OpenAI does: {"type": "function", "function": {"name": ..., "parameters": {...}}}'
    for k, tool in enumerate(tools):
        where = f"tools.{k}"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            return f"{where}.type", f"{where}.type: this server reads function tools only; {shape}"
        function = tool.get("function")
        if not isinstance(function, dict):
            return f"{where}.function", f"{where}.function: missing or not an object; {shape}"
        name = function.get("name")
        if not isinstance(name, str) or not name.strip():
            return f"{where}.function.name", f"{where}.function.name: give the function's name as a non-empty string"
        for key, kind, what in (("description", str, "a string"), ("parameters", dict, "a JSON schema object")):
            if function.get(key) is not None and not isinstance(function[key], kind):
                return f"{where}.function.{key}", f"{where}.function.{key}: should be {what}"
    return None


def tool_result_problem(messages: list[dict]) -> tuple[str, str] | None:
    """(the field, the message) of the first tool result that answers no call, as OpenAI refuses it: one that does
    not follow an assistant's tool calls (or other results of them), one without its `tool_call_id`, or one whose id
    is none of those calls' (checked where every call has an id). None when each answers a call."""
    ids: list | None = None  # the ids of the calls the results that follow may answer; None: no call before
    for k, m in enumerate(messages):
        where = f"messages.{k}"
        if m["role"] != "tool":
            calls = (m.get("tool_calls") or []) if m["role"] == "assistant" else []
            ids = [c.get("id") for c in calls] or None
        elif ids is None:
            return f"{where}.role", f"{where} is a tool's result, but no assistant message with tool_calls is before it"
        elif not isinstance(m.get("tool_call_id"), str):
            known = ", ".join(repr(i) for i in ids if isinstance(i, str))
            return (
                f"{where}.tool_call_id",
                f"{where} is a tool's result without 'tool_call_id'; give the id of the call it answers"
                + (f" ({known})" if known else ""),
            )
        elif all(isinstance(i, str) for i in ids) and m["tool_call_id"] not in ids:
            known = ", ".join(repr(i) for i in ids)
            return (
                f"{where}.tool_call_id",
                f"{where}.tool_call_id is {m['tool_call_id']!r}, which is not the id of a call of the assistant's "
                f"message before it ({known})",
            )
    return None


def tool_call_reader(
    template, tools: list[dict] | None, tool_choice, parallel_tool_calls: bool | None = None, tokenizer=None
) -> ToolCallReader | None:
    """The reader for a request's answer: None without tools, with tool_choice "none", or for a template whose call
    syntax is not known (its answer is content only). `parallel_tool_calls` False answers one call at most. With the
    run's `tokenizer`, the syntax's markers that are special tokens are the reader's `markers`: the answer is to be
    decoded with them."""
    if not tools or tool_choice == "none":
        return None
    syntax = call_syntax(template)
    functions = [t["function"] for t in tools if isinstance(t.get("function"), dict)]
    types = {}
    for function in functions:
        schema = function.get("parameters")
        properties = schema.get("properties") if isinstance(schema, dict) else None
        if isinstance(properties, dict):
            types[function.get("name")] = {k: v.get("type") for k, v in properties.items() if isinstance(v, dict)}
    names = frozenset(f.get("name") for f in functions)
    if not syntax:
        return None
    markers = special_markers(tokenizer, syntax) if tokenizer is not None else {}
    return ToolCallReader(syntax, names, parallel_tool_calls is not False, types, markers)
