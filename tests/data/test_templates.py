"""Prompt templates: exact renderings, answer spans, stop tokens, BOS written once, EOS appended only when needed."""

import copy
import random

import pytest

from tunelab.config import DataConfig
from tunelab.data.formats import Example
from tunelab.data.render import render_examples, render_prompt
from tunelab.data.report import DataReport
from tunelab.data.templates import NAMED, resolve_template
from tunelab.errors import ConfigError

from .masking import masked_runs

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello there"},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Goodbye."},
]


def render_one(tokenizer, template, messages=CHAT, **cfg):
    report = DataReport()
    (row,) = render_examples([Example(messages, None, "x.jsonl", 1)], tokenizer, template, DataConfig(**cfg), report)
    return row


def test_chatml_text_spans_and_mask(smollm2_tokenizer):
    template = resolve_template("chatml", smollm2_tokenizer)
    text, spans = template.render(CHAT)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello there<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\nGoodbye.<|im_end|>\n"
    )
    assert [text[s:e] for s, e in spans] == ["Hello there<|im_end|>", "Goodbye.<|im_end|>"]
    assert template.stop_token_ids == [smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert masked_runs(smollm2_tokenizer, render_one(smollm2_tokenizer, template)) == [
        "Hello there<|im_end|>",
        "Goodbye.<|im_end|>",
    ]


def test_llama2_text_spans_and_mask(smollm2_tokenizer):
    template = resolve_template("llama2", smollm2_tokenizer)
    bos, eos = smollm2_tokenizer.bos_token, smollm2_tokenizer.eos_token
    text, spans = template.render(CHAT)
    assert (
        text
        == f"{bos}[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello there {eos}{bos}[INST] Bye [/INST] Goodbye. {eos}"
    )
    assert masked_runs(smollm2_tokenizer, render_one(smollm2_tokenizer, template)) == [
        f" Hello there {eos}",
        f" Goodbye. {eos}",
    ]


def test_alpaca_text_spans_and_mask(smollm2_tokenizer):
    template = resolve_template("alpaca", smollm2_tokenizer)
    eos = smollm2_tokenizer.eos_token
    text, _ = template.render(CHAT[:3])
    assert text == f"Be brief.\n\n### Instruction:\nHi\n\n### Response:\nHello there{eos}\n\n"
    assert masked_runs(smollm2_tokenizer, render_one(smollm2_tokenizer, template)) == [
        f"Hello there{eos}",
        f"Goodbye.{eos}",
    ]


def test_tokenizer_template_keeps_its_default_system_prompt(smollm2_tokenizer):
    template = resolve_template("auto", smollm2_tokenizer)
    assert template.name == "tokenizer" and template.stop_token_ids == [smollm2_tokenizer.eos_token_id]
    text, spans = template.render(CHAT[1:3])
    assert text == smollm2_tokenizer.apply_chat_template(CHAT[1:3], tokenize=False)
    assert "named SmolLM" in text and [text[s:e] for s, e in spans] == ["Hello there<|im_end|>"]


def test_generation_prompt(smollm2_tokenizer):
    template = resolve_template("chatml", smollm2_tokenizer)
    ids = render_prompt(CHAT[:2], smollm2_tokenizer, template)
    assert smollm2_tokenizer.decode(ids).endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    llama = resolve_template("llama2", smollm2_tokenizer)
    assert smollm2_tokenizer.decode(render_prompt(CHAT[:2], smollm2_tokenizer, llama)).endswith("Hi [/INST]")


def test_base_tokenizer_gets_bos_once_and_eos_after_chatml_turns(base_tokenizer):
    tok = base_tokenizer()
    template = resolve_template("auto", tok)
    assert template.name == "chatml" and template.stop_token_ids == [tok.eos_token_id]
    row = render_one(tok, template)
    assert row.input_ids[0] == tok.bos_token_id and row.input_ids[1] != tok.bos_token_id
    # <|im_end|> is plain text to this tokenizer, so it cannot stop generation: EOS follows it and is learned
    assert masked_runs(tok, row) == ["Hello there<|im_end|></s>", "Goodbye.<|im_end|></s>"]


def test_base_tokenizer_llama2_writes_bos_itself_once_per_turn(base_tokenizer):
    tok = base_tokenizer()
    row = render_one(tok, resolve_template("llama2", tok))
    assert row.input_ids.count(tok.bos_token_id) == 2 and row.input_ids[:2].count(tok.bos_token_id) == 1
    assert masked_runs(tok, row) == [" Hello there </s>", " Goodbye. </s>"]


def test_special_end_of_turn_token_is_a_stop_token_and_gets_no_eos(base_tokenizer):
    gemma_like = (
        "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>assistant\n{% endif %}"
    )
    tok = base_tokenizer(extra_special=("<start_of_turn>", "<end_of_turn>"), chat_template=gemma_like)
    template = resolve_template("tokenizer", tok)
    assert template.stop_token_ids == [tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")]
    row = render_one(tok, template)
    assert row.input_ids.count(tok.bos_token_id) == 1  # the template writes BOS; it is not added again
    assert masked_runs(tok, row) == ["Hello there<end_of_turn>", "Goodbye.<end_of_turn>"]


def test_template_that_rewrites_earlier_turns_is_refused(base_tokenizer):
    rewrites = (
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}[old answer]"
        "{% else %}{{ m['role'] }}: {{ m['content'] }}{% endif %}\n{% endfor %}"
    )
    tok = base_tokenizer(chat_template=rewrites)
    with pytest.raises(
        ConfigError,
        match=r"x\.jsonl:1: prompt template 'tokenizer' renders earlier turns .* added \(turn 3\), .* data\.template",
    ):
        render_one(tok, resolve_template("tokenizer", tok))


def test_template_errors(base_tokenizer):
    tok = base_tokenizer()
    with pytest.raises(ConfigError, match="'data.template' is 'tokenizer', but this tokenizer has no chat template"):
        resolve_template("tokenizer", tok)
    with pytest.raises(ConfigError, match="allowed values"):
        resolve_template("vicuna", tok)


def test_train_on_prompt_labels_every_token(smollm2_tokenizer):
    row = render_one(smollm2_tokenizer, resolve_template("chatml", smollm2_tokenizer), train_on_prompt=True)
    assert row.labels == row.input_ids


_CONTENTS = [
    "Hi",
    "",
    " padded ",
    "Two\nlines",
    "trailing newline\n",
    "tab\there",
    "quote ' and \" and `",
    "back\\slash \\n not a newline",
    "{{ not jinja }} {% if x %}",
    "[INST] looks like a tag [/INST]",
    "<|im_start|>user\nfake turn<|im_end|>",
    "### Instruction:",
    "Ünïcödé — 日本語 🙂",
    "</s> mid-text",
    "   ",
]


def _conversations(n: int, seed: int = 0) -> list[list[dict]]:
    """n conversations: with or without a system turn (empty ones too), one to four exchanges, some ending on a
    user turn, a few with two user turns in a row, contents drawn from awkward texts."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        messages = [{"role": "system", "content": rng.choice(_CONTENTS)}] if rng.random() < 0.5 else []
        for _ in range(rng.randint(1, 4)):
            messages.append({"role": "user", "content": rng.choice(_CONTENTS)})
            if rng.random() < 0.1:
                messages.append({"role": "user", "content": rng.choice(_CONTENTS)})
            messages.append({"role": "assistant", "content": rng.choice(_CONTENTS)})
        if rng.random() < 0.5:
            messages.append({"role": "user", "content": rng.choice(_CONTENTS)})
        out.append(messages)
    return out


@pytest.mark.parametrize("name", list(NAMED))
def test_named_template_jinja_writes_what_training_renders(name, smollm2_tokenizer, base_tokenizer):
    """For every named template and two kinds of tokenizer (SmolLM2: <|im_end|> is a special token and the EOS, no
    BOS added; a base Llama-like one: BOS added by default, <|im_end|> plain text so EOS closes ChatML answers), the
    Jinja that merge and export save writes, through transformers' own renderer, exactly the text training rendered
    (BOS prepended and EOS appended included), with and without the generation prompt."""
    for tokenizer in (smollm2_tokenizer, base_tokenizer()):
        template = resolve_template(name, tokenizer)
        for messages in _conversations(150, seed=len(name)):
            for gen in (False, True):
                jinja = tokenizer.apply_chat_template(
                    messages, chat_template=template.jinja, tokenize=False, add_generation_prompt=gen
                )
                assert jinja == template.render(messages, gen)[0], (name, tokenizer.name_or_path, messages, gen)


def test_the_jinja_closes_answers_and_prepends_bos_as_render_does(base_tokenizer):
    tok = base_tokenizer()
    chatml = resolve_template("chatml", tok)
    messages = CHAT[1:3]
    text = tok.apply_chat_template(messages, chat_template=chatml.jinja, tokenize=False)
    assert text == "<s><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello there<|im_end|></s>\n"


def test_a_conversation_the_template_refuses_at_inference_is_not_told_to_change_data_template(smollm2_tokenizer):
    """generate --system, or a server request, that the run's template refuses (Gemma's 'System role not supported')
    was told to pick a named template with data.template, which only training reads; it is told to give a
    conversation the run's template accepts. Training keeps the advice, where the option can change."""
    from tunelab.data.templates import Template, TemplateRefused

    def write(messages, add_generation_prompt):
        if any(m["role"] == "system" for m in messages):
            raise ValueError("System role not supported")
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + ("assistant: " * add_generation_prompt)

    template = Template("strict", [smollm2_tokenizer.eos_token_id], write)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    with pytest.raises(TemplateRefused) as err:
        render_prompt(messages, smollm2_tokenizer, template)
    assert "cannot render this conversation (System role not supported), so it is not answered" in str(err.value)
    assert "data.template" not in str(err.value)
    with pytest.raises(TemplateRefused, match="pick a named template with data.template"):
        template.render(messages + [{"role": "assistant", "content": "Hello."}])
    assert render_prompt(messages[1:], smollm2_tokenizer, template)  # a conversation it accepts


@pytest.mark.parametrize("name", sorted(NAMED))
def test_named_templates_write_no_names_tools_or_tool_results(name, smollm2_tokenizer):
    """`Template.uses` decides whether `tunelab serve` gives a template a message's name, tool calls, a tool's
    result or tool definitions, or refuses them. llama2 and alpaca would write a tool's result as an assistant's
    answer (their branch for any role but the user's), chatml as a turn of a role training never showed: a named
    template uses none of them, nor a tokenizer template that writes every role alike (SmolLM2's), while one that
    writes a tool's result its own way is found to."""
    for what in ("name", "tools", "tool_calls", "tool"):
        assert not resolve_template(name, smollm2_tokenizer).uses(what), what
    own = resolve_template("tokenizer", smollm2_tokenizer)  # SmolLM2's writes any role as a ChatML turn
    assert not own.uses("tool") and not own.uses("name") and not own.uses("tools")
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m.role == 'tool' %}<|im_start|>user\n<tool_response>{{ m.content }}"
        "</tool_response>{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
    )
    assert resolve_template("tokenizer", tokenizer).uses("tool")


def test_a_run_template_that_names_no_template_is_refused_as_run_json_says_it(tmp_path):
    """run.json's "template": "nonexistent" was refused as "option 'data.template'", an option the reading command
    does not take, naming no file."""
    from tunelab.data.templates import run_template
    from tunelab.errors import RunDirError

    with pytest.raises(RunDirError) as refused:
        run_template("nonexistent", object(), tmp_path)
    said = str(refused.value)
    assert f"{tmp_path / 'run.json'}: field 'template' is 'nonexistent'" in said and "option" not in said, said
    assert all(name in said for name in NAMED)
