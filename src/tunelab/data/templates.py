"""Prompt templates: a conversation -> the text the model sees, plus the character spans the loss is computed on.

A template is only a function `write(messages, add_generation_prompt) -> str`: the tokenizer's own jinja chat
template, or one of the named templates below (plain Python, for models without one). Assistant spans are found
the same way for all of them, without parsing the output: for the assistant message at index i,

    before  = write(messages[:i], add_generation_prompt=True)    # everything up to the assistant's first character
    through = write(messages[:i + 1])                            # ... and including its message
    span    = [len(before), len(through.rstrip()))               # the answer and its end-of-turn marker, no newline

which needs the full rendering to start with every such prefix; templates that rewrite earlier turns (e.g. strip
reasoning from old answers) break that and are refused with an error naming the template.

So that the model learns to stop, each span must end with a token generation stops on: the end-of-turn marker if
it is a single special token (ChatML `<|im_end|>`, Llama 3 `<|eot_id|>`, Gemma `<end_of_turn>`), else the EOS token,
which is appended to the answer when the template writes neither. `stop_token_ids` lists those tokens.

Each named template is defined once, in `NAMED`: the Python function training renders with, and the same text as a
Jinja chat template. `Template.jinja` puts the two together for one tokenizer (its BOS and EOS texts, the BOS that
`render` prepends, the EOS it appends after answers), so a merged or exported model's `apply_chat_template` writes
what training wrote, byte for byte (tests/data/test_templates.py renders both over many conversations).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.errors import ConfigError, RunDirError

_PROBE = "tunelab-probe-answer"
_ROLE = "tunelab_probe_role"  # a role no template knows

# What transformers' apply_chat_template sets in a template itself, or reads as its own arguments: no caller's
# template variable may take these names.
RENDER_ARGUMENTS = frozenset(
    {
        *("messages", "tools", "documents", "add_generation_prompt", "continue_final_message", "chat_template"),
        *("tokenize", "return_dict", "return_tensors", "padding", "truncation", "max_length", "tokenizer_kwargs"),
        *("return_assistant_tokens_mask", "raise_exception", "strftime_now"),
        *("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"),
        "additional_special_tokens",
    }
)
WriteFn = Callable[[list[dict], bool], str]  # the tokenizer's template also takes tools= (OpenAI's tool definitions)

_CALL = {"id": "call00000", "type": "function", "function": {"name": "tunelab_probe_call", "arguments": {}}}
_TOOL = {"type": "function", "function": {"name": "tunelab_probe_tool", "description": "", "parameters": {}}}
# What of a conversation a template may write or not (`Template.uses`): (messages, tools, the probe text shown when
# it is written). Hugging Face chat templates take these as OpenAI sends them (transformers' apply_chat_template).
_USES = {
    "name": ([{"role": "user", "content": "Hi", "name": "tunelab_probe_name"}], None, "tunelab_probe_name"),
    "tools": ([{"role": "user", "content": "Hi"}], [_TOOL], "tunelab_probe_tool"),
    "tool_calls": (
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "", "tool_calls": [_CALL]}],
        None,
        "tunelab_probe_call",
    ),
    "tool": (
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "", "tool_calls": [_CALL]},
            {"role": "tool", "content": "tunelab_probe_result", "tool_call_id": "call00000"},
        ],
        None,
        "tunelab_probe_result",
    ),
}


class TemplateRefused(ConfigError):
    """A prompt template that cannot render a conversation (a Jinja template's own error, e.g. roles that do not
    alternate); `reason` is that error, for a message that gives other advice (`data.render.render_prompt`)."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Template:
    """A resolved prompt template; see the module docstring for how spans are found."""

    name: str
    stop_token_ids: list[int]
    write: WriteFn = field(repr=False)
    end_markers: tuple[str, ...] = ()  # texts that already close an assistant turn (EOS, end-of-turn token)
    eos: str = ""  # appended to an answer whose span does not end with an end marker
    bos: str = ""  # prepended when the tokenizer adds BOS by default and the template did not write it
    jinja: str | None = field(default=None, repr=False)
    """The same text as a Jinja chat template, saved with merged and exported models; None for the tokenizer's
    own template (saved as it is)."""
    source: str | None = field(default=None, repr=False)  # the tokenizer's own Jinja template, None for a named one

    def reads(self) -> frozenset[str] | None:
        """The variables of the tokenizer's template a caller may set (`render`'s `variables`), those the render
        sets itself (RENDER_ARGUMENTS) left out: empty for a named template, None where the template's Jinja
        cannot be parsed here (a tag of transformers' own, such as `generation`), which reads what it reads."""
        if self.source is None:
            return frozenset()
        import jinja2
        from jinja2 import meta

        try:
            tree = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(self.source)
        except jinja2.TemplateSyntaxError:
            return None
        return frozenset(meta.find_undeclared_variables(tree) - RENDER_ARGUMENTS)

    def uses(self, what: str) -> bool:
        """Whether this template writes `what` of a conversation into the prompt: "name" (a message's name),
        "tools" (a request's tool definitions), "tool_calls" (an assistant's calls) or "tool" (a tool's result): a
        probe of it shows in the text rendered. A tool's result counts only where the template writes it otherwise
        than a role it does not know: one that writes every role alike ("<|im_start|>" + role) knows none. The named
        templates write none of them (llama2 and alpaca would write a tool's result as an answer, chatml as a turn
        of a role training never showed)."""
        if self.jinja is not None:  # a named template
            return False
        messages, tools, probe = _USES[what]
        try:
            text = self.write(messages, True, tools=tools) if tools else self.write(messages, True)
        except Exception:  # the template refuses the probe (an unknown role, a call without content): it does not
            return False
        if what != "tool" or probe not in text:
            return probe in text
        # a template that writes any role as it comes ("<|im_start|>" + role, SmolLM2's) writes a tool's result as
        # a turn of a role its model never saw; one that knows the role writes it otherwise than a made-up one
        try:
            other = self.write([*messages[:-1], messages[-1] | {"role": _ROLE}], True)
        except Exception:  # it refuses a role it does not know, and wrote the tool's
            return True
        return other.replace(_ROLE, "tool") != text

    def _write(
        self, messages: list[dict], add_generation_prompt: bool, tools: list[dict] | None = None, variables=None
    ) -> str:
        extra = ({"tools": tools} if tools else {}) | ({"variables": variables} if variables else {})
        try:
            return self.write(messages, add_generation_prompt, **extra)
        except Exception as exc:  # jinja templates raise their own errors (e.g. "roles must alternate")
            raise TemplateRefused(
                f"prompt template '{self.name}' cannot render this conversation ({exc}). Use a conversation the "
                "template accepts, or pick a named template with data.template (chatml, llama2, alpaca).",
                str(exc),
            ) from None

    def render(
        self,
        messages: list[dict],
        add_generation_prompt: bool = False,
        tools: list[dict] | None = None,
        variables: dict | None = None,
    ) -> tuple[str, list[tuple[int, int]]]:
        """The text to tokenize (add_special_tokens=False) and the char spans [start, end) of every assistant answer
        including the marker that ends it. `tools`: OpenAI's tool definitions, for a template that `uses` them;
        `variables`: values of the tokenizer's template's own variables (`reads`), such as Qwen3's enable_thinking."""
        full = self._write(messages, add_generation_prompt, tools, variables)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._write(messages[:i], True, tools, variables) if i else ""
            through = self._write(messages[: i + 1], False, tools, variables)
            if not (through.startswith(before) and full.startswith(through)):
                raise ConfigError(
                    f"prompt template '{self.name}' renders earlier turns of a conversation differently once later turns "
                    f"are added (turn {i + 1}), so the answer tokens cannot be located. Choose another template with "
                    "data.template (chatml, llama2 or alpaca)."
                )
            spans.append((len(before), max(len(before), len(through.rstrip()))))
        text, spans = self._close_turns(full, spans)
        if self.bos and not text.startswith(self.bos):
            text = self.bos + text
            spans = [(s + len(self.bos), e + len(self.bos)) for s, e in spans]
        return text, spans

    def _close_turns(self, text: str, spans: list[tuple[int, int]]) -> tuple[str, list[tuple[int, int]]]:
        """Insert EOS after every answer that does not already end with an end marker; shift the spans to match."""
        if not self.eos:
            return text, spans
        pieces, out, last, shift = [], [], 0, 0
        for start, end in spans:
            if text[start:end].endswith(self.end_markers):
                out.append((start + shift, end + shift))
                continue
            pieces += [text[last:end], self.eos]
            last = end
            out.append((start + shift, end + shift + len(self.eos)))
            shift += len(self.eos)
        pieces.append(text[last:])
        return "".join(pieces), out


def _split_system(messages: list[dict]) -> tuple[str | None, list[dict]]:
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], messages[1:]
    return None, messages


def chatml(messages: list[dict], add_generation_prompt: bool = False, *, bos: str = "", eos: str = "") -> str:
    """`<|im_start|>role\\ncontent<|im_end|>\\n` per message."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def llama2(messages: list[dict], add_generation_prompt: bool = False, *, bos: str = "<s>", eos: str = "</s>") -> str:
    """`<s>[INST] <<SYS>>\\nsystem\\n<</SYS>>\\n\\nuser [/INST] answer </s>`; the system goes into the first user turn.
    A user turn always ends with `[/INST]`, which is the assistant prefix, so add_generation_prompt changes nothing."""
    system, rest = _split_system(messages)
    parts, first = [], True
    for m in rest:
        content = m["content"].strip()
        if m["role"] == "user":
            if first and system is not None:
                content = f"<<SYS>>\n{system}\n<</SYS>>\n\n{content}"
            parts.append(f"{bos}[INST] {content} [/INST]")
            first = False
        else:
            parts.append(f" {content} {eos}")
    return "".join(parts)


def alpaca(messages: list[dict], add_generation_prompt: bool = False, *, bos: str = "", eos: str = "</s>") -> str:
    """`[system\\n\\n]### Instruction:\\nuser\\n\\n### Response:\\nanswer</s>\\n\\n`, repeated per turn; as in llama2, a
    user turn ends with the response header."""
    system, rest = _split_system(messages)
    parts = [f"{system}\n\n"] if system else []
    for m in rest:
        if m["role"] == "user":
            parts.append(f"### Instruction:\n{m['content']}\n\n### Response:\n")
        else:
            parts.append(f"{m['content']}{eos}\n\n")
    return "".join(parts)


# The same templates in Jinja, over `messages`, `add_generation_prompt` and three texts that `Template.jinja` sets
# for the tokenizer at hand: `bos`, `eos`, and `close` (what `render` appends after an answer: EOS where the
# template's own end of turn cannot stop generation, else nothing). Whitespace control on every tag keeps the
# literal text exactly what is written.
_CHATML_JINJA = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' -}}"
    "{%- if message['role'] == 'assistant' -%}{{- close -}}{%- endif -%}"
    "{{- '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
_SPLIT_SYSTEM = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set rest = messages[1:] -%}"
    "{%- else -%}{%- set system = none -%}{%- set rest = messages -%}{%- endif -%}"
)
_LLAMA2_JINJA = (
    _SPLIT_SYSTEM + "{%- set ns = namespace(first=true) -%}"
    "{%- for message in rest -%}"
    "{%- set content = message['content'] | trim -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if ns.first and system is not none -%}"
    "{%- set content = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + content -%}"
    "{%- endif -%}"
    "{{- bos + '[INST] ' + content + ' [/INST]' -}}{%- set ns.first = false -%}"
    "{%- else -%}{{- ' ' + content + ' ' + eos -}}{{- close -}}{%- endif -%}"
    "{%- endfor -%}"
)
_ALPACA_JINJA = (
    _SPLIT_SYSTEM + "{%- if system -%}{{- system + '\\n\\n' -}}{%- endif -%}"
    "{%- for message in rest -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- '### Instruction:\\n' + message['content'] + '\\n\\n### Response:\\n' -}}"
    "{%- else -%}{{- message['content'] + eos -}}{{- close -}}{{- '\\n\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
)


@dataclass(frozen=True)
class NamedTemplate:
    """A template for models without their own, defined once: the Python function training renders with and the
    same text in Jinja (see above)."""

    write: Callable[..., str]
    """(messages, add_generation_prompt, *, bos, eos) -> text"""
    jinja: str
    marker: str
    """Its end-of-turn text when that may be one special token (stop token, no EOS needed); "" if EOS ends turns."""
    writes_bos: bool
    """It writes BOS itself (once per turn), so `render` must not prepend one."""


NAMED = {
    "chatml": NamedTemplate(chatml, _CHATML_JINJA, "<|im_end|>", False),
    "llama2": NamedTemplate(llama2, _LLAMA2_JINJA, "", True),
    "alpaca": NamedTemplate(alpaca, _ALPACA_JINJA, "", False),
}
NAMES = ("auto", "tokenizer", *NAMED)


def _jinja_text(text: str) -> str:
    """`text` as a Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _named_jinja(named: NamedTemplate, bos_token: str, eos: str, close: str, prefix: str) -> str:
    """The named template's Jinja with this tokenizer's texts set, and `prefix` (the BOS `render` prepends) first."""
    head = "".join(
        f"{{%- set {k} = {_jinja_text(v)} -%}}" for k, v in (("bos", bos_token), ("eos", eos), ("close", close))
    )
    return head + (f"{{{{- {_jinja_text(prefix)} -}}}}" if prefix else "") + named.jinja


def _special_id(tokenizer, text: str) -> int | None:
    """The id of `text` if it is one added/special token of the tokenizer (so it can stop generation), else None."""
    return tokenizer.get_added_vocab().get(text) if text else None


def default_bos(tokenizer) -> str:
    """The BOS text if tokenizing plain text adds it (Llama, Gemma tokenizers); templates then must start with it."""
    bos_id = tokenizer.bos_token_id
    if bos_id is None or not tokenizer.bos_token:
        return ""
    with_special = tokenizer("a")["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return tokenizer.bos_token if with_special[:1] == [bos_id] and without[:1] != [bos_id] else ""


def _turn_end(write: WriteFn) -> str:
    """What the template writes right after an answer, stripped (e.g. `<|im_end|>`), found by rendering a probe."""
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}]
    try:
        text = write(messages, False)
    except Exception:
        return ""
    i = text.rfind(_PROBE)
    return text[i + len(_PROBE) :].strip() if i >= 0 else ""


def _make(name: str, write: WriteFn, tokenizer, marker: str, bos: str) -> Template:
    eos = tokenizer.eos_token or ""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    markers = [eos] if eos else []
    marker_id = _special_id(tokenizer, marker)
    if marker_id is not None and marker_id not in ids:
        ids.append(marker_id)
        markers.append(marker)
    return Template(name, ids, write, tuple(markers), eos, bos)


def _closing(template: Template) -> str:
    """What `render` appends after every answer of this template: its EOS when the answer's end is no end marker."""
    if not template.eos:
        return ""
    text = template.write([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}], False)
    return "" if text.rstrip().endswith(template.end_markers) else template.eos


def run_template(name: str, tokenizer, run_dir) -> Template:
    """The template a run trained with (run.json's `template`), over the tokenizer saved in `run_dir`; RunDirError
    when that tokenizer lost the chat template the run used (a copy without chat_template.jinja): no option of the
    reading command can change the run's template, so "use a named template" would mislead."""
    if name == "tokenizer" and not getattr(tokenizer, "chat_template", None):
        raise RunDirError(
            f"{run_dir}: the run was trained with its tokenizer's chat template, which the tokenizer saved in the run "
            "no longer holds (chat_template.jinja, or tokenizer_config.json's chat_template, is missing); copy those "
            "files from the base model or from the run's original folder."
        )
    if name not in ("auto", "tokenizer", *NAMED):  # run.json edited: no option of the reading command names it
        raise RunDirError(
            f"{Path(run_dir) / 'run.json'}: field 'template' is {name!r}, but must be one of auto, tokenizer, "
            f"{', '.join(NAMED)} (the file was edited or damaged); put back the value tunelab wrote."
        )
    return resolve_template(name, tokenizer)


def resolve_template(name: str, tokenizer) -> Template:
    """ "auto" (the tokenizer's chat template if it has one, else chatml), "tokenizer", or a name in NAMED."""
    has_own = bool(getattr(tokenizer, "chat_template", None))
    if name == "auto":
        name = "tokenizer" if has_own else "chatml"
    bos = default_bos(tokenizer)
    if name == "tokenizer":
        if not has_own:
            raise ConfigError(
                "option 'data.template' is 'tokenizer', but this tokenizer has no chat template (a base model?). "
                f"Use a named template: {', '.join(NAMED)}."
            )

        def write(
            messages: list[dict], add_generation_prompt: bool = False, tools: list[dict] | None = None, variables=None
        ) -> str:
            return tokenizer.apply_chat_template(
                messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt, **(variables or {})
            )

        template = _make("tokenizer", write, tokenizer, _turn_end(write), bos)
        template.source = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
        return template
    if name not in NAMED:
        raise ConfigError(f"option 'data.template' is {name!r}; allowed values: {', '.join(NAMES)}.")
    named = NAMED[name]
    texts = {"bos": tokenizer.bos_token or "", "eos": tokenizer.eos_token or ""}

    def write(messages: list[dict], add_generation_prompt: bool = False) -> str:
        return named.write(messages, add_generation_prompt, **texts)

    template = _make(name, write, tokenizer, named.marker, "" if named.writes_bos else bos)
    template.jinja = _named_jinja(named, texts["bos"], texts["eos"], _closing(template), template.bos)
    return template


# Training reads an empty system message as none (formats.py): the first message, dropped when it is a system
# message of blank text, so that the run's system prompt or the template's own default takes its place.
_DROP_BLANK_SYSTEM = (
    "{%- if messages and messages[0]['role'] == 'system' and messages[0]['content'] is string "
    "and messages[0]['content'] | trim == '' %}{%- set messages = messages[1:] %}{%- endif %}"
)
_SET_SYSTEM = (
    "{%- if not messages or messages[0]['role'] != 'system' %}{%- set messages = [{'role': 'system', 'content': "
)
_SET_SYSTEM_END = "}] + messages %}{%- endif %}"


def with_system_default(chat_template: str | None, system_prompt: str | None) -> str | None:
    """`chat_template` reading a conversation as training read it: an empty system message is none, and
    `system_prompt` is the system message of a conversation that has none, as training wrote it (data.system_prompt):
    without it a tuned SmolLM2 was prompted with SmolLM2's own default system prompt, and with an empty system
    message by an empty block it never saw. The prompt is a Jinja string literal (JSON's escapes are Jinja's). A
    template that has such a default already (a run's saved tokenizer, or a base that is a tunelab merge) keeps it
    inside: it applies where this one adds nothing, as it did in training, and a second wrapper of the same prompt
    writes what one writes."""
    if not chat_template:
        return chat_template
    if not system_prompt:
        return _DROP_BLANK_SYSTEM + chat_template
    return (
        _DROP_BLANK_SYSTEM
        + _SET_SYSTEM
        + json.dumps(system_prompt, ensure_ascii=False)
        + _SET_SYSTEM_END
        + chat_template
    )


def trained_chat_template(template: Template, tokenizer, system_prompt: str | None) -> str | dict[str, str] | None:
    """The Jinja chat template that writes what training wrote with `template`: the tokenizer's own, or the Jinja of
    the named template (`Template.jinja`), with the run's system prompt (`trained_system` of data.system_prompt)
    where a conversation brings none. What a run's saved tokenizer, its merged model and its GGUF file carry. A
    tokenizer's own templates by name ({"default": ..., "tool_use": ...}; training wrote with "default") stay a dict,
    each read as training read a conversation (save_pretrained writes the named ones to additional_chat_templates/)."""
    own = template.jinja if template.jinja is not None else tokenizer.chat_template
    if isinstance(own, dict):
        return {name: with_system_default(jinja, system_prompt) for name, jinja in own.items()}
    return with_system_default(own, system_prompt)
