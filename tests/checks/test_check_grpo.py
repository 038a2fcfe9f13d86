"""`tunelab check` on a grpo run: the prompts, the room each leaves for an answer, the rewards built as train builds
them, the first step's rollout with its rewards and their spread, and one forward/backward through grpo's loss."""

import json

from tunelab.cli import main

from ..smollm2_vocab import smollm2_tiny_model_dir, smollm2_tiny_tokenizer  # noqa: F401 (SmolLM2's vocabulary)

REWARDS = """
def letters(prompt, answer, row):
    return len(set(answer)) / (1 + len(answer))

def same(prompt, answer, row):
    return 1.0

def broken(prompt, answer, row):
    raise ValueError("no score")
"""


def _setup(tmp_path, tiny_model_dir, reward: str, **more) -> list[str]:
    (tmp_path / "check_rewards.py").write_text(REWARDS)
    rows = [{"prompt": f"What is {i} plus {i + 1}?", "expected": str(2 * i + 1)} for i in range(6)]
    rows.append({"prompt": "Tell me " + "a lot " * 30, "expected": "x"})  # leaves fewer than 6 tokens for an answer
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "config.yaml").write_text(
        f"task: grpo\nmodel: {{name: {tiny_model_dir}}}\ndata: {{train: [prompts.jsonl], max_length: 96}}\n"
        f"method: {{name: lora, r: 4}}\noutput_dir: run\n"
        f"grpo:\n  num_generations: 3\n  prompts_per_step: 2\n  max_new_tokens: 6\n"
        f"  rewards: [{{kind: function, function: 'check_rewards.py:{reward}'}}]\n"
    )
    flags = [x for k, v in more.items() for x in (f"--{k}", str(v))]
    return ["check", str(tmp_path / "config.yaml"), "--html", str(tmp_path / "page.html"), *flags]


def test_grpo_check_rolls_out_the_first_prompts_and_shows_their_rewards(tiny_model_dir, tmp_path, capsys):
    assert main(_setup(tmp_path, tiny_model_dir, "letters")) == 0
    out = capsys.readouterr().out
    assert "[PASS] prompts: 7 training prompts, 0 eval prompts" in out
    assert "[WARN] room: tokens per prompt: min " in out and "1 prompt + grpo.max_new_tokens 6 exceed" in out
    assert f"{tmp_path / 'prompts.jsonl'}:7 (" in out  # where the long prompt is
    assert "[PASS] rewards: 1 reward loads: letters x 1" in out
    assert "[INFO] first rollout: 2 prompts x 3 answers: reward mean " in out
    assert f"{tmp_path / 'prompts.jsonl'}:1, answer 3: reward " in out  # the first prompt's answers, each scored
    assert "[PASS] reward spread: 2 of 2 prompts' answers got different rewards" in out
    assert "[PASS] forward/backward (grpo): first micro-batch of answers: loss " in out
    assert "train.micro_batch = 6" in out  # auto counts a step's answers: 2 prompts x 3
    assert out.rstrip().splitlines()[-1].startswith("check: PASSED")
    assert not (tmp_path / "run").exists()


def test_rewards_that_tie_on_every_prompt_are_a_warning(tiny_model_dir, tmp_path, capsys):
    assert main(_setup(tmp_path, tiny_model_dir, "same")) == 0
    out = capsys.readouterr().out
    assert "[WARN] reward spread: each of the 2 prompts' answers got one reward for all of them" in out
    assert "every advantage is 0" in out


def test_a_failing_reward_fails_the_check_with_its_row(tiny_model_dir, tmp_path, capsys):
    assert main(_setup(tmp_path, tiny_model_dir, "broken")) == 1
    out = capsys.readouterr().out
    assert "[FAIL] first rollout: " in out and "prompts.jsonl:1: reward broken raised ValueError: no score" in out


def test_a_reward_file_that_does_not_exist_is_bad_input(tiny_model_dir, tmp_path, capsys):
    assert main([*_setup(tmp_path, tiny_model_dir, "letters"), "--data-only"]) == 0
    args = _setup(tmp_path, tiny_model_dir, "letters")
    (tmp_path / "check_rewards.py").unlink()
    assert main([*args, "--data-only"]) == 2
    assert "check_rewards.py" in capsys.readouterr().err


def test_a_reward_file_s_top_level_code_runs_once(tiny_model_dir, tmp_path, capsys):
    """check imported a reward's .py file each time it read the rewards (checking the config, building the
    rewards, naming them): a file with side effects (a counter, a download, a log line) ran them four times."""
    args = _setup(tmp_path, tiny_model_dir, "letters")
    count = tmp_path / "imports.txt"
    code = (tmp_path / "check_rewards.py").read_text()
    (tmp_path / "check_rewards.py").write_text(f"with open({str(count)!r}, 'a') as f:\n    f.write('x')\n" + code)
    assert main(args) == 0
    assert count.read_text() == "x"
    capsys.readouterr()


def test_one_prompt_a_step_is_counted_in_the_singular(tiny_model_dir, tmp_path, capsys):
    assert main(_setup(tmp_path, tiny_model_dir, "same", **{"grpo.prompts_per_step": 1})) == 0
    out = capsys.readouterr().out
    assert "grpo: 1 prompt x 3 answers per step; rewards same x 1" in out
    assert "[INFO] first rollout: 1 prompt x 3 answers: reward mean " in out
    assert "[WARN] reward spread: the prompt's answers got one reward for all of them" in out
