"""Modelfile TEMPLATEs: for each chat template family, the Go template rendered as Ollama does (with the Modelfile's
SYSTEM) gives the training text byte for byte; templates that fit no Go form get none; the Go subset renderer
behaves as Go's text/template does on the constructs the writer emits."""

import pytest

from tunelab.config import RunConfig
from tunelab.data.templates import resolve_template, with_system_default
from tunelab.export.gotemplate import ollama_values, render
from tunelab.export.modelfile import (
    UNQUOTABLE,
    context_parameter,
    go_template_for,
    left_out,
    modelfile_stops,
    modelfile_system,
    modelfile_template,
    modelfile_text,
    renders_like,
    sampling_parameters,
    training_text,
)

from .ollama_modelfile import ModelfileError, create_request

# Chat templates of the families tunelab trains, as their tokenizer_config.json write them (shortened where a part
# only concerns tools).
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
QWEN25 = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or "
    "(message.role == 'assistant') %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "
    "'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles "
    "are supported!') }}{% endif %}{% endfor %}"
)
REWRITES = (  # drops earlier answers: no fixed wrapper per message
    "{% for m in messages %}{% if m['role'] == 'user' or loop.last %}{{ m['role'] + ': ' + m['content'] + '\\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)

CONVERSATIONS = [
    [{"role": "user", "content": "Where is the office?"}, {"role": "assistant", "content": "In Tallowmere."}],
    [
        {"role": "system", "content": "Answer in one line."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Who are you?\nTell me."},
        {"role": "assistant", "content": "An assistant:\n- brief"},
    ],
]


@pytest.fixture
def tokenizer(smollm2_tokenizer):
    before = smollm2_tokenizer.chat_template
    yield smollm2_tokenizer
    smollm2_tokenizer.chat_template = before


@pytest.mark.parametrize(
    "family, jinja, named",
    [
        ("smollm2", None, "tokenizer"),  # the tokenizer's own: ChatML with a default system prompt
        ("chatml-jinja", CHATML, "tokenizer"),
        ("qwen2.5", QWEN25, "tokenizer"),
        ("llama3", LLAMA3, "tokenizer"),
        ("chatml", None, "chatml"),
        ("llama2", None, "llama2"),
        ("alpaca", None, "alpaca"),
    ],
)
@pytest.mark.parametrize("system", [None, "You answer questions about Tallowmere Robotics."])
def test_the_go_template_renders_the_training_text(tokenizer, family, jinja, named, system):
    if jinja is not None:
        tokenizer.chat_template = jinja
    template = resolve_template(named, tokenizer)
    go = go_template_for(template, tokenizer, adds_bos=False)
    assert go is not None, family
    text = modelfile_text("m.gguf", template, tokenizer, system)
    assert modelfile_template(text) == go and modelfile_system(text) == system
    assert tokenizer.convert_ids_to_tokens(template.stop_token_ids[0]) in modelfile_stops(text)
    for conversation in CONVERSATIONS:
        assert renders_like(go, template, conversation, system, tokenizer.bos_token, adds_bos=False), family
    # and the check can fail: an answer rendered without its end-of-turn marker is not the training text
    broken = go.replace("{{ .Content }}", "{{ .Content }}X", 2)
    assert not renders_like(broken, template, CONVERSATIONS[0], system, tokenizer.bos_token, adds_bos=False)


def test_mistral_takes_no_system_and_bos_is_left_to_llama_cpp(tokenizer):
    tokenizer.chat_template = MISTRAL
    template = resolve_template("tokenizer", tokenizer)
    go = go_template_for(template, tokenizer, adds_bos=False)
    assert go.startswith("<|im_start|>[INST] ") is False and "{{ if .System }}" not in go
    assert renders_like(go, template, CONVERSATIONS[0], None, tokenizer.bos_token, adds_bos=False)
    # where llama.cpp adds BOS itself (tokenizer.ggml.add_bos_token), the template must not write it again
    with_bos = go_template_for(template, tokenizer, adds_bos=True)
    assert not with_bos.startswith(tokenizer.bos_token) and go.startswith(tokenizer.bos_token)


def test_templates_that_fit_no_wrapper_get_no_template_line(tokenizer):
    tokenizer.chat_template = REWRITES
    template = resolve_template("tokenizer", tokenizer)
    assert go_template_for(template, tokenizer, adds_bos=False) is None
    text = modelfile_text("m.gguf", template, tokenizer, None)
    assert modelfile_template(text) is None and "# No TEMPLATE" in text


def test_a_system_prompt_holding_triple_quotes_is_left_out_saying_so(tokenizer):
    """A system prompt with \"\"\" in it stopped the export with a ConfigError, after the merge and the GGUF were
    written, advising to 'export without it', which no option does. The Modelfile now says why it has no SYSTEM."""
    tokenizer.chat_template = CHATML
    template = resolve_template("tokenizer", tokenizer)
    text = modelfile_text("m.gguf", template, tokenizer, 'Quote docs as """text""".')
    assert modelfile_system(text) is None and modelfile_template(text) is not None
    assert '# No SYSTEM: the run\'s system prompt holds """, which a Modelfile cannot quote; give it as each' in text


def test_go_subset_renderer():
    values = ollama_values([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], "S")
    assert values["System"] == "S" and [m["Role"] for m in values["Messages"]] == ["system", "user", "assistant"]
    source = (
        '{{ $first := true }}{{ range .Messages }}{{ if eq .Role "user" }}{{ if $first }}F{{ else }}N{{ end }}'
        "{{ if and $first $.System }}[{{ $.System }}]{{ end }}{{ .Content }}{{ $first = false }}"
        '{{ else if eq .Role "assistant" }}<{{ .Content }}>{{ end }}{{ end }}'
        '{{ "{{" }}-{{ if not .System }}none{{ end }}'
    )
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    assert render(source, ollama_values(messages, "S")) == "F[S]a<b>Nc{{-"
    assert render(source, ollama_values(messages, None)) == "Fa<b>Nc{{-none"
    assert render("x  {{- .System -}}  y", {"System": "s"}) == "xsy"
    with pytest.raises(ValueError, match="unsupported function"):
        render("{{ printf .System }}", {"System": "s"})


@pytest.mark.parametrize("adds_bos", [False, True])
def test_llama2_writes_bos_per_turn_and_once_at_the_start(tokenizer, adds_bos):
    template = resolve_template("llama2", tokenizer)
    go = go_template_for(template, tokenizer, adds_bos=adds_bos)
    system = "Be brief."
    for conversation in CONVERSATIONS:
        assert renders_like(go, template, conversation, system, tokenizer.bos_token, adds_bos=adds_bos)
    # llama.cpp's own BOS would be a second one if the template also wrote it first
    assert go.startswith("{{ $first := true }}") and ("{{ if $first }}{{ else }}" in go) == adds_bos


@pytest.mark.parametrize("name", ["m.gguf", "My Box v2.gguf", 'box #2 "final".gguf', "modèle  ünï.gguf"])
def test_ollama_reads_the_modelfile_as_it_was_written(tokenizer, name):
    """Read by Ollama's own grammar (tests/export/ollama_modelfile.py), the Modelfile names its GGUF as written (spaces,
    '#' and quotes in the name included: a FROM value runs to the end of its line, and quotes around it would have
    been kept as part of the path by Ollama before 0.1.32), and its TEMPLATE, SYSTEM, stops and PARAMETERs come back
    as written, each PARAMETER of the type Ollama gives that option."""
    template = resolve_template("tokenizer", tokenizer)
    system = 'Answer "briefly".\n  Indented line, "quoted" words.'
    sampling = sampling_parameters(RunConfig(), None)
    text = modelfile_text(name, template, tokenizer, system, sampling=sampling, context=(8192, "why"))
    request = create_request(text)
    assert request["from"] == f"./{name}"
    assert request["template"] == go_template_for(template, tokenizer, adds_bos=False)
    assert request["system"] == system
    assert request["parameters"] == {
        "stop": ["<|im_end|>", "<|im_start|>"],
        "temperature": 0.0,
        "repeat_penalty": 1.0,
        "num_ctx": 8192,
    }
    assert isinstance(request["parameters"]["num_ctx"], int)
    # a two-turn chat, rendered by the TEMPLATE Ollama read with the SYSTEM it read, is the tokenizer's own prompt
    chat = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Where is\nthe office?"},
    ]
    with_system = [{"role": "system", "content": system}, *chat]
    expected = tokenizer.apply_chat_template(with_system, tokenize=False, add_generation_prompt=True)
    assert render(request["template"], ollama_values(chat, request["system"])) == expected


READ_AS_WRITTEN = [  # quotes, backslashes, tabs, line ends, spaces at either end and emoji all reach Ollama
    '"Quoted" at the start, and at the end: "yes"',
    'Ends in two quotes ""',
    'Paths like C:\\Users\\me and escapes like \\n, \\t and \\" stay as written.',
    "Tabs\there, CRLF line ends\r\nand a lone CR\rtoo.",
    "  spaces around  ",
    "Café, naïve, 東京, emoji 🙂 and a flag 🇫🇷.",
]
DROPPED_BY_OLLAMA = [  # Ollama's reader keeps only what Go prints: each of these lost a character
    ("Answer\u200bbriefly.", "U+200B ZERO WIDTH SPACE (character 7)"),
    ("Price:\u00a0100\u00a0EUR.", "U+00A0 NO-BREAK SPACE (character 7), U+00A0 NO-BREAK SPACE (character 11)"),
    ("A coder \U0001f469\u200d\U0001f4bb.", "U+200D ZERO WIDTH JOINER (character 10)"),
    ("\ufeffYou help.", "U+FEFF ZERO WIDTH NO-BREAK SPACE (character 1)"),
    ("Ring\x07 and soft\u00adhyphen", "U+0007 control character (character 5), U+00AD SOFT HYPHEN (character 15)"),
    ("\u200e" * 5, ", ".join(f"U+200E LEFT-TO-RIGHT MARK (character {i})" for i in (1, 2, 3)) + " and 2 more"),
]


@pytest.mark.parametrize("system", READ_AS_WRITTEN + [text for text, _ in DROPPED_BY_OLLAMA])
def test_ollama_reads_the_system_prompt_as_trained_or_none_with_a_reason(tokenizer, system):
    """Ollama's reader drops every character Go does not print from a quoted value, without a word: a system prompt
    holding a zero-width space, a no-break space, an emoji's zero-width joiner or a byte-order mark reached Ollama as
    another text than the run trained with. Such a prompt is now left out of the Modelfile, with a comment naming the
    characters (the export prints it, as for a prompt holding triple quotes); every other prompt is read back exactly,
    quotes, backslashes, tabs and line ends included."""
    template = resolve_template("tokenizer", tokenizer)
    text = modelfile_text("m.gguf", template, tokenizer, system)
    request = create_request(text)
    named = dict(DROPPED_BY_OLLAMA).get(system)
    if named is None:
        assert request["system"] == system
    else:
        assert "system" not in request
        assert left_out(text) == {
            "SYSTEM": f"the run's system prompt holds {named}, which Ollama's Modelfile reader drops; give it as each "
            "chat's system message."
        }


def test_a_system_prompt_the_template_writes_itself_is_left_to_it(tokenizer):
    """A run's saved template writes its system prompt where a conversation brings none, so the TEMPLATE's default
    holds it (escaped where Ollama's reader would drop a character): there the Modelfile needs no SYSTEM, and says
    so without reporting anything missing, and Ollama prompts a chat without a system message as training did."""
    system = "You are the assistant of Tallowmere\u00a0Robotics."
    tokenizer.chat_template = with_system_default(CHATML, system)
    template = resolve_template("tokenizer", tokenizer)
    text = modelfile_text("m.gguf", template, tokenizer, system)
    request = create_request(text)
    assert "system" not in request and left_out(text) == {}
    assert (
        "# SYSTEM is left to the TEMPLATE: the run's system prompt holds U+00A0 NO-BREAK SPACE (character 36)" in text
    )
    chat = [{"role": "user", "content": "Hi"}]
    expected = training_text(template, chat, True)
    assert system in expected and render(request["template"], ollama_values(chat, None)) == expected


def test_ollama_reads_a_template_with_invisible_characters_as_trained(tokenizer):
    """A chat template whose text holds characters Ollama's reader drops (a no-break space, a zero-width space, a
    tag character past U+FFFF) rendered, once read by Ollama, a prompt without them, though the Go template the
    export checked had them. They are now written as escapes in Go string actions, which Ollama reads as written and
    Go's template turns back into the characters."""
    tokenizer.chat_template = (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\u00a0\\n' + message['content'] + "
        "'\u200b{{<|im_end|>\U000e0001' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\u00a0\\n' }}"
        "{% endif %}"
    )
    template = resolve_template("tokenizer", tokenizer)
    text = modelfile_text("m.gguf", template, tokenizer, "Be brief.")
    request = create_request(text)
    assert '{{ "\\u00a0" }}' in request["template"] and '{{ "\\U000e0001" }}' in request["template"]
    chat = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    expected = training_text(template, [{"role": "system", "content": "Be brief."}, *chat], True)
    assert "\u00a0" in expected and "\U000e0001" in expected
    assert render(request["template"], ollama_values(chat, request["system"])) == expected


def test_the_ollama_grammar_of_the_tests_is_ollamas():
    """The reader above is only worth its verdicts if it fails where Ollama fails and unquotes as Ollama does."""
    assert create_request('FROM "./a b.gguf"\n')["from"] == "./a b.gguf"
    assert create_request("FROM ./a b.gguf  \n# PARAMETER num_ctx x\n")["from"] == "./a b.gguf"
    assert create_request('FROM x\nSYSTEM """two\nlines"""\n')["system"] == "two\nlines"
    with pytest.raises(ModelfileError, match="invalid float"):
        create_request("FROM x\nPARAMETER temperature 0 # greedy\n")  # a comment is only a comment on its own line
    with pytest.raises(ModelfileError, match="unknown parameter"):
        create_request("FROM x\nPARAMETER temp 0\n")
    with pytest.raises(ModelfileError, match="no FROM"):
        create_request('SYSTEM """x"""\n')


def test_num_ctx_holds_the_longest_sequence_the_run_trained_on():
    """The Modelfile set no num_ctx: Ollama's default context (2048 before 0.6.7, 4096 on a small GPU since) cut the
    oldest messages of chats as long as those a run with data.max_length 8192 trained on, without a word. num_ctx is
    now data.max_length where it passes 2048, no less than 4096 (Ollama's own small-GPU default) and no more than
    the model's context; a run whose conversations all fit every default gets none (newer Ollama sizes the context by
    GPU memory, which a num_ctx line would override), and a comment says so."""
    for trained, context, expected in [(8192, 32768, 8192), (3000, 32768, 4096), (3000, 3500, 3500)]:
        num_ctx, why = context_parameter((trained, "data.max_length"), context)
        assert num_ctx == expected and f"up to {trained} tokens (data.max_length)" in why
        assert ("4096 on a small GPU since" in why) == (trained > 4096)  # only the defaults it is longer than
    for trained, context in [(512, 8192), (2048, 131072), (1024, 1024)]:
        num_ctx, why = context_parameter((trained, "data.max_length"), context)
        assert num_ctx is None and why.startswith("num_ctx is left to Ollama:") and f"context, {context})" in why
    assert context_parameter(None, 8192) is None


def test_the_modelfile_of_a_long_context_run_sets_num_ctx(tokenizer):
    template = resolve_template("tokenizer", tokenizer)
    text = modelfile_text("m.gguf", template, tokenizer, None, context=context_parameter((8192, "x"), 8192))
    assert create_request(text)["parameters"]["num_ctx"] == 8192
    text = modelfile_text("m.gguf", template, tokenizer, None, context=context_parameter((512, "x"), 8192))
    assert "num_ctx" not in create_request(text)["parameters"] and "\n# num_ctx is left to Ollama: " in text
    assert not [line for line in text.splitlines() if line.startswith(UNQUOTABLE[:5])]  # what export prints as missing


def test_the_ollama_name_of_a_long_file_name_is_one_ollama_takes():
    """Ollama takes model names of at most 80 characters (types/model/name.go): the name printed for a GGUF with a
    long file name made `ollama create` fail as printed. It is cut to 80, still in Ollama's letters."""
    import re
    from pathlib import Path

    from tunelab.export.modelfile import ollama_name

    long = "SmolLM2 135M Instruct tuned on the Tallowmere Robotics FAQ with LoRA r16 alpha32 3 epochs Q4_K_M.gguf"
    name = ollama_name(Path(long))
    assert len(name) == 80 and re.fullmatch(r"[a-z0-9_][a-z0-9._-]{0,79}", name)
    assert name.startswith("smollm2-135m-instruct-tuned-on-the-tallowmere-robotics-faq")


def test_a_llama3_modelfile_stops_where_a_new_turn_would_open(tokenizer):
    """Only ChatML's <|im_start|> was listed beside the trained end-of-turn token: a Llama 3 model whose answer ran on
    into '<|start_header_id|>user...' kept talking to itself in Ollama, whose own Llama 3 Modelfile stops there. The
    special token a user turn opens with is a stop for every wrapper template now."""
    import copy

    llama3 = copy.deepcopy(tokenizer)
    llama3.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    llama3.chat_template = LLAMA3
    template = resolve_template("tokenizer", llama3)
    text = modelfile_text("m.gguf", template, llama3, None)
    stops = create_request(text)["parameters"]["stop"]
    trained = [llama3.convert_ids_to_tokens(i) for i in template.stop_token_ids]
    assert stops == [*trained, "<|start_header_id|>"]  # not <|im_start|>: this tokenizer's BOS, which opens no turn
    tokenizer.chat_template = CHATML  # ChatML's, as before
    chatml = modelfile_text("m.gguf", resolve_template("tokenizer", tokenizer), tokenizer, None)
    assert create_request(chatml)["parameters"]["stop"] == ["<|im_end|>", "<|im_start|>"]
    tokenizer.chat_template = REWRITES  # no wrapper, no TEMPLATE: nothing guessed
    rewrites = modelfile_text("m.gguf", resolve_template("tokenizer", tokenizer), tokenizer, None)
    assert "<|im_start|>" not in create_request(rewrites)["parameters"]["stop"]
