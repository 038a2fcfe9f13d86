"""`tunelab chat`: what the conversation keeps between turns."""

import io
from dataclasses import replace

from tunelab.infer.chat import chat
from tunelab.infer.generate import GenerationSettings
from tunelab.infer.run import open_run


def test_an_empty_answer_is_not_kept_in_the_conversation(tiny_run_dir):
    """An answer that was empty (a model that answered whitespace only, or Ctrl-C before its first word) was kept as
    an empty assistant turn, fed back to the model with every later message, though training skips a conversation
    with an empty answer ("empty answer"). The exchange is dropped, and the chat says so."""
    run = open_run(tiny_run_dir, device="cpu")
    inputs = iter(["Code of box 1?", "Code of box 2?", "/exit"])
    out = io.StringIO()
    asked = []
    real = run.template.write

    def seen(messages, add_generation_prompt):
        asked.append([dict(m) for m in messages])
        return real(messages, add_generation_prompt)

    run.template = replace(run.template, write=seen)
    # the tiny random model answers greedily with whitespace only
    history = chat(run, GenerationSettings(max_new_tokens=4), read=lambda prompt: next(inputs), out=out)
    assert history == []
    assert [m["content"] for m in asked[-1]] == ["Code of box 2?"], asked[-1]  # no empty turn before it
    assert out.getvalue().count("(no answer: the question is not kept in the conversation.)") == 2, out.getvalue()
