"""`tunelab chat`: what the conversation keeps between turns."""

import io
from dataclasses import replace

import pytest

from tunelab.config.flags import CLI, PYTHON
from tunelab.infer.chat import chat
from tunelab.infer.generate import GenerationSettings
from tunelab.infer.run import open_run

from ..smollm2_vocab import (  # noqa: F401 (SmolLM2's vocabulary)
    smollm2_tiny_model_dir,
    smollm2_tiny_run_dir,
    smollm2_tiny_tokenizer,
)


def _prompts_written(run, view) -> list:
    """view(messages) of every prompt the run's template writes from now on (the chat's questions as the model reads
    them)."""
    asked, real = [], run.template.write

    def seen(messages, add_generation_prompt):
        asked.append(view(messages))
        return real(messages, add_generation_prompt)

    run.template = replace(run.template, write=seen)
    return asked


def test_an_empty_answer_is_not_kept_in_the_conversation(tiny_run_dir):
    """An answer that was empty (a model that answered whitespace only, or Ctrl-C before its first word) was kept as
    an empty assistant turn, fed back to the model with every later message, though training skips a conversation
    with an empty answer ("empty answer"). The exchange is dropped, and the chat says so."""
    run = open_run(tiny_run_dir, device="cpu")
    inputs = iter(["Code of box 1?", "Code of box 2?", "/exit"])
    out = io.StringIO()
    asked = _prompts_written(run, lambda messages: [dict(m) for m in messages])
    # the tiny random model answers greedily with whitespace only
    history = chat(run, GenerationSettings(max_new_tokens=4), read=lambda prompt: next(inputs), out=out)
    assert history == []
    assert [m["content"] for m in asked[-1]] == ["Code of box 2?"], asked[-1]  # no empty turn before it
    assert out.getvalue().count("(no answer: the question is not kept in the conversation.)") == 2, out.getvalue()


def test_the_next_answer_waits_for_a_stopped_one_to_end(tiny_run_dir):
    """Ctrl-C stopped an answer at its next token but did not wait for that token: the next message started a
    second generation on the same model while the first was still in its forward pass (two generate loops on one
    model at once, which the server's queue exists to prevent). The chat now waits for the stopped one to end."""
    import threading
    import time

    run = open_run(tiny_run_dir, device="cpu")
    forward, running, overlapped = run.model.forward, [], []
    guard = threading.Lock()

    def slow(*args, **kwargs):  # a forward pass of a big model on a CPU: long enough to type the next message
        with guard:
            running.append(threading.get_ident())
            overlapped.append(len(set(running)) > 1)
        try:
            time.sleep(0.3)
            return forward(*args, **kwargs)
        finally:
            with guard:
                running.remove(threading.get_ident())

    run.model.forward = slow

    class Interrupting(io.StringIO):
        """Ctrl-C as the first answer's first piece is shown."""

        pressed = False

        def write(self, text: str) -> int:
            if "model> " in self.getvalue() and not self.pressed:
                self.pressed = True
                raise KeyboardInterrupt
            return super().write(text)

    inputs = iter(["Code of box 1?", "Code of box 2?", "/exit"])
    chat(
        run, GenerationSettings(max_new_tokens=3, temperature=1.0), read=lambda prompt: next(inputs), out=Interrupting()
    )
    assert overlapped and not any(overlapped), overlapped


@pytest.mark.parametrize("spelling", [CLI, PYTHON])
def test_an_answer_cut_at_max_new_tokens_is_said(tiny_run_dir, spelling):
    """An answer that reached --max-new-tokens stopped mid-sentence and the chat went on without a word, as if the
    model had finished. It now says the answer was cut at the limit and how to allow more; an answer that ends with
    its end-of-turn token says nothing. `tunelab chat` names its flag, tunelab.chat() the settings it takes (both
    were told "--max-new-tokens (in Python: GenerationSettings.max_new_tokens)")."""
    import torch

    run = open_run(tiny_run_dir, device="cpu")
    how = "--max-new-tokens N" if spelling.flags else "settings=GenerationSettings(max_new_tokens=N)"
    said = f"(the answer was cut at 3 tokens, the limit; {how} allows more.)"
    settings = GenerationSettings(max_new_tokens=3, temperature=1.0)  # sampled: the tiny model writes text

    def talk() -> str:
        inputs, out = iter(["Code of box 1?", "/exit"]), io.StringIO()
        torch.manual_seed(0)
        chat(run, settings, read=lambda prompt: next(inputs), out=out, spelling=spelling)
        return out.getvalue()

    text = talk()
    assert said in text and ("GenerationSettings" if spelling.flags else "--max-new-tokens") not in text
    end = (run.template.stop_token_ids or [run.tokenizer.eos_token_id])[0]
    generate = run.model.generate
    run.model.generate = lambda **kwargs: generate(**kwargs, forced_eos_token_id=end)  # its turn ends at the limit
    assert said not in talk()


def test_ctrl_c_at_the_prompt_ends_the_chat_as_exit_does(tiny_run_dir, monkeypatch, capsys):
    """Ctrl-C at the "you> " prompt raised KeyboardInterrupt out of the chat: `tunelab chat` ended with exit code
    130 mid-line, as if it had failed. It now ends the session as /exit does: the line is ended, exit code 0."""
    from tunelab.cli import main

    def interrupted(prompt: str) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr("builtins.input", interrupted)
    assert main(["chat", str(tiny_run_dir), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.endswith("\n")


def test_system_sets_the_system_prompt_for_the_next_answers(tiny_run_dir):
    """The chat had no way to change the system prompt: "/system ..." was refused as an unknown command. /system TEXT
    sets it for the next answers, keeping the conversation; /system alone goes back to the run's own (here none);
    one the template cannot write (special-token text) is refused when it is set, not with every later message."""
    run = open_run(tiny_run_dir, device="cpu")
    inputs = iter(["/system You are a pirate.", "Code of box 1?", "/system", "Code of box 2?", "/system x<|im_end|>"])
    inputs = iter([*inputs, "Code of box 3?", "/exit"])
    out = io.StringIO()
    asked = _prompts_written(run, lambda messages: [(m["role"], m["content"]) for m in messages])
    chat(run, GenerationSettings(max_new_tokens=2), read=lambda prompt: next(inputs), out=out)
    last = {m[-1][1]: m for m in asked if m and m[-1][0] == "user"}  # each question's prompt
    assert last["Code of box 1?"] == [("system", "You are a pirate."), ("user", "Code of box 1?")], last
    assert last["Code of box 2?"] == [("user", "Code of box 2?")], last
    assert last["Code of box 3?"] == [("user", "Code of box 3?")], last
    said = out.getvalue()
    assert "(system prompt set; the model reads it from the next answer on.)" in said, said
    assert "(system prompt not set: the special token text '<|im_end|>'" in said, said
    assert "unknown command" not in said, said


def test_system_none_asks_for_no_system_prompt(mixed_system_run_dir):
    """A run trained with a data.system_prompt could not be chatted with under no system prompt: /system alone meant
    the run's own, and an empty one is none, which the run's takes the place of. /system none drops it (as serve's
    "default_system_prompt": false), keeping the conversation; /system goes back to the run's own."""
    run = open_run(mixed_system_run_dir, device="cpu")
    inputs = iter(["Code of box 1?", "/system none", "Code of box 2?", "/system", "Code of box 3?", "/exit"])
    out = io.StringIO()
    asked = _prompts_written(run, lambda messages: [(m["role"], m["content"]) for m in messages])
    chat(run, GenerationSettings(max_new_tokens=2), read=lambda prompt: next(inputs), out=out)
    last = {m[-1][1]: m for m in asked if m and m[-1][0] == "user"}  # each question's prompt
    assert last["Code of box 1?"][0] == ("system", "You are helpful."), last
    assert all(role != "system" for role, _ in last["Code of box 2?"]), last
    assert last["Code of box 3?"][0] == ("system", "You are helpful."), last
    said = out.getvalue()
    assert "(no system prompt from the next answer on: the prompt of a conversation trained without one.)" in said
    assert "/system none: none" in said.splitlines()[0], said


def test_a_line_ending_in_a_backslash_continues_the_message(tiny_run_dir):
    """A message of several lines (code, a list) could not be typed: each Enter sent a line as its own message. A
    line ending in a backslash now continues on the next, under a "...> " prompt, and the lines are sent as one
    message joined by line breaks."""
    run = open_run(tiny_run_dir, device="cpu")
    inputs = iter(["Codes of boxes:\\", "1 and\\  ", "2?", "/exit"])
    prompts = []
    asked = _prompts_written(run, lambda messages: [m["content"] for m in messages])

    def read(prompt: str) -> str:
        prompts.append(prompt)
        return next(inputs)

    chat(run, GenerationSettings(max_new_tokens=2), read=read, out=io.StringIO())
    assert prompts == ["you> ", "...> ", "...> ", "you> "], prompts
    assert ["Codes of boxes:\n1 and\n2?"] in asked, asked


def test_ctrl_c_at_a_continuation_prompt_discards_the_message_only(tiny_run_dir, monkeypatch, capsys):
    """Ctrl-C at the "...> " prompt of a message continued with a backslash ended the whole chat, where the user
    meant to drop the message being typed. It now discards that message (said), nothing of it is sent, and the chat
    goes on at "you> "; Ctrl-C there still ends it, exit code 0."""
    from tunelab.cli import main

    inputs = iter(["Codes of boxes:\\", KeyboardInterrupt, "Code of box 1?", KeyboardInterrupt])
    prompts, asked = [], []

    def read(prompt: str) -> str:
        prompts.append(prompt)
        given = next(inputs)
        if given is KeyboardInterrupt:
            raise KeyboardInterrupt
        return given

    monkeypatch.setattr("builtins.input", read)

    class Answer(list):
        cut = False

    def answer(model, tokenizer, template, messages, settings, generator=None):
        asked.append([m["content"] for m in messages])
        return Answer(["Hi"]), 99

    monkeypatch.setattr("tunelab.infer.chat.stream_answer", answer)
    assert main(["chat", str(tiny_run_dir), "--device", "cpu", "--max-new-tokens", "2"]) == 0
    assert prompts == ["you> ", "...> ", "you> ", "you> "], prompts
    assert asked == [["Code of box 1?"]], asked
    assert "\n(message discarded: its lines were not sent.)\n" in capsys.readouterr().out


def test_input_ending_inside_a_continued_message_is_said(tiny_run_dir, monkeypatch, capsys):
    """Input that ended at a "...> " prompt (Ctrl-D, or a piped file whose last line ends in a backslash) ended the
    chat and dropped the message typed so far without a word. The chat still ends (exit 0), and says the message was
    not sent."""
    from tunelab.cli import main

    inputs = iter(["Code of box 1?\\"])

    def read(prompt: str) -> str:
        try:
            return next(inputs)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", read)
    assert main(["chat", str(tiny_run_dir), "--device", "cpu"]) == 0
    said = capsys.readouterr().out
    assert said.endswith("\n(input ended inside a message continued with \\: the message was not sent.)\n"), said
    assert "model>" not in said


def test_a_command_with_text_after_it_or_in_capitals_is_not_sent(tiny_run_dir):
    """ "/exit now", "/reset please" and "/Exit" were sent to the model as questions, where the user meant a command.
    They are now not sent, saying why (the command takes no text; commands are lower-case), and the chat goes on."""
    run = open_run(tiny_run_dir, device="cpu")
    inputs = iter(["/exit now", "/reset please", "/Exit", "/SYSTEM be brief", "/exit"])
    out = io.StringIO()
    asked = _prompts_written(run, list)
    chat(run, GenerationSettings(max_new_tokens=2), read=lambda prompt: next(inputs), out=out)
    said = out.getvalue()
    assert not [m for m in asked if m and m[-1]["content"].startswith("/")], asked
    for why in (
        "/exit takes no text",
        "/reset takes no text",
        "commands are lower-case: /exit",
        "commands are lower-case: /system",
    ):
        assert f"(not sent: {why}; /reset starts over, /system TEXT, /exit leaves.)" in said, said


def test_a_mixture_of_system_prompts_says_which_one_the_chat_uses(mixed_system_run_dir, tiny_run_dir):
    """A run trained on sources of different system prompts was chatted with under data.system_prompt alone, without
    a word, so a user could not tell why the answers read like one source only. The chat now says at start which
    system prompt it uses, names the sources' others and how to give one (/system); a run of one prompt says nothing."""
    out = io.StringIO()
    chat(open_run(mixed_system_run_dir, device="cpu"), GenerationSettings(), read=lambda prompt: "/exit", out=out)
    said = out.getvalue()
    expected = (
        "(the run's sources trained with different system prompts (pirate: 'You are a pirate.'; plain: none); answers "
        "use data.system_prompt, 'You are helpful.', unless /system TEXT sets another.)\n"
    )
    assert expected in said, said
    out = io.StringIO()
    chat(open_run(tiny_run_dir, device="cpu"), GenerationSettings(), read=lambda prompt: "/exit", out=out)
    assert "system prompts" not in out.getvalue()


def test_the_oldest_exchanges_are_left_out_once_the_conversation_outgrows_the_context(tiny_run_dir, monkeypatch):
    """A conversation longer than the model's context was refused message after message ("not sent: the prompt is
    N tokens ...") until /reset, which threw the whole history away. The oldest exchanges are now left out, as many
    as it takes to leave room for the answer, and the chat says so once."""
    from tunelab.data.render import render_prompt
    from tunelab.infer import chat as chat_module

    run = open_run(tiny_run_dir, device="cpu")
    sent = []

    class Answer:
        cut = False

        def __iter__(self):
            yield "Box 7: 1259."

        def close(self):
            pass

    def fake(model, tokenizer, template, messages, settings, generator=None):
        sent.append([m["content"] for m in messages])
        return Answer(), settings.max_new_tokens

    monkeypatch.setattr(chat_module, "stream_answer", fake)
    questions = [f"Code of box {i}?" for i in range(1, 6)]
    three = [m for q in questions[:2] for m in ({"role": "user", "content": q}, {"role": "assistant", "content": "x"})]
    three = [{**m, "content": "Box 7: 1259."} if m["role"] == "assistant" else m for m in three]
    fits = len(render_prompt([*three, {"role": "user", "content": questions[2]}], run.tokenizer, run.template))
    monkeypatch.setattr(run.model.config, "max_position_embeddings", fits + 2)  # three questions and their answers
    inputs, out = iter([*questions, "/exit"]), io.StringIO()
    chat(run, GenerationSettings(max_new_tokens=2), read=lambda prompt: next(inputs), out=out)
    assert [s[0] for s in sent] == ["Code of box 1?", "Code of box 1?", "Code of box 1?", questions[1], questions[2]]
    assert [len(s) for s in sent] == [1, 3, 5, 5, 5], sent
    assert out.getvalue().count("(the conversation no longer fits the model's context") == 1, out.getvalue()


class _Thinks:
    """A model whose generate writes `ids` through the streamer, as transformers' does."""

    def __init__(self, ids):
        from types import SimpleNamespace

        self.ids, self.config, self.generation_config = ids, SimpleNamespace(max_position_embeddings=4096), None

    def parameters(self):  # where the prompt is put
        import torch

        yield torch.zeros(1)

    def generate(self, input_ids, streamer, **_):
        import torch

        streamer.put(input_ids)
        for i in self.ids:
            streamer.put(torch.tensor([i]))
        streamer.end()
        return torch.cat([input_ids, torch.tensor([self.ids])], dim=1)


def test_a_thought_is_shown_and_kept_apart_from_the_answer(tiny_run_dir, base_tokenizer):
    """A reasoning model's thought was kept as the answer's start, and where `<think>` and `</think>` are special
    tokens it was shown without them, run into the answer. It is shown with its markers, and the conversation keeps
    the answer alone, the thought as its `reasoning_content` (what an OpenAI client sends back)."""
    from tunelab.data.templates import resolve_template

    chatml = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tokenizer = base_tokenizer(extra_special=("<think>", "</think>"), chat_template=chatml)
    model = _Thinks(tokenizer.encode("<think>\nSeven.\n</think>\n\nThe code is 7.</s>", add_special_tokens=False))
    run = open_run(tiny_run_dir, device="cpu")
    run = replace(run, model=model, tokenizer=tokenizer, template=resolve_template("tokenizer", tokenizer))
    inputs, out = iter(["Code of box 3?", "/exit"]), io.StringIO()
    history = chat(run, GenerationSettings(max_new_tokens=40), read=lambda prompt: next(inputs), out=out)
    assert history[-1] == {"role": "assistant", "content": "The code is 7.", "reasoning_content": "Seven."}
    assert "model> <think>\nSeven.\n</think>" in out.getvalue(), out.getvalue()


class _Bounded(_Thinks):
    """_Thinks that stops at generate's max_new_tokens, as transformers' does, and keeps the limits it was given."""

    def __init__(self, ids):
        super().__init__(ids)
        self.limits = []

    def generate(self, input_ids, streamer, max_new_tokens, **kwargs):
        self.limits.append(max_new_tokens)
        full, self.ids = self.ids, self.ids[:max_new_tokens]
        try:
            return super().generate(input_ids, streamer, **kwargs)
        finally:
            self.ids = full


def test_without_max_new_tokens_an_answer_takes_the_room_the_context_leaves(tiny_run_dir, base_tokenizer):
    """chat cut every answer at 128 tokens where serve's answer takes the room the context leaves: a reasoning
    model's thought longer than that never reached its answer, and the chat kept nothing. Without max_new_tokens an
    answer now runs until the model ends its turn, within the context; one that fills the room is said."""
    from tunelab.data.render import render_prompt
    from tunelab.data.templates import resolve_template

    chatml = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tokenizer = base_tokenizer(extra_special=("<think>", "</think>"), chat_template=chatml)
    thought = " ".join(["step"] * 150)
    written = tokenizer.encode(f"<think>\n{thought}\n</think>\n\nThe code is 7.</s>", add_special_tokens=False)
    assert len(written) > 128
    model = _Bounded(written)
    run = open_run(tiny_run_dir, device="cpu")
    run = replace(run, model=model, tokenizer=tokenizer, template=resolve_template("tokenizer", tokenizer))
    question = [{"role": "user", "content": "Code of box 3?"}]
    prompt = len(render_prompt(question, tokenizer, run.template))
    inputs, out = iter(["Code of box 3?", "/exit"]), io.StringIO()
    history = chat(run, GenerationSettings(), read=lambda prompt: next(inputs), out=out)
    assert model.limits == [4096 - prompt]
    assert history[-1] == {"role": "assistant", "content": "The code is 7.", "reasoning_content": thought}
    assert "cut" not in out.getvalue()
    model.config.max_position_embeddings = prompt + 20  # room for 20 tokens: the answer fills it
    inputs, out = iter(["Code of box 3?", "/exit"]), io.StringIO()
    chat(run, GenerationSettings(), read=lambda prompt: next(inputs), out=out)
    assert model.limits[-1] == 20
    assert "(the answer filled the room the model's context leaves, 20 tokens, and was cut there" in out.getvalue()


def test_a_piped_question_is_written_after_its_prompt(tiny_run_dir, monkeypatch, capsys):
    """`printf 'hi\n' | tunelab chat RUN` wrote `you> model> ...`: input() does not echo a line read from a pipe,
    so the transcript lost the questions. A line read from a pipe or a file is written after its prompt."""
    run = open_run(tiny_run_dir, device="cpu")
    monkeypatch.setattr("sys.stdin", io.StringIO("Code of box 1?\nline one \\\nline two\n/exit\n"))
    chat(run, GenerationSettings(max_new_tokens=2))
    said = capsys.readouterr().out
    assert "you> Code of box 1?\n" in said and "you> line one \\\n...> line two\n" in said and "you> /exit\n" in said
