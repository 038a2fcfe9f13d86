"""The tokenizer a run saves prompts as training wrote: the run's template, with its system prompt where a
conversation brings none (not the base model's default system prompt), and the tokenizer in memory unchanged."""

import copy
from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer

from tunelab.data.templates import resolve_template, with_system_default
from tunelab.tasks.task import save_tokenizer

CONVERSATIONS = [
    [{"role": "user", "content": "Which box holds the code?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "  "}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}],
]


def _cfg(template, system_prompt):
    return SimpleNamespace(data=SimpleNamespace(template=template, system_prompt=system_prompt))


def _as_trained(template, messages, system_prompt, add_generation_prompt):
    """What training wrote: a blank system message is none, the run's system prompt where there is none."""
    if messages[0]["role"] == "system" and not messages[0]["content"].strip():
        messages = messages[1:]
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return template.write(messages, add_generation_prompt)


@pytest.mark.parametrize("name", ["tokenizer", "chatml", "alpaca"])
@pytest.mark.parametrize("system_prompt", ["You answer box questions.", None])
def test_the_saved_tokenizer_writes_what_training_wrote(smollm2_tokenizer, tmp_path, name, system_prompt):
    tok = smollm2_tokenizer
    own = tok.chat_template
    template = resolve_template(name, tok)
    save_tokenizer(tok, tmp_path, _cfg(name, system_prompt), SimpleNamespace(template=template))
    assert tok.chat_template == own
    saved = AutoTokenizer.from_pretrained(tmp_path)
    for messages in CONVERSATIONS:
        prompt = messages[-1]["role"] != "assistant"
        got = saved.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
        assert got == _as_trained(template, messages, system_prompt, prompt)
    if name == "tokenizer" and system_prompt:  # SmolLM2's own default system prompt is not what the run learnt
        first = saved.apply_chat_template(CONVERSATIONS[0], tokenize=False)
        assert "SmolLM" not in first and system_prompt in first


def test_a_base_whose_template_has_a_system_default_keeps_it_as_training_did(smollm2_tokenizer, tmp_path):
    """A base that is itself a tunelab merge or export carries its run's system prompt in its template; training
    over it writes that prompt where a conversation brings none, and so must the new run's saved tokenizer (and a
    second wrapper of one prompt writes what one writes, as merge adds it again over the run's tokenizer)."""
    tok = copy.deepcopy(smollm2_tokenizer)
    tok.chat_template = with_system_default(smollm2_tokenizer.chat_template, 'Earlier "run" prompt.')
    template = resolve_template("tokenizer", tok)
    save_tokenizer(tok, tmp_path, _cfg("tokenizer", None), SimpleNamespace(template=template))
    saved = AutoTokenizer.from_pretrained(tmp_path)
    for messages in CONVERSATIONS:
        got = saved.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert got == _as_trained(template, messages, None, True)
    assert 'Earlier "run" prompt.' in saved.apply_chat_template(CONVERSATIONS[0], tokenize=False)
    once = with_system_default(smollm2_tokenizer.chat_template, "P.")
    saved.chat_template = with_system_default(once, "P.")
    twice = saved.apply_chat_template(CONVERSATIONS[0], tokenize=False)
    saved.chat_template = once
    assert twice == saved.apply_chat_template(CONVERSATIONS[0], tokenize=False)


def test_a_trained_run_saves_its_system_prompt_in_its_tokenizer(tiny_overrides, smollm2_tokenizer):
    from tunelab.training.recipe import train

    run_dir = train(None, tiny_overrides | {"train.max_steps": 1}).run_dir
    saved = AutoTokenizer.from_pretrained(run_dir)
    text = saved.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    template = resolve_template("tokenizer", smollm2_tokenizer)
    system = [{"role": "system", "content": tiny_overrides["data.system_prompt"]}]
    assert text == template.write([*system, {"role": "user", "content": "Hi"}], True)


def test_a_base_with_templates_by_name_saves_each_as_training_read_them(smollm2_named_templates, tmp_path):
    """A base whose chat template is a dict (its "default" and named ones such as tool_use): training wrote with the
    default; the run's tokenizer keeps every one, with the run's system prompt, the named ones in their folder."""
    tok = smollm2_named_templates
    template = resolve_template("tokenizer", tok)
    save_tokenizer(tok, tmp_path, _cfg("tokenizer", "Be exact."), SimpleNamespace(template=template))
    saved = AutoTokenizer.from_pretrained(tmp_path)
    assert sorted(saved.chat_template) == ["default", "tool_use"]
    assert (tmp_path / "additional_chat_templates" / "tool_use.jinja").is_file()
    for messages in CONVERSATIONS:
        got = saved.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert got == _as_trained(template, messages, "Be exact.", True)
    tool = saved.apply_chat_template(CONVERSATIONS[0], tokenize=False, chat_template="tool_use")
    assert tool == "Be exact."  # the named template, its first message the run's system prompt
