"""A staged run's saved config.yaml trains what the run trained: a flag that won over the file's stages (--method.name
full over stages of method lora) is written into the stages it won over, so the file read back alone, without the
flag, gives every stage the config it ran with, and resumes the run with it; the chain of stages is checked with
each stage as it trains too."""

import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tunelab.api import train
from tunelab.config import load_config, to_dict
from tunelab.errors import ConfigError
from tunelab.rundir import open_info
from tunelab.training.stage_plan import plan_stages


@pytest.fixture
def lora_stages(small_vocab_overrides, tmp_path):
    """A config file whose two stages say method lora, and the flags that run it on the tiny model."""
    stage = {
        "method": {"name": "lora"},
        "data": {"train": small_vocab_overrides["data.train"]},
        "train": {"max_steps": 2},
    }
    config = tmp_path / "staged.yaml"
    config.write_text(yaml.safe_dump({"stages": [stage | {"name": "one"}, stage | {"name": "two"}]}))
    flags = {k: v for k, v in small_vocab_overrides.items() if k != "data.train"} | {"train.save_every": 1}
    return config, flags


def _stage_configs(resolved, run_dir) -> list[dict]:
    return [to_dict(plan.config) for plan in plan_stages(resolved, run_dir)]


def test_the_saved_config_of_a_staged_run_read_back_gives_the_stages_it_ran(lora_stages, tmp_path, cli_flags):
    """`tunelab train staged.yaml --method.name full` over stages of lora trained full in both stages and saved
    method.name full at the top, but the stages as written: read back, the file's stages won and gave lora."""
    from tunelab.cli import main

    config, flags = lora_stages
    flags |= {"method.name": "full"}
    assert main(["train", str(config), *cli_flags(flags)]) == 0
    run = tmp_path / "run"
    assert [json.loads((run / f"stage-{k}" / "run.json").read_text())["method"] for k in (1, 2)] == ["full", "full"]
    ran = load_config(config, {k: str(v) for k, v in flags.items()})
    saved = load_config(run / "config.yaml", saved=True)
    assert [s["method"]["name"] for s in _stage_configs(saved, run)] == ["full", "full"]
    assert _stage_configs(saved, run) == _stage_configs(ran, run)


def test_a_staged_run_resumed_from_its_saved_config_keeps_the_flags_method(lora_stages, tmp_path, crash_at):
    """Interrupted inside stage 2 and resumed with a copy of the run's config.yaml (no flag), stage 1, finished full,
    was refused as changed to lora (and a stage with no checkpoint would have started again as lora); the file plus
    the flag, as the run started, resumes too, and both end at the same weights."""
    config, flags = lora_stages
    flags |= {"method.name": "full"}
    with crash_at(4):  # stage 2's second step, after its checkpoint of step 1
        train(config, flags)
    shutil.copytree(tmp_path / "run", tmp_path / "again")
    copy = tmp_path / "saved.yaml"
    shutil.copy(tmp_path / "run" / "config.yaml", copy)
    by_file = train(copy, resume=True).run_dir
    by_flag = train(config, flags | {"output_dir": str(tmp_path / "again")}, resume=True).run_dir
    assert open_info(by_file).finished and open_info(by_file).method == "full"
    a, b = (load_file(next(run.glob("*.safetensors"))) for run in (by_file, by_flag))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_flag_over_a_later_stages_model_is_what_that_stage_trains_over(tmp_path):
    """--model.name over a file whose stage 2 names another model: the flag wins (stage_values), so stage 2 starts
    from stage 1's result over the flag's model, but the chain's check read the stage as written and refused it."""
    config = tmp_path / "staged.yaml"
    stage = {"data": {"train": ["a.jsonl"]}}
    config.write_text(yaml.safe_dump({"stages": [stage, stage | {"model": {"name": "other"}}]}))
    resolved = load_config(config, {"model.name": "base"})
    plans = plan_stages(resolved, tmp_path / "run")
    assert plans[0].config.model.name == "base"
    assert plans[1].config.model.adapter == str((tmp_path / "run" / "stage-1").absolute())
    with pytest.raises(ConfigError, match="model.name is 'other', but stage 2 starts from stage 1's result"):
        plan_stages(load_config(config), tmp_path / "run")
