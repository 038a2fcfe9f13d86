"""Tool calls the model writes, read back out of its answer into OpenAI's `message.tool_calls`.

A model calls a tool in the syntax its chat template writes an assistant's earlier calls in, so the syntax is read off
the run's own template (`call_syntax`): the template is asked to write a probe call, and the text shows which of the
two common syntaxes it uses:

    hermes   <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>   (Qwen 2.5/3, Hermes)
    json     {"name": "get_weather", "parameters": {"city": "Paris"}}                         (Llama 3.1-3.3)

A call is read only for a function the request defined, with an object of arguments; anything else (a malformed
call, text around a JSON call, another syntax) stays in the answer's content, so no text is lost. Each call gets an
id (`call_...`) and its arguments as JSON text, as OpenAI gives them. With `parallel_tool_calls: false` a request
gets at most one call, as OpenAI documents ("zero or one tool is called"): the first; the others the model wrote are
dropped with a log line (not kept as content, which would show the user a call's JSON).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass

_NAME = "tunelab_probe_call"
_PROBE = [
    {"role": "user", "content": "Hi"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": _NAME, "arguments": {"tunelab_probe_arg": 1}}}
        ],
    },
]
_log = logging.getLogger(__name__)
_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
_HERMES = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.S)  # the last call may be cut by the end of turn
_JSON = re.compile(r'\{\s*"name"\s*:\s*"' + _NAME + r'"\s*,\s*"(?:parameters|arguments)"\s*:')


def call_syntax(template) -> str | None:
    """ "hermes" or "json", the syntax in which the run's template writes an assistant's tool calls; None for a
    template that writes none, or writes them otherwise."""
    if not template.uses("tool_calls"):
        return None
    try:
        text = template.write(_PROBE, False)
    except Exception:  # the template refuses the probe's arguments: its calls are not read
        return None
    if _OPEN in text and _NAME in text:
        return "hermes"
    return "json" if _JSON.search(text) else None


@dataclass
class ToolCallReader:
    """Reads the calls of one answer: `syntax` from `call_syntax`, `names` the functions the request defined,
    `parallel` False for a request of `parallel_tool_calls: false` (at most one call answered)."""

    syntax: str
    names: frozenset[str]
    parallel: bool = True

    def split(self, text: str) -> tuple[str, list[dict]]:
        """(the content left, the calls in OpenAI's shape) of a whole answer; without `parallel`, its first call."""
        content, calls = self._split(text)
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
        if self.syntax == "hermes":
            kept, calls, at = [], [], 0
            for match in _HERMES.finditer(text):
                call = self._call(_json(match.group(1).strip()))
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

    def safe(self, text: str) -> int:
        """How much of an answer being generated may be sent as content: what precedes anything that may still
        become a call (trailing whitespace held too, as content is stripped)."""
        if self.syntax == "hermes":
            cut = text.find(_OPEN)
            if cut < 0:
                cut = len(text) - next((k for k in range(len(_OPEN) - 1, 0, -1) if text.endswith(_OPEN[:k])), 0)
        else:
            cut = 0 if text.lstrip()[:1] in ("", "{") else len(text)
        return len(text[:cut].rstrip())

    def _call(self, value) -> dict | None:
        if not isinstance(value, dict) or value.get("name") not in self.names:
            return None
        arguments = value.get("arguments", value.get("parameters", {}))
        if isinstance(arguments, str):
            arguments = _json(arguments)
        if not isinstance(arguments, dict):
            return None
        return {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": value["name"], "arguments": json.dumps(arguments, ensure_ascii=False)},
        }


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def tool_call_reader(
    template, tools: list[dict] | None, tool_choice, parallel_tool_calls: bool | None = None
) -> ToolCallReader | None:
    """The reader for a request's answer: None without tools, with tool_choice "none", or for a template whose call
    syntax is not known (its answer is content only). `parallel_tool_calls` False answers one call at most."""
    if not tools or tool_choice == "none":
        return None
    syntax = call_syntax(template)
    names = frozenset(t["function"].get("name") for t in tools if isinstance(t.get("function"), dict))
    return ToolCallReader(syntax, names, parallel_tool_calls is not False) if syntax else None
