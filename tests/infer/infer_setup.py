"""What the tests of a run's inference share: short generation settings, and a question that leaves the tiny
model's context a given room."""

from tunelab.data.render import render_prompt
from tunelab.infer.generate import GenerationSettings

SHORT = GenerationSettings(max_new_tokens=4)
# The tiny random model answers greedily with whitespace only, an answer chat does not keep; sampled, it says words.
CHAT = GenerationSettings(max_new_tokens=4, temperature=1.0)


def words_for(run, room: int) -> str:
    """A question whose prompt leaves `room` positions of the tiny model's 1024 (negative: too long by that much)."""

    def text(n: int) -> str:
        return "Code" + " box" * n

    def length(n: int) -> int:
        return len(render_prompt([{"role": "user", "content": text(n)}], run.tokenizer, run.template))

    n = 1024 - room - length(0)
    assert length(n) == 1024 - room  # the tokenizer reads " box" as one token
    return text(n)
