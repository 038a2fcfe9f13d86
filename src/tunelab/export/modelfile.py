"""An Ollama Modelfile for an exported GGUF: FROM the file, the prompt TEMPLATE in Go template syntax, stop tokens,
and the run's SYSTEM prompt.

The template is not parsed from jinja. The run's template is rendered on probe conversations and accepted as
ChatML-style only if it writes exactly `<|im_start|>role\\ncontent<|im_end|>\\n` per message, allowing a leading BOS
and a default system block inserted when the conversation has none (SmolLM2 does this); the Go template then
writes the same text. Other templates get no TEMPLATE line: Ollama then chooses one from the chat template stored
in the GGUF.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tunelab.data.templates import Template, chatml
from tunelab.errors import ConfigError

MODELFILE = "Modelfile"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"

_PROBES = (
    [{"role": "user", "content": "Q1"}],
    [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}],
)
_WITH_SYSTEM = [{"role": "system", "content": "S0"}, *_PROBES[1]]
_SYSTEM_BLOCK = re.compile(re.escape(f"{IM_START}system\n") + "(.*)" + re.escape(f"{IM_END}\n"), re.DOTALL)


@dataclass(frozen=True)
class ChatmlStyle:
    bos: str  # what the template writes before the first message ("" or the BOS token text)
    default_system: str | None  # the system prompt it inserts when the conversation has none


def chatml_style(template: Template, bos_token: str | None) -> ChatmlStyle | None:
    """How the template writes ChatML, or None if it writes anything else (see the module docstring)."""
    try:
        first = template.write(list(_PROBES[0]), True)
        with_system = template.write(list(_WITH_SYSTEM), True)
        multi = template.write(list(_PROBES[1]), True)
    except Exception:
        return None
    expected = chatml(_PROBES[0], True)
    if not first.endswith(expected):
        return None
    prefix = first[: len(first) - len(expected)]
    for bos in dict.fromkeys(("", bos_token or "")):  # SmolLM2's BOS is <|im_start|> itself: try without BOS first
        if not prefix.startswith(bos):
            continue
        block, default = prefix[len(bos) :], None
        if block:
            match = _SYSTEM_BLOCK.fullmatch(block)
            if match is None or IM_START in match.group(1):
                continue
            default = match.group(1)
        if with_system == bos + chatml(_WITH_SYSTEM, True) and multi == prefix + chatml(_PROBES[1], True):
            return ChatmlStyle(bos, default)
    return None


def _go_literal(text: str) -> str:
    """Text placed literally in a Go template: `{{` would open an action, so it is written as an action itself."""
    return text.replace("{{", '{{ "{{" }}')


def go_template(style: ChatmlStyle) -> str:
    """Ollama's variables: .System (SYSTEM or the conversation's system messages), .Messages (.Role, .Content);
    system messages are skipped in the loop because .System already holds them."""
    system = f"{IM_START}system\n{{{{ .System }}}}{IM_END}\n"
    if style.default_system is not None:
        head = f"{{{{ if .System }}}}{system}{{{{ else }}}}{IM_START}system\n{_go_literal(style.default_system)}{IM_END}\n{{{{ end }}}}"
    else:
        head = f"{{{{ if .System }}}}{system}{{{{ end }}}}"
    turns = (
        '{{ range .Messages }}{{ if eq .Role "user" }}'
        f"{IM_START}user\n{{{{ .Content }}}}{IM_END}\n{IM_START}assistant\n"
        '{{ else if eq .Role "assistant" }}'
        f"{{{{ .Content }}}}{IM_END}\n"
        "{{ end }}{{ end }}"
    )
    return _go_literal(style.bos) + head + turns


def _triple_quoted(text: str, what: str) -> str:
    if '"""' in text:
        raise ConfigError(
            f'the {what} contains """, which an Ollama Modelfile cannot quote; remove it or export without it.'
        )
    return f'"""{text}"""'


def stop_tokens(template: Template, tokenizer, chatml_like: bool) -> list[str]:
    ids = list(template.stop_token_ids) or ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
    tokens = [tokenizer.convert_ids_to_tokens(i) for i in ids]
    if chatml_like and IM_START in tokenizer.get_added_vocab() and IM_START not in tokens:
        tokens.append(IM_START)  # a new turn starting means the answer is over
    return tokens


def modelfile_text(gguf_name: str, template: Template, tokenizer, system_prompt: str | None) -> str:
    """The Modelfile for `gguf_name` in the same folder (`ollama create NAME -f Modelfile`)."""
    style = chatml_style(template, tokenizer.bos_token)
    lines = ["# Ollama Modelfile written by tunelab export: ollama create NAME -f Modelfile", f"FROM ./{gguf_name}", ""]
    if style is not None:
        lines.append(f"TEMPLATE {_triple_quoted(go_template(style), 'chat template')}")
    else:
        lines.append(
            f"# No TEMPLATE: the run's template ({template.name}) is not ChatML-style; Ollama picks one from the chat template in the GGUF."
        )
    for token in stop_tokens(template, tokenizer, style is not None):
        lines.append(f'PARAMETER stop "{token}"')
    if system_prompt:
        lines.append(f"SYSTEM {_triple_quoted(system_prompt, 'system prompt')}")
    return "\n".join(lines) + "\n"
