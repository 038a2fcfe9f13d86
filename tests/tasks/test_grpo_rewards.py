"""Task grpo's rewards: the built-in kinds against hand-scored answers, a user's module:function and its failures
(raised, not a number, sys.exit, too large), keys a kind does not read, and a reward run as the reward model."""

import math
import re

import pytest

import tunelab.training.recipe as recipe
from tunelab.config import RewardSpec, load_config
from tunelab.errors import ConfigError, DataError
from tunelab.tasks import rewards as R
from tunelab.tasks.head_run import load_reward_model

from .grpo_setup import grpo_task, write_rows


def _sample(answer, expected="42", tokens=5, prompt="What is 40 plus 2?"):
    return R.Sample(prompt, answer, {"prompt": prompt, "expected": expected}, tokens, "f.jsonl:1")


def _scores(entry, samples):
    (spec,) = R.specs([entry])
    values, failures = R.score([R.build(spec)], samples)
    return values[:, 0].tolist(), failures


def test_built_in_rewards():
    answers = [_sample("The result is 42."), _sample("It is 41"), _sample("  answer: 42 ."), _sample("ANSWER: 42")]
    assert _scores("contains", answers)[0] == [1.0, 0.0, 1.0, 1.0]
    assert _scores("equals", [_sample(" 42. "), _sample("42 apples")])[0] == [1.0, 0.0]
    final = RewardSpec(kind="equals", pattern=r"answer:\s*(\d+)")
    assert _scores(final, [_sample("answer: 7\nanswer: 42"), _sample("answer: 41"), _sample("42")])[0] == [1, 0, 0]
    fmt = RewardSpec(kind="regex", pattern=r"(?i)answer: \d+\s*$")
    assert _scores(fmt, answers)[0] == [0.0, 0.0, 0.0, 1.0]  # "42 ." does not end in digits
    length = RewardSpec(kind="length", max_tokens=4)
    assert _scores(length, [_sample("a", tokens=3), _sample("a", tokens=4), _sample("a", tokens=6)])[0] == [0, 0, -0.5]
    assert _scores(RewardSpec(kind="contains", column="gold"), [R.Sample("p", "x 7", {"gold": 7}, 2, "w")])[0] == [1]
    # a whole phrase, as tunelab eval scores: a substring test rewarded 142 and 1,042 for 42
    whole = [_sample("It is 142."), _sample("It is 1,042"), _sample("42!"), _sample("(42)")]
    assert _scores("contains", whole)[0] == [0.0, 0.0, 1.0, 1.0]


def test_numbers_and_flags_in_expected_are_read_as_tunelab_eval_reads_them(tiny_model_dir, tmp_path, reward_module):
    """`"expected": 1000.0` was the text '1000.0', so the answer '1000' earned nothing from contains and equals while
    `tunelab eval` scored it right; true was refused ("not a text or number") while eval questions read it."""
    floats = [_sample("It is 1000.", expected=1000.0), _sample("1000", expected=1000.0), _sample("1000.5", expected=1000.0)]  # fmt: skip
    assert _scores("contains", floats)[0] == [1.0, 1.0, 0.0]
    assert _scores("equals", floats)[0] == [0.0, 1.0, 0.0]
    assert _scores("equals", [_sample("True", expected=True), _sample("2.5", expected=2.5)])[0] == [1.0, 1.0]
    data = write_rows(
        tmp_path / "p.jsonl", [{"prompt": "Is 7 prime?", "expected": True}, {"prompt": "2+2?", "expected": 4.0}]
    )
    _, built_data, _, _ = grpo_task(tiny_model_dir, tmp_path, data, reward_module, **{"data.eval_fraction": 0.0})
    assert len(built_data.train) == 2


def test_an_empty_expected_text_is_refused_before_the_model_loads(tiny_model_dir, tmp_path, reward_module):
    """contains with an empty expected text gave every answer full credit; null became the text 'none'."""
    for value in ("", "  ", None, [1, 2]):
        data = write_rows(
            tmp_path / "p.jsonl",
            [{"prompt": "What is 1 plus 2?", "expected": "3"}, {"prompt": "Hi?", "expected": value}],
        )
        with pytest.raises(
            DataError, match=r"p\.jsonl:2: 1 column \(expected\) empty, or not a text, a number or true/false"
        ):
            grpo_task(tiny_model_dir, tmp_path, data, reward_module, **{"data.eval_fraction": 0.0})


@pytest.mark.parametrize(
    "spec, says",
    [
        (RewardSpec(kind="contains", pattern="x"), "(contains): kind contains does not read 'pattern'; it reads name"),
        (RewardSpec(kind="regex", pattern="x", max_tokens=9), "(regex): kind regex does not read 'max_tokens'"),
        (RewardSpec(kind="length", column="gold"), "(length): kind length does not read 'column'"),
        (RewardSpec(kind="contains", column=" "), "(contains): 'column' is empty"),
    ],
)
def test_keys_a_reward_does_not_read_are_refused(spec, says):
    """A key the kind does not read (a pattern on contains) was ignored: the reward was not what the user wrote."""
    with pytest.raises(ConfigError, match=re.escape(f"option 'grpo.rewards', entry 1 {says}")):
        R.specs([spec])


def test_user_function_rewards_and_their_failures(reward_module):
    values, failures = _scores(RewardSpec(kind="function", function=f"{reward_module}:letters"), [_sample("aab")])
    assert values == pytest.approx([2 / 4]) and not failures
    values, failures = _scores(RewardSpec(kind="function", function=f"{reward_module}:broken"), [_sample("x")])
    assert math.isnan(values[0]) and "raised ValueError: no score for 42" in failures[0].reason
    _, failures = _scores(RewardSpec(kind="function", function=f"{reward_module}:text"), [_sample("x")])
    assert "returned 'high' (str), not a number" in failures[0].reason
    # a 0-d tensor or array (a reward computed with torch) is its value, as a numpy float is; a (1,) one is refused
    values, failures = _scores(RewardSpec(kind="function", function=f"{reward_module}:as_tensor"), [_sample("abcde")])
    assert values == pytest.approx([0.5]) and not failures
    values, failures = _scores(RewardSpec(kind="function", function=f"{reward_module}:as_array"), [_sample("x")])
    assert values == pytest.approx([0.25]) and not failures
    _, failures = _scores(RewardSpec(kind="function", function=f"{reward_module}:as_vector"), [_sample("x")])
    assert "returned Tensor of shape (1,), not a number; return one number" in failures[0].reason
    with pytest.raises(ConfigError, match="has no function .missing."):
        R.specs([RewardSpec(kind="function", function=f"{reward_module}:missing")])
    with pytest.raises(ConfigError, match="module:function"):
        R.specs([RewardSpec(kind="function", function="no_colon")])
    with pytest.raises(ConfigError, match="allowed values"):
        R.specs(["bleu"])
    with pytest.raises(ConfigError, match="needs 'pattern'"):
        R.specs(["regex"])
    for name, says in (
        ("leaves", "called sys.exit(1)"),  # it ended the run with exit 0 or 3, half written
        ("huge", "returned 1e+308, beyond +-1e+06"),  # finite, but inf once summed in fp32: a traceback
        ("enormous", "returned a number too large for a float"),  # OverflowError: a traceback
    ):
        values, failures = _scores(RewardSpec(kind="function", function=f"{reward_module}:{name}"), [_sample("x")])
        assert math.isnan(values[0]) and failures[0].reason.startswith(says), failures
    names = [s.name for s in R.specs(["contains", "contains", RewardSpec(kind="length", name="short")])]
    assert names == ["contains", "contains2", "short"]


def test_numpy_scalar_rewards_count_as_their_python_values():
    """A reward function returning a numpy bool (`np.mean(x) > 0.5`) or numpy integer was a failure, "not a number",
    that stopped the run, while a Python bool counted as 0/1; a numpy scalar now counts as its Python value."""
    import numpy as np

    got = [np.bool_(True), np.bool_(False), np.int64(3), np.uint8(2), np.float32(0.5), np.float16(0.25), True]
    reward = R.Reward("numpy", 1.0, lambda samples: list(got))
    values, failures = R.score([reward], [_sample("x")] * len(got))
    assert not failures, failures
    assert values[:, 0].tolist() == pytest.approx([1.0, 0.0, 3.0, 2.0, 0.5, 0.25, 1.0])
    reward = R.Reward("numpy", 1.0, lambda samples: [np.str_("high"), np.complex64(1j), np.float64("nan")])
    _, failures = R.score([reward], [_sample("x")] * 3)
    assert [f.reason for f in failures] == [
        "returned 'high' (str), not a number",
        "returned 1j (complex), not a number",
        "returned nan, not a finite number",
    ]


def test_a_reward_function_that_cannot_take_prompt_answer_row_is_refused_before_the_model_loads(reward_module):
    """f(prompt, answer) and an async def passed every check and stopped the run at its first step's scoring, after
    the model had loaded and sampled."""
    with pytest.raises(ConfigError, match=r"entry 1: grpo_test_rewards:two\(prompt, answer\) cannot be called as f\("):
        R.specs([RewardSpec(kind="function", function=f"{reward_module}:two")])
    with pytest.raises(ConfigError, match=r"entry 2: grpo_test_rewards:later is an async function"):
        R.specs(["contains", RewardSpec(kind="function", function=f"{reward_module}:later")])
    assert R.specs([RewardSpec(kind="function", function=f"{reward_module}:flexible")])[0].name == "flexible"


def test_a_reward_file_and_run_are_relative_to_the_config(tmp_path):
    (tmp_path / "mine.py").write_text("def score(prompt, answer, row):\n    return float(len(answer))\n")
    (tmp_path / "config.yaml").write_text(
        "task: grpo\ngrpo:\n  rewards:\n    - {kind: function, function: 'mine.py:score'}\n"
        "    - {kind: model, run: rm}\n    - contains\n"
    )
    rewards = load_config(tmp_path / "config.yaml").config.grpo.rewards
    assert rewards[0].function == f"{tmp_path / 'mine.py'}:score" and rewards[1].run == str(tmp_path / "rm")
    assert rewards[2] == "contains"
    (spec,) = R.specs(rewards[:1])
    assert R.build(spec).score([_sample("abc")]) == [3.0]


def test_a_reward_run_scores_answers_as_its_reward_function(tiny_model_dir, tmp_path):
    pairs = [{"prompt": f"Say {i}.", "chosen": f"{i}", "rejected": "no"} for i in range(8)]
    run = recipe.train(
        None,
        {
            "task": "reward",
            "model.name": str(tiny_model_dir),
            "data.train": [write_rows(tmp_path / "pairs.jsonl", pairs)],
            "data.max_length": 64,
            "method.r": 4,
            "train.micro_batch": 4,
            "train.max_steps": 2,
            "output_dir": str(tmp_path / "rm"),
        },
    ).run_dir
    (spec,) = R.specs([RewardSpec(kind="model", run=str(run), name="rm")])
    samples = [
        _sample("42", prompt="Say 42."),
        _sample("no", prompt="Say 42."),
        _sample("7", prompt=[{"role": "user", "content": "Say 7."}]),
    ]
    got = R.score([R.build(spec)], samples)[0][:, 0].tolist()
    want = load_reward_model(run, device="cpu")(
        ["Say 42.", "Say 42.", [{"role": "user", "content": "Say 7."}]], ["42", "no", "7"]
    )
    assert got == pytest.approx(want, rel=1e-6) and len(set(got)) == 3


def test_a_reward_run_that_fails_to_load_is_named_by_its_option(tiny_model_dir, tmp_path):
    """A reward run that passed the check but could not be loaded when the rollouts began (its config.json gone)
    stopped with the run's own error, which did not say that grpo.rewards named it."""
    pairs = [{"prompt": f"Say {i}.", "chosen": f"{i}", "rejected": "no"} for i in range(8)]
    overrides = {"task": "reward", "model.name": str(tiny_model_dir), "data.max_length": 64, "method.r": 4}
    overrides |= {"data.train": [write_rows(tmp_path / "pairs.jsonl", pairs)], "train.micro_batch": 4}
    run = recipe.train(None, overrides | {"train.max_steps": 1, "output_dir": str(tmp_path / "rm")}).run_dir
    (spec,) = R.specs([RewardSpec(kind="model", run=str(run), name="rm")])
    (run / "config.json").unlink()
    with pytest.raises(ConfigError, match=r"^option 'grpo.rewards', reward 'rm' \(kind model\): .*config.json"):
        R.build(spec)


def test_a_model_reward_that_is_not_a_finished_reward_run_is_named_as_its_entry(tiny_run_dir, tmp_path):
    """An sft run as a reward model failed later with 'tunelab predict needs a classify or reward run'; a classify run
    was loaded, its K label scores read as one reward."""
    with pytest.raises(ConfigError, match=r"grpo.rewards', entry 1: run '.*' is an sft run; kind model scores answers"):
        R.specs([RewardSpec(kind="model", run=str(tiny_run_dir))])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"grpo.rewards', entry 1: run '.*empty' cannot be used: "):
        R.specs([RewardSpec(kind="model", run=str(tmp_path / "empty"))])


def test_a_reward_weight_that_would_overflow_the_totals_is_refused():
    """weight 3e38 made the fp32 totals inf and the advantages NaN: steps skipped by the guard, exit 0."""
    with pytest.raises(
        ConfigError, match=r"option 'grpo.rewards', entry 1, key 'weight' is 3e\+38; it must be <= 1000000"
    ):
        load_config(None, {"task": "grpo", "grpo.rewards": [{"kind": "contains", "weight": 3e38}]})


def test_an_unfinished_reward_run_is_told_to_be_resumed_as_the_caller_trains(tiny_overrides, tmp_path):
    """tunelab.train of a grpo config whose reward model's run had not finished was told to resume it with
    'tunelab train CONFIG --resume': the reward run was opened with the command line's spelling whoever asked."""
    import tunelab
    from tunelab.config.flags import CLI
    from tunelab.run_info import RunInfo
    from tunelab.rundir import write_info

    rm = tmp_path / "rm"
    rm.mkdir()
    write_info(rm, RunInfo(base_model="m", method="lora", finished=False, task="reward"))
    entry = {"kind": "model", "run": str(rm)}
    with pytest.raises(ConfigError) as python:
        tunelab.train(None, tiny_overrides | {"task": "grpo", "train.grad_accum": 1, "grpo.rewards": [entry]})
    said = str(python.value)
    assert f"entry 1: run '{rm}' cannot be used: " in said and "tunelab.train(CONFIG, resume=True)" in said, said
    assert "--resume" not in said
    with pytest.raises(ConfigError) as cli:
        R.specs([RewardSpec(**entry)], CLI)
    assert "'tunelab train CONFIG --resume'" in str(cli.value) and "resume=True" not in str(cli.value)
