"""grpo's rewards and a reasoning model's thought: the rewards that check the answer read it without the thought
(`<think>...</think>`, data/reasoning.py), as `tunelab eval` scores it and as TRL's reasoning_accuracy_reward strips
it; `regex`, a format reward, matches the answer as written, thought included."""

import pytest

from tunelab.config import RewardSpec
from tunelab.tasks import rewards as R
from tunelab.tasks.grpo import _samples
from tunelab.tasks.prompt_data import PromptRow

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WRITTEN = "<think>\nIs it 42? No: 40 plus 3 is 43.\n</think>\n\nThe result is 43."


@pytest.fixture(scope="module")
def tokenizer(base_tokenizer):
    return base_tokenizer(extra_special=("<think>", "</think>", "<|im_start|>", "<|im_end|>"), chat_template=CHATML)


def _sampled(tokenizer, written: str, prompt_tail: str = "") -> R.Sample:
    """The Sample grpo scores for the answer `written` (its stop token after it) to a prompt ending in
    `prompt_tail`, through the decoding the rollout uses."""
    prompt = tokenizer.encode("<|im_start|>user\nWhat is 40 plus 3?<|im_end|>\n<|im_start|>assistant\n" + prompt_tail)
    row = PromptRow(prompt, "What is 40 plus 3?", {"prompt": "What is 40 plus 3?", "expected": "42"}, "p.jsonl", 1)
    eos = tokenizer.eos_token_id
    ids = tokenizer.encode(written, add_special_tokens=False) + [eos]
    (sample,) = _samples([row], [ids], {eos}, tokenizer, 1)
    return sample


def _score(entry, sample) -> float:
    (spec,) = R.specs([entry])
    values, failures = R.score([R.build(spec)], [sample])
    assert not failures, failures
    return values[0, 0].item()


def test_a_thought_is_no_part_of_the_answer_the_rewards_check(tokenizer):
    """The thought names the expected 42 and the answer says 43: contains and equals rewarded the answer for its
    thought (1.0), and with <think> a special token the thought ran into the answer unmarked. The answer alone is
    now scored (0.0); regex sees the whole text, markers included, so a format reward can ask for a thought."""
    sample = _sampled(tokenizer, WRITTEN)
    assert (sample.thought, sample.answer) == ("Is it 42? No: 40 plus 3 is 43.", "The result is 43.")
    assert _score("contains", sample) == 0.0
    assert _score(RewardSpec(kind="equals", pattern=r"(\d+)"), sample) == 0.0
    assert _score(RewardSpec(kind="regex", pattern=r"^<think>\n.*?\n</think>\n\n\S"), sample) == 1.0
    right = _sampled(tokenizer, WRITTEN.replace("The result is 43.", "The result is 42."))
    assert _score("contains", right) == 1.0
    plain = _sampled(tokenizer, "The result is 42.")  # no thought: answered as before
    assert (plain.thought, plain.answer, plain.written) == (None, "The result is 42.", "The result is 42.")


def test_a_thought_the_prompt_opened_is_read_from_the_answers_start(tokenizer):
    """R1's later templates end the prompt with <think>: the answer starts inside the thought."""
    sample = _sampled(tokenizer, WRITTEN.removeprefix("<think>"), prompt_tail="<think>")
    assert (sample.thought, sample.answer) == ("Is it 42? No: 40 plus 3 is 43.", "The result is 43.")
    assert sample.written.startswith("<think>\nIs it 42?")
    assert _score("contains", sample) == 0.0


def test_a_reward_function_gets_the_answer_and_may_ask_for_the_thought(tokenizer, tmp_path, monkeypatch):
    (tmp_path / "think_rewards.py").write_text(
        "def answer_only(prompt, answer, row):\n"
        "    return float(answer == 'The result is 43.')\n"
        "def with_thought(prompt, answer, row, thought=None):\n"
        "    return float(thought is not None and '43' in thought)\n"
        "def any_keywords(prompt, answer, row, **extra):\n"
        "    return float(extra == {'expected': '42', 'thought': None})\n"  # the columns too, but prompt (bound)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sample = _sampled(tokenizer, WRITTEN)
    assert _score(RewardSpec(kind="function", function="think_rewards:answer_only"), sample) == 1.0
    assert _score(RewardSpec(kind="function", function="think_rewards:with_thought"), sample) == 1.0
    plain = _sampled(tokenizer, "The result is 43.")
    assert _score(RewardSpec(kind="function", function="think_rewards:any_keywords"), plain) == 1.0


def test_an_answer_without_a_thought_is_read_as_written(tokenizer):
    """Its whitespace kept, as before thoughts were read: a regex anchored at its start sees what the model wrote."""
    sample = _sampled(tokenizer, "\n42")
    assert (sample.thought, sample.text, sample.answer) == (None, None, "\n42")
    assert _score(RewardSpec(kind="regex", pattern=r"^\d"), sample) == 0.0
