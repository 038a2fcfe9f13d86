"""A Modelfile read the way `ollama create` reads it (ollama/ollama parser/parser.go, ParseFile and
CreateRequest, with api.FormatParams typing each PARAMETER), for tests of what tunelab writes.

The grammar, as Ollama's state machine has it: a line starting with `#` is a comment; a command is a word of letters
(`PARAMETER` followed by a name of letters, digits and `_`), one space, then a value that runs to the end of the line,
inner spaces included. The value is read at each space and line end: where it starts with `\"\"\"` or `"` it goes on
(across lines too) until it ends with the same quotes, which are then taken off; otherwise the line end closes it.
Leading and trailing spaces are dropped, and so are runes Go does not print (a tab inside an unquoted value is kept:
Ollama writes the space or tab that ended a word without that test). A PARAMETER Ollama does not know, or a value
that is not of its type, stops `ollama create`.
"""

from __future__ import annotations

# api.Options' fields by their json name: what FormatParams turns each PARAMETER's text into
OPTION_TYPES = {
    "num_ctx": int,
    "num_batch": int,
    "num_gpu": int,
    "num_thread": int,
    "num_keep": int,
    "seed": int,
    "num_predict": int,
    "top_k": int,
    "top_p": float,
    "min_p": float,
    "typical_p": float,
    "repeat_last_n": int,
    "temperature": float,
    "repeat_penalty": float,
    "presence_penalty": float,
    "frequency_penalty": float,
    "stop": list,
}
COMMANDS = ("from", "license", "template", "system", "adapter", "draft", "renderer", "parser", "parameter", "message")


class ModelfileError(ValueError):
    pass


def _unquote(text: str) -> tuple[str, bool]:
    if text.startswith('"""'):
        return (text[3:-3], True) if len(text) >= 6 and text.endswith('"""') else ("", False)
    if text.startswith('"'):
        return (text[1:-1], True) if len(text) >= 2 and text.endswith('"') else ("", False)
    return text, True


def _printable(ch: str) -> bool:
    return ch.isprintable()  # Go's strconv.IsPrint: letters, marks, numbers, punctuation, symbols and ASCII space


def parse(text: str) -> list[tuple[str, str]]:
    """[(command, value)], command lower case ("model" for FROM, the option's name for a PARAMETER)."""
    commands: list[tuple[str, str]] = []
    state, buf, name = "nil", "", ""
    for ch, line in _runes_with_lines(text):
        newline, space = ch in "\r\n", ch in " \t"
        if state == "nil":
            if ch == "#":
                state = "comment"
            elif not (newline or space):
                state, buf = "name", ch
            continue
        if state == "comment":
            state = "nil" if newline else "comment"
            continue
        if state == "name":
            if ch.isascii() and ch.isalpha():
                buf += ch
            elif space:
                word = buf.lower()
                if word not in COMMANDS:
                    raise ModelfileError(f"line {line}: command must be one of {', '.join(COMMANDS)}; got {buf!r}")
                state, buf = ("parameter" if word == "parameter" else "value"), ""
                name = "model" if word == "from" else word
            else:
                raise ModelfileError(f"line {line}: {buf + ch!r} is not a command")
            continue
        if state == "parameter":
            if ch.isascii() and (ch.isalnum() or ch == "_"):
                buf += ch
            elif space:
                state, buf, name = "value", "", buf
            else:
                raise ModelfileError(f"line {line}: unexpected {ch!r} in a PARAMETER name")
            continue
        # state == "value"
        if newline or space:
            value, complete = _unquote(buf.strip(" \t\r\n"))
            if not complete or space:
                buf += ch
                continue
            commands.append((name, value))
            state, buf = "nil", ""
            continue
        if _printable(ch):
            buf += ch
    if state == "value":
        value, complete = _unquote(buf.strip(" \t\r\n"))
        if not complete:
            raise ModelfileError(f"unexpected end of file in a quoted value: {buf[:40]!r}")
        commands.append((name, value))
    elif state not in ("nil", "comment"):
        raise ModelfileError("unexpected end of file")
    if not any(command == "model" for command, _ in commands):
        raise ModelfileError("no FROM line")
    return commands


def _runes_with_lines(text: str):
    line = 1
    for ch in text:
        if ch in "\r\n":
            line += 1
        yield ch, line


def create_request(text: str) -> dict:
    """What `ollama create` sends for this Modelfile: from (the path as written), template, system, and parameters
    typed as Ollama's options (stop a list); an unknown PARAMETER or a value of the wrong type is a ModelfileError."""
    request: dict = {"parameters": {}}
    for command, value in parse(text):
        if command == "model":
            request["from"] = value
        elif command in ("template", "system", "license", "adapter"):
            request[command] = value
        elif command in OPTION_TYPES:
            kind = OPTION_TYPES[command]
            if kind is list:
                request["parameters"].setdefault(command, []).append(value)
                continue
            try:
                request["parameters"][command] = kind(value)
            except ValueError:
                raise ModelfileError(f"invalid {kind.__name__} value {value!r} for {command}") from None
        else:
            raise ModelfileError(f"unknown parameter '{command}'")
    return request
