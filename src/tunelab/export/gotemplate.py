"""Render the Go `text/template` subset that tunelab's Modelfiles use, as Ollama would, so the export can check that
its TEMPLATE writes exactly the text the model was trained on.

The subset: literal text; `{{ .Field }}`, `{{ $.Field }}`, `{{ $var }}`, `{{ "string" }}`; `{{ if COND }}` with
`{{ else if COND }}` / `{{ else }}`; `{{ range .Messages }}`; `{{ $var := value }}` and `{{ $var = value }}`; and in
conditions `eq A B`, `and A B`, `not A` and parenthesised sub-expressions. `{{-` and `-}}` trim the neighbouring
whitespace as in Go. Anything else is a ValueError: the Modelfile writer only emits this subset, and the check
would rather fail loudly than emulate Go wrongly.

`ollama_values` builds what Ollama passes a template for a chat request: `.Messages` (every message, system ones
included) and `.System` (the system messages joined by blank lines; the Modelfile's SYSTEM when the request has none).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.DOTALL)


@dataclass
class _Node:
    kind: str  # text | out | if | range | set
    arg: str = ""
    body: list = field(default_factory=list)
    branches: list = field(default_factory=list)  # if: [(condition, body)], the last condition may be None (else)


def _lex(source: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", s)] with Go's whitespace trimming applied."""
    out: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(source):
        text = source[pos : m.start()]
        if m.group(1):
            text = text.rstrip()
        out.append(("text", text))
        out.append(("action", m.group(2)))
        pos = m.end()
        if m.group(3):
            rest = source[pos:]
            pos += len(rest) - len(rest.lstrip())
    out.append(("text", source[pos:]))
    return [t for t in out if t != ("text", "")]


def parse(source: str) -> list[_Node]:
    nodes, _ = _parse_block(_lex(source), 0, top=True)
    return nodes


def _parse_block(tokens, i, top=False):
    nodes: list[_Node] = []
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "text":
            nodes.append(_Node("text", value))
            i += 1
            continue
        word = value.split(" ", 1)[0]
        if word in ("end", "else"):
            if top:
                raise ValueError(f"unexpected {{{{ {value} }}}}")
            return nodes, i
        if word == "if":
            node = _Node("if")
            condition = value[2:].strip()
            while True:
                body, i = _parse_block(tokens, i + 1)
                node.branches.append((condition, body))
                if i >= len(tokens):
                    raise ValueError("{{ if }} without {{ end }}")
                closing = tokens[i][1]
                if closing == "end":
                    break
                if closing == "else":
                    condition = None
                elif closing.startswith("else if "):
                    condition = closing[len("else if ") :].strip()
                else:
                    raise ValueError(f"unexpected {{{{ {closing} }}}}")
            nodes.append(node)
            i += 1
        elif word == "range":
            body, i = _parse_block(tokens, i + 1)
            if i >= len(tokens) or tokens[i][1] != "end":
                raise ValueError("{{ range }} without {{ end }}")
            nodes.append(_Node("range", value[len("range") :].strip(), body))
            i += 1
        elif re.fullmatch(r"\$\w+\s*:?=.*", value):
            nodes.append(_Node("set", value))
            i += 1
        else:
            nodes.append(_Node("out", value))
            i += 1
    if not top:
        raise ValueError("a block is not closed with {{ end }}")
    return nodes, i


class _Scope:
    def __init__(self, root: dict):
        self.root, self.dot, self.vars = root, root, [{}]

    def lookup(self, name: str):
        for frame in reversed(self.vars):
            if name in frame:
                return frame[name]
        raise ValueError(f"undefined variable ${name}")

    def assign(self, name: str, value, declare: bool):
        if declare:
            self.vars[-1][name] = value
            return
        for frame in reversed(self.vars):
            if name in frame:
                frame[name] = value
                return
        raise ValueError(f"assignment to undeclared variable ${name}")


def _split_args(expr: str) -> list[str]:
    """Top-level words of a pipeline: quoted strings and parenthesised groups stay whole."""
    words, depth, current, quoted = [], 0, "", False
    for ch in expr:
        if ch == '"' and depth == 0:
            quoted = not quoted
        if ch == " " and depth == 0 and not quoted:
            if current:
                words.append(current)
            current = ""
            continue
        depth += (ch == "(") - (ch == ")") if not quoted else 0
        current += ch
    if current:
        words.append(current)
    return words


_GO_LONG_ESCAPE = re.compile(r"\\\\|\\U([0-9a-fA-F]{8})")


def _as_json_escape(match: re.Match) -> str:
    """Go's \\UXXXXXXXX as JSON's surrogate pair (an escaped backslash stays as it is)."""
    if match.group(1) is None:
        return match.group(0)
    return json.dumps(chr(int(match.group(1), 16)))[1:-1]


def _value(word: str, scope: _Scope):
    if word.startswith("(") and word.endswith(")"):
        return _eval(word[1:-1].strip(), scope)
    if word.startswith('"'):  # Go's escapes in double-quoted strings are JSON's, and \\U for a code point past U+FFFF
        return json.loads(_GO_LONG_ESCAPE.sub(_as_json_escape, word))
    if word in ("true", "false"):
        return word == "true"
    if word.startswith("$."):
        return scope.root.get(word[2:])
    if word.startswith("$"):
        return scope.lookup(word[1:])
    if word.startswith("."):
        return scope.dot.get(word[1:]) if isinstance(scope.dot, dict) else None
    raise ValueError(f"unsupported value {word!r}")


def _eval(expr: str, scope: _Scope):
    words = _split_args(expr)
    if len(words) == 1:
        return _value(words[0], scope)
    fn, args = words[0], [_value(w, scope) for w in words[1:]]
    if fn == "eq":
        return any(args[0] == other for other in args[1:])
    if fn == "and":
        return all(args)
    if fn == "or":
        return any(args)
    if fn == "not" and len(args) == 1:
        return not args[0]
    raise ValueError(f"unsupported function {fn!r}")


def _run(nodes: list[_Node], scope: _Scope, out: list[str]) -> None:
    for node in nodes:
        if node.kind == "text":
            out.append(node.arg)
        elif node.kind == "out":
            value = _eval(node.arg, scope)
            out.append("" if value is None else str(value))
        elif node.kind == "set":
            name, op, expr = re.fullmatch(r"\$(\w+)\s*(:?=)\s*(.*)", node.arg).groups()
            scope.assign(name, _eval(expr, scope), declare=op == ":=")
        elif node.kind == "if":
            for condition, body in node.branches:
                if condition is None or _eval(condition, scope):
                    scope.vars.append({})
                    _run(body, scope, out)
                    scope.vars.pop()
                    break
        elif node.kind == "range":
            items = _eval(node.arg, scope) or []
            before = scope.dot
            for item in items:
                scope.dot = item
                scope.vars.append({})
                _run(node.body, scope, out)
                scope.vars.pop()
            scope.dot = before


def render(source: str, values: dict) -> str:
    """The text a Go template writes for `values` (see the module docstring for the subset)."""
    out: list[str] = []
    _run(parse(source), _Scope(values), out)
    return "".join(out)


def ollama_values(messages: list[dict], modelfile_system: str | None) -> dict:
    """What Ollama gives a chat template: the Modelfile's SYSTEM is a leading system message when the request
    has none; .System joins all system messages."""
    if modelfile_system and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": modelfile_system}, *messages]
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    return {"System": system, "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
