"""--resume of a staged run: how a stage's changed options are named."""

import pytest

from tunelab.config import load_config
from tunelab.config.render import dump_yaml
from tunelab.errors import ConfigError
from tunelab.training.stage_resume import refuse_changed_stage


def _stages(grpo: dict) -> dict:
    rl = {"task": "grpo", "continue": "adapter", "data": {"train": ["p.jsonl"]}, "grpo": grpo}
    return {"model.name": "m", "data.train": [], "stages": [{"data": {"train": ["a.jsonl"]}}, rl]}


def test_a_changed_grpo_stage_names_the_option_that_changed_and_no_other(tmp_path):
    """Resuming a staged run whose grpo stage had gained grpo.on_reward_error: skip named grpo.rewards as changed too,
    its saved mappings "->" the same rewards as RewardSpec(...), and the added option as "None -> 'skip'", as if it
    had been set to None. The rewards are compared as config.yaml holds them, and an option a stage did not set is
    said so."""
    rewards = [{"kind": "function", "function": "rew:score"}]
    (tmp_path / "config.yaml").write_text(dump_yaml(load_config(None, _stages({"rewards": rewards})).config))
    refuse_changed_stage(tmp_path, load_config(None, _stages({"rewards": rewards})))  # the same: nothing said
    changed = load_config(None, _stages({"rewards": rewards, "on_reward_error": "skip"}))
    with pytest.raises(ConfigError) as refused:
        refuse_changed_stage(tmp_path, changed)
    message = str(refused.value)
    assert "stage 2's options differ" in message and "grpo.on_reward_error: not set -> 'skip'." in message, message
    assert "grpo.rewards" not in message, message


def test_a_finished_stage_on_a_gguf_base_names_an_older_tokenizer_conversion(tmp_path, monkeypatch, tiny_gguf, qa_file):
    """A finished stage whose rows differ now was refused naming the data alone, while the recipe's own --resume
    names a GGUF base's older tokenizer conversion (run.json without `gguf_conversion`) as a possible reason too."""
    from tunelab.run_info import RunInfo
    from tunelab.training.stage_resume import check_finished_data

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    plan = load_config(None, {"model.name": str(tiny_gguf), "data.train": [str(qa_file)], "data.max_length": 256})
    info = RunInfo(str(tiny_gguf), "lora", data_sha256="0" * 64, data_files={str(qa_file): "0" * 16})
    with pytest.raises(ConfigError, match=r"changed; or the run started before tunelab gave a GGUF base's tokenizer"):
        check_finished_data(plan, tmp_path / "stage-1", info)
