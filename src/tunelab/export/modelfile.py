"""An Ollama Modelfile for an exported GGUF: FROM the file, the prompt TEMPLATE in Go template syntax, stop tokens,
and the run's SYSTEM prompt.

The TEMPLATE is not translated from jinja. Most chat templates (ChatML and SmolLM2's, Qwen2/2.5, Llama 3, Mistral's
`[INST]`, tunelab's chatml and alpaca) write every message inside a fixed wrapper:

    HEAD [SYSTEM_PRE system SYSTEM_SUF | DEFAULT_SYSTEM] (USER_PRE user USER_SUF ASSISTANT_PRE answer ASSISTANT_SUF)*

`turn_style` finds those pieces by rendering the run's own template on marker conversations, then re-renders
several conversations both ways (the run's template, and the Go template through export/gotemplate.py) and accepts
the style only if every one matches byte for byte. Llama 2's template (the system prompt inside the first user turn)
has its own Go template. Templates that fit neither (they rewrite earlier turns, put the system prompt in the last
turn, ...) get no TEMPLATE line: Ollama then picks one from the chat template stored in the GGUF, and the export's
self-check reports it.

A BOS the template writes at the very start is left out of the Go template when llama.cpp adds BOS itself
(`tokenizer.ggml.add_bos_token`), so the model sees it once, as in training.

What is written is what Ollama's reader (parser/parser.go) gives back: it drops, from quoted values, every character
Go does not print (`ollama_drops`), so the TEMPLATE writes those as escapes in Go string actions, and a SYSTEM holding
one is left to the TEMPLATE's default where that writes the run's prompt, or else left out with a comment.
"""

from __future__ import annotations

import re
import shlex
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from tunelab.config.run import RunConfig
from tunelab.data.templates import Template
from tunelab.export.gotemplate import ollama_values, render


def modelfile_path(gguf: Path) -> Path:
    """The Modelfile of the GGUF file `gguf`: `NAME.Modelfile` beside `NAME.gguf`, so that exports into one folder
    (a q4_k_m and a q8_0) each keep their own (`ollama create NAME -f NAME.Modelfile`)."""
    return gguf.with_name(f"{gguf.stem}.Modelfile")


def ollama_name(gguf: Path) -> str:
    """The model name the printed `ollama create NAME -f ...` lines give the export of `gguf`: its file's stem in the
    letters Ollama takes in a name (lower case, digits, '.', '_', '-'; anything else a '-'), starting with one of
    the first two, and at most the 80 characters Ollama takes (types/model/name.go)."""
    name = re.sub(r"[^a-z0-9._-]+", "-", gguf.stem.lower()).lstrip("._-")
    return name[:OLLAMA_NAME_MAX] or "model"


OLLAMA_NAME_MAX = 80


def ollama_command(gguf: str | Path) -> str:
    """The command that makes an Ollama model of the export `gguf` from the Modelfile beside it, as `tunelab export`
    prints it: `ollama create NAME -f PATH/NAME.Modelfile`, the path quoted for a POSIX shell."""
    gguf = Path(gguf)
    return f"ollama create {ollama_name(gguf)} -f {shlex.quote(str(modelfile_path(gguf)))}"


# Marker texts: plain words that no template rewrites and that do not occur in template text.
_S, _Q1, _A1, _Q2, _A2 = "SYSTEMMARKER", "QUESTIONONE", "ANSWERONE", "QUESTIONTWO", "ANSWERTWO"


def _u(text):
    return {"role": "user", "content": text}


def _a(text):
    return {"role": "assistant", "content": text}


def _sys(text):
    return {"role": "system", "content": text}


PROBES = (
    [_u("Hello")],
    [_u("What is 2+2?"), _a("4"), _u("And 3+3?")],
    [_sys("Be brief."), _u("Hi"), _a("Hello!"), _u("Bye")],
    [_sys("Be brief."), _u("Hi"), _a("Hello!")],
    [_u("Line one\nline two"), _a("Yes:\n- a\n- b"), _u("More?"), _a("No.")],
)


@dataclass(frozen=True)
class TurnStyle:
    """The fixed pieces a wrapper-style template writes (see the module docstring)."""

    head: str
    system: tuple[str, str] | None  # (prefix, suffix) around a system message; None: the template takes none
    default_system: str  # what it writes when there is no system message ("" when nothing)
    user: tuple[str, str]
    assistant: tuple[str, str]


def _between(text: str, left: str, right: str) -> str | None:
    i = text.find(left)
    j = text.find(right, i + len(left)) if i >= 0 else -1
    return text[i + len(left) : j] if j >= 0 else None


def _write(template: Template, messages: list[dict], generation: bool) -> str | None:
    """The training text (BOS and the EOS the recipe inserts after answers included), None if the template
    refuses the conversation."""
    try:
        return template.render([dict(m) for m in messages], generation)[0]
    except Exception:
        return None


def infer_style(template: Template, head: str) -> TurnStyle | None:
    """The wrapper pieces of `template`, read from marker conversations, for a given HEAD (what it writes before
    everything: "" or BOS); None if it does not look like a wrapper template."""
    r_gen = _write(template, [_u(_Q1)], True)
    r_user = _write(template, [_u(_Q1)], False)
    r_pair = _write(template, [_u(_Q1), _a(_A1)], False)
    r_two = _write(template, [_u(_Q1), _a(_A1), _u(_Q2)], True)
    if None in (r_gen, r_user, r_pair, r_two):
        return None
    user_suf = r_user.partition(_Q1)[2]
    assistant_suf = r_pair.partition(_A1)[2]
    between = _between(r_two, _A1, _Q2)
    gen = r_gen.partition(_Q1)[2]
    if between is None or not between.startswith(assistant_suf) or not gen.startswith(user_suf):
        return None
    user_pre = between[len(assistant_suf) :]
    lead = r_gen.partition(_Q1)[0]
    if not lead.endswith(user_pre) or not lead.startswith(head):
        return None
    lead = lead[len(head) : len(lead) - len(user_pre)]  # the default system block
    r_sys = _write(template, [_sys(_S), _u(_Q1)], True)
    system = None
    if r_sys is not None and _S in r_sys:
        before, _, after = r_sys.partition(_S)
        if before.startswith(head) and user_pre + _Q1 in after:
            system = (before[len(head) :], after[: after.index(user_pre + _Q1)])
    return TurnStyle(head, system, lead, (user_pre, user_suf), (gen[len(user_suf) :], assistant_suf))


def ollama_drops(ch: str) -> bool:
    """Whether Ollama's Modelfile reader (parser/parser.go, ParseFile) drops `ch` from a quoted value: it keeps line
    ends, spaces and tabs, and of the other characters only those Go's strconv.IsPrint calls printable (letters,
    marks, numbers, punctuation, symbols), so a zero-width space or joiner, a no-break space, a soft hyphen, a
    direction mark or a control character is lost without a word."""
    return ch not in "\n\r\t" and not ch.isprintable()


def _go_char(ch: str) -> str:
    """`ch` as a Go string action, in ASCII escapes Ollama's reader keeps and Go's template unquotes back."""
    code = ord(ch)
    return f'{{{{ "\\u{code:04x}" }}}}' if code <= 0xFFFF else f'{{{{ "\\U{code:08x}" }}}}'


def _go_literal(text: str) -> str:
    """Text placed literally in a Go template: `{{` would open an action, so it is written as an action itself, and
    a character Ollama's reader drops (ollama_drops) as an action holding its escape."""
    text = text.replace("{{", '{{ "{{" }}')
    return "".join(_go_char(ch) if ollama_drops(ch) else ch for ch in text)


def wrapper_template(style: TurnStyle, adds_bos: bool) -> str:
    """Ollama's variables: .System (SYSTEM or the conversation's system messages), .Messages (.Role, .Content);
    system messages are skipped in the loop because .System already holds them."""
    g = _go_literal
    head = "" if adds_bos else g(style.head)
    if style.system is not None:
        pre, suf = style.system
        head += f"{{{{ if .System }}}}{g(pre)}{{{{ .System }}}}{g(suf)}"
        head += f"{{{{ else }}}}{g(style.default_system)}{{{{ end }}}}" if style.default_system else "{{ end }}"
    else:
        head += g(style.default_system)
    (u_pre, u_suf), (a_pre, a_suf) = style.user, style.assistant
    turns = (
        f'{{{{ range .Messages }}}}{{{{ if eq .Role "user" }}}}{g(u_pre)}{{{{ .Content }}}}{g(u_suf + a_pre)}'
        f'{{{{ else if eq .Role "assistant" }}}}{{{{ .Content }}}}{g(a_suf)}{{{{ end }}}}{{{{ end }}}}'
    )
    return head + turns


def llama2_template(bos: str, eos: str, adds_bos: bool) -> str:
    """tunelab's llama2 template in Go: BOS before every user turn (but the first when llama.cpp adds it), the
    system prompt inside the first user turn, contents stripped as the Python template does (Go cannot strip, so a
    conversation with padded contents would differ: the self-check would say so)."""
    g = _go_literal
    first_bos = "" if adds_bos else g(bos)
    return (
        "{{ $first := true }}{{ range .Messages }}"
        f'{{{{ if eq .Role "user" }}}}{{{{ if $first }}}}{first_bos}{{{{ else }}}}{g(bos)}{{{{ end }}}}[INST] '
        "{{ if and $first $.System }}<<SYS>>\n{{ $.System }}\n<</SYS>>\n\n{{ end }}"
        "{{ .Content }} [/INST]{{ $first = false }}"
        f'{{{{ else if eq .Role "assistant" }}}} {{{{ .Content }}}} {g(eos)}{{{{ end }}}}{{{{ end }}}}'
    )


def training_text(template: Template, messages: list[dict], generation: bool) -> str:
    """What the model saw in training for this conversation (BOS and EOS the recipe adds included)."""
    text, _ = template.render([dict(m) for m in messages], generation)
    return text


def ollama_text(go_template: str, messages: list[dict], system: str | None, bos: str, adds_bos: bool) -> str:
    """What llama.cpp tokenizes when Ollama prompts with this TEMPLATE: the rendering, after BOS if llama.cpp adds it."""
    return (bos if adds_bos else "") + render(go_template, ollama_values(messages, system))


def go_template_for(template: Template, tokenizer, adds_bos: bool) -> str | None:
    """A Go template that renders what `template` does on every probe conversation, or None."""
    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
    if template.name == "llama2":
        candidates = [llama2_template(bos, eos, adds_bos)]
    else:  # a head of "" first: SmolLM2's BOS is <|im_start|>, which its template writes as part of the system block
        styles = [infer_style(template, head) for head in dict.fromkeys(("", bos))]
        candidates = [wrapper_template(style, adds_bos) for style in styles if style is not None]
    probes = [p for p in PROBES if style_accepts(template, p)]
    for candidate in candidates:
        if probes and all(renders_like(candidate, template, p, None, bos, adds_bos) for p in probes):
            return candidate
    return None


def renders_like(
    go_template: str, template: Template, messages: list[dict], system: str | None, bos: str, adds_bos: bool
) -> bool:
    """Whether Ollama's text equals the training text for this conversation: the prompt up to each answer (what
    generation starts from) and, when it ends with an answer, the whole conversation."""
    trained = messages  # training added data.system_prompt to conversations without one; Ollama adds SYSTEM
    if system and not any(m["role"] == "system" for m in messages):
        trained = [_sys(system), *messages]
    ends_with_answer = messages[-1]["role"] == "assistant"
    prompt, trained_prompt = (messages[:-1], trained[:-1]) if ends_with_answer else (messages, trained)
    if ollama_text(go_template, prompt, system, bos, adds_bos) != training_text(template, trained_prompt, True):
        return False
    if not ends_with_answer:
        return True
    return ollama_text(go_template, messages, system, bos, adds_bos) == training_text(template, trained, False)


def style_accepts(template: Template, messages: list[dict]) -> bool:
    """Whether the run's template renders this conversation at all (Mistral's refuses system messages)."""
    return _write(template, messages, False) is not None


UNQUOTABLE = '# No {key}: the {what} holds """, which a Modelfile cannot quote; '
DROPPED = "# No {key}: the {what} holds {chars}, which Ollama's Modelfile reader drops; "


def _listed(dropped: list[tuple[int, str]]) -> str:
    """The first three (position, character) of `dropped` by code point, name and place, and how many more."""
    named = [f"U+{ord(ch):04X} {unicodedata.name(ch, 'control character')} (character {i + 1})" for i, ch in dropped]
    return ", ".join(named[:3]) + (f" and {len(named) - 3} more" if len(named) > 3 else "")


def _triple_quoted(key: str, text: str, what: str, instead: str) -> str:
    """KEY and the text in triple quotes, or, for a text that holds triple quotes itself or characters Ollama's
    reader drops (ollama_drops: so that Ollama would read another text than the run's), a comment saying why and
    what stands in its place. A TEMPLATE holds no such characters: _go_literal writes them as escapes."""
    if '"""' in text:
        return UNQUOTABLE.format(key=key, what=what) + instead
    dropped = [(i, ch) for i, ch in enumerate(text) if ollama_drops(ch)]
    if dropped:
        return DROPPED.format(key=key, what=what, chars=_listed(dropped)) + instead
    return f'{key} """{text}"""'


def left_out(text: str) -> dict[str, str]:
    """{KEY: why} for each TEMPLATE or SYSTEM a Modelfile written by modelfile_text leaves out with a comment."""
    lines = (line[len("# No ") :] for line in text.splitlines() if line.startswith("# No "))
    return dict(line.split(": ", 1) for line in lines if ": " in line)


_USER_TURN = re.compile(r'\{\{ if eq \.Role "user" \}\}(.*?)\{\{ \.Content \}\}', re.DOTALL)


def turn_opener(go_template: str | None, tokenizer) -> str | None:
    """The special token a user turn of the Go template opens with (<|im_start|> in ChatML, <|start_header_id|> in
    Llama 3), None where it opens with text or the template has no wrapper's user turn."""
    found = _USER_TURN.search(go_template or "")
    if found is None:
        return None
    opening = [t for t in tokenizer.get_added_vocab() if t and found.group(1).startswith(t)]
    return max(opening, key=len) if opening else None


def stop_tokens(template: Template, tokenizer, go_template: str | None) -> list[str]:
    """The trained end-of-turn tokens, and the special token a new user turn opens with (<|im_start|>,
    <|start_header_id|>): an answer that runs on into a turn of its own ends there, as Ollama's own Modelfiles for
    these families stop."""
    ids = list(template.stop_token_ids) or ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
    tokens = [tokenizer.convert_ids_to_tokens(i) for i in ids]
    opener = turn_opener(go_template, tokenizer)
    if opener is not None and opener not in tokens:
        tokens.append(opener)
    return tokens


# Ollama's name for each sampling setting of a transformers GenerationConfig
_OLLAMA_NAMES = (
    ("temperature", "temperature"),
    ("top_p", "top_p"),
    ("top_k", "top_k"),
    ("min_p", "min_p"),
    ("repetition_penalty", "repeat_penalty"),
)


def sampling_parameters(cfg: RunConfig | None, generation_config) -> list[tuple[str, float | int, str]]:
    """(Ollama PARAMETER, value, where it comes from) for the sampling the run's model answers with; without them
    Ollama samples with its own defaults (temperature 0.8, top_p 0.9, top_k 40, repeat_penalty 1.1). Every run: what
    `tunelab chat`, `generate` and `serve` answer with by default, greedily and with no repetition penalty (they do
    not apply the model's generation_config, and neither does this), as export's check compares. A grpo run too: its
    eval reward, and train.keep_best by it, judged greedy answers (tasks/grpo.py), so greedy answers are those its
    figures describe; the comment gives the PARAMETER lines of the sampling its rollouts were drawn with
    (grpo.temperature, grpo.top_p, no top-k), and num_predict is grpo.max_new_tokens, the longest answer it trained
    on. Where the base model's generation_config samples (Qwen's temperature 0.7, top_p 0.8, ...) the comment says
    so, with the PARAMETER lines that sample as it does. None (the run's config unreadable): nothing."""
    if cfg is None:
        return []
    why = "greedy, as tunelab chat, generate and serve answer by default (--temperature 0) and export's check did"
    length = []
    if cfg.task == "grpo":
        g = cfg.grpo
        why += (
            ", and as the run's eval reward (and train.keep_best) judged its answers; its rollouts were sampled with "
            f"PARAMETER temperature {_number(g.temperature)}, PARAMETER top_p {_number(g.top_p)}, PARAMETER top_k 0"
        )
        length = [("num_predict", g.max_new_tokens, "grpo.max_new_tokens: the longest answer trained on")]
    set_here = generation_config.to_diff_dict() if generation_config is not None else {}
    base = [
        f"PARAMETER {ollama} {_number(set_here[name])}"
        for name, ollama in _OLLAMA_NAMES
        if isinstance(set_here.get(name), int | float) and not isinstance(set_here.get(name), bool)
    ]
    if set_here.get("do_sample") and base:
        why += f"; the base model's generation_config.json samples instead with {', '.join(base)}"
    return [
        ("temperature", 0, why),
        ("repeat_penalty", 1, "no repetition penalty, as tunelab's default --repetition-penalty 1 (Ollama's is 1.1)"),
        *length,
    ]


# Ollama's default context (num_ctx): 2048 before 0.6.7, 4096 from it, and from 0.15.5 4096 / 32768 / 262144 by the
# GPU's memory (under 24 GiB / under 48 GiB / more), never past the model's own. A Modelfile's num_ctx replaces that
# choice (and the smaller context 0.15.5 and later fall back to when the larger one does not fit), so it is written
# only where some Ollama's default would cut a conversation as long as those the run trained on.
OLLAMA_OLDEST_CONTEXT = 2048
OLLAMA_SMALL_GPU_CONTEXT = 4096


def context_parameter(trained: tuple[int, str] | None, context: int) -> tuple[int | None, str] | None:
    """(num_ctx or None, the comment saying why) for a model whose context is `context` tokens (the GGUF's
    context_length) and that trained on sequences of up to `trained` = (tokens, the option that set it:
    data.max_length, a staged run's longest stage's: gguf.longest_trained); Ollama cuts the oldest messages of a chat
    longer than num_ctx without a word. Where that length passes Ollama's oldest default (2048), num_ctx is that
    length, at least Ollama's small-GPU default (4096, which it would not lower), at most the model's context;
    otherwise every trained conversation fits every default and none is written (a larger GPU gets a larger default
    from Ollama 0.15.5). None (the run's config unreadable): nothing."""
    if trained is None:
        return None
    length, option = trained
    longer = f"PARAMETER num_ctx N (at most the model's context, {context}) holds longer chats, in more memory"
    if length <= OLLAMA_OLDEST_CONTEXT or context <= OLLAMA_OLDEST_CONTEXT:
        return None, (  # not "No ...": export prints the Modelfile's "# No " lines as things it left out
            f"num_ctx is left to Ollama: the run trained on sequences of up to {length} tokens ({option}), "
            f"which its default context holds ({OLLAMA_OLDEST_CONTEXT} before 0.6.7, {OLLAMA_SMALL_GPU_CONTEXT} or "
            f"more by GPU memory since); {longer}"
        )
    value = min(context, max(length, OLLAMA_SMALL_GPU_CONTEXT))
    cutting = f"{OLLAMA_OLDEST_CONTEXT} before 0.6.7" + (
        f", {OLLAMA_SMALL_GPU_CONTEXT} on a small GPU since" if length > OLLAMA_SMALL_GPU_CONTEXT else ""
    )
    return value, (
        f"the run trained on sequences of up to {length} tokens ({option}), longer than Ollama's default "
        f"context ({cutting}), which cuts the oldest messages; {longer}; without this line Ollama 0.15.5 and later "
        "size it by GPU memory"
    )


def _number(value: float | int) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


MODELFILE_HEAD = "# Ollama Modelfile written by tunelab export"  # its first line: an export replaces only such a file


def modelfile_text(
    gguf_name: str,
    template: Template,
    tokenizer,
    system_prompt: str | None,
    adds_bos: bool = False,
    sampling: list[tuple[str, float | int, str]] = (),
    context: tuple[int | None, str] | None = None,
) -> str:
    """The Modelfile for `gguf_name` in the same folder (`ollama create NAME -f GGUF_STEM.Modelfile`, NAME by
    ollama_name); `sampling` from sampling_parameters, `context` from context_parameter."""
    go = go_template_for(template, tokenizer, adds_bos)
    lines = [
        f"{MODELFILE_HEAD}: ollama create {ollama_name(Path(gguf_name))} -f "
        f"{shlex.quote(modelfile_path(Path(gguf_name)).name)}",
        f"FROM ./{gguf_name}",
        "",
    ]
    if go is not None:
        lines.append(_triple_quoted("TEMPLATE", go, "chat template", "Ollama picks one from the GGUF's chat template."))
    else:
        lines.append(
            f"# No TEMPLATE: the run's template ({template.name}) does not write each message in a fixed wrapper; "
            "Ollama picks one from the chat template in the GGUF."
        )
    for token in stop_tokens(template, tokenizer, go):
        lines.append(f'PARAMETER stop "{token}"')
    for name, value, why in sampling:  # the comment on a line of its own: Ollama reads a PARAMETER's rest as its value
        lines += [
            f"# {why}",
            f"PARAMETER {name} {_number(value)}",
        ]
    if context is not None:
        num_ctx, why = context
        lines += [f"# {why}"] + ([f"PARAMETER num_ctx {num_ctx}"] if num_ctx is not None else [])
    dropped = [(i, ch) for i, ch in enumerate(system_prompt or "") if ollama_drops(ch)]
    if (
        dropped
        and '"""' not in system_prompt
        and go is not None
        and '"""' not in go
        and _writes_by_default(template, system_prompt)
    ):  # not "No ...": nothing is missing, as Ollama prompts with the TEMPLATE's default where a chat brings none
        lines.append(
            f"# SYSTEM is left to the TEMPLATE: the run's system prompt holds {_listed(dropped)}, which Ollama's "
            "Modelfile reader drops; the TEMPLATE writes it, escaped, where a chat brings no system message."
        )
    elif system_prompt:
        lines.append(
            _triple_quoted("SYSTEM", system_prompt, "run's system prompt", "give it as each chat's system message.")
        )
    return "\n".join(lines) + "\n"


def _writes_by_default(template: Template, system_prompt: str) -> bool:
    """Whether `template` writes the run's system prompt into a conversation that brings none (a run's saved
    tokenizer's template does: templates.with_system_default), so a Go template that renders it alike does too."""
    text = _write(template, [_u("Hello")], True)
    return text is not None and system_prompt in text


def _read_triple_quoted(text: str, key: str) -> str | None:
    """What `_triple_quoted` wrote for `key` in a Modelfile written by modelfile_text, or None where it wrote none."""
    opening = f'{key} """'
    start = text.find(opening)
    if start < 0:
        return None
    start += len(opening)
    return text[start : text.index('"""', start)]


def modelfile_template(text: str) -> str | None:
    """The TEMPLATE of a Modelfile written by modelfile_text, or None."""
    return _read_triple_quoted(text, "TEMPLATE")


def modelfile_system(text: str) -> str | None:
    """The SYSTEM prompt of a Modelfile written by modelfile_text, or None."""
    return _read_triple_quoted(text, "SYSTEM")


def modelfile_parameters(text: str) -> dict[str, str]:
    """The PARAMETER lines other than stop of a Modelfile written by modelfile_text: {name: value}."""
    pairs = (line.split() for line in text.splitlines() if line.startswith("PARAMETER "))
    return {p[1]: p[2] for p in pairs if len(p) == 3 and p[1] != "stop"}


def modelfile_stops(text: str) -> list[str]:
    return [line[len('PARAMETER stop "') : -1] for line in text.splitlines() if line.startswith('PARAMETER stop "')]
