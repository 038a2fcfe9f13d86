"""train.push_to: a run that pushes its result when it has finished. What would fail at the end is refused before
training (exit 2, naming the option); a good run pushes as `tunelab push` does; a push that fails after it leaves the
run and exits 1 with the command that pushes it again. The hub is hub_recorder.py's (no network here)."""

import json
import re
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub.errors import HfHubHTTPError
from safetensors.torch import load_file, save_file

import tunelab
from tunelab.cli import main
from tunelab.config.flags import PYTHON
from tunelab.config.suggest import ALIASES
from tunelab.errors import ConfigError, PushFailed, RunDirError
from tunelab.export.push import push_result
from tunelab.training.recipe import resolve

from .hub_recorder import TOKEN


def _flags(overrides: dict) -> list[str]:
    return [a for k, v in overrides.items() for a in (f"--{k}", v if isinstance(v, str) else json.dumps(v))]


@pytest.fixture
def short(tiny_overrides):
    return tiny_overrides | {"train.max_steps": 2, "train.push_to": "alice/box-bot"}


def test_a_finished_run_pushes_its_adapter_and_card(short, hub, capsys):
    result = tunelab.train(None, short | {"train.push_private": True})
    assert result.pushed == "https://huggingface.co/alice/box-bot/commit/abc123"
    assert [c[0] for c in hub.calls] == ["create_repo", "repo_info", "create_commit"]
    assert hub.calls[0][2]["private"] is True
    assert hub.files["adapter_model.safetensors"] == (result.run_dir / "adapter_model.safetensors").read_bytes()
    assert "# box-bot" in hub.files["README.md"].decode()
    assert "pushed " in capsys.readouterr().out


def test_run_json_records_the_push_and_a_launcher_of_ranks_reads_it(short, hub):
    """Under train(..., nproc=N) rank 0 pushes, and the launcher's TrainResult, built from run.json, had pushed None."""
    from tunelab.api_train import from_ranks

    result = tunelab.train(None, short)
    recorded = json.loads((result.run_dir / "run.json").read_text())["extra"]["pushed"]
    assert recorded == {"repo": "alice/box-bot", "url": result.pushed, "commit": "abc123"}
    assert from_ranks(result.run_dir, PYTHON).pushed == result.pushed


@pytest.mark.parametrize(
    "change, said",
    [
        ({"train.push_to": "box-bot"}, "option 'train.push_to' is 'box-bot'; give the repository as OWNER/NAME"),
        ({"train.push_to": "alice/box--bot"}, "option 'train.push_to' is 'alice/box--bot'"),
        ({"method.name": "full"}, "but method.name is full, which trains the model's own weights"),
        ({"method.name": "layers"}, "then tunelab push {out}-merged --repo alice/box-bot"),
        ({"train.push_to": None, "train.push_private": True}, "'train.push_private' is true, but 'train.push_to'"),
    ],
)
def test_what_cannot_be_pushed_is_refused_before_training(short, hub, capsys, change, said):
    overrides = {k: v for k, v in (short | change).items() if v is not None}
    assert main(["train", *_flags(overrides)]) == 2
    err = capsys.readouterr().err
    assert said.format(out=short["output_dir"]) in err and "Traceback" not in err
    assert hub.calls == [] and not Path(short["output_dir"]).exists()  # nothing trained


@pytest.mark.parametrize("why", ["no token", "offline", "helper raises"])
def test_the_token_is_checked_before_training_by_train_and_check(short, hub, monkeypatch, capsys, why):
    def raises():
        raise RuntimeError("OIDC token exchange failed")

    if why == "offline":
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    else:
        monkeypatch.setattr(huggingface_hub, "get_token", raises if why == "helper raises" else lambda: None)
    said = {"no token": "no Hugging Face token", "offline": "HF_HUB_OFFLINE", "helper raises": "OIDC token"}[why]
    assert main(["train", *_flags(short)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tunelab train: error: option 'train.push_to' (alice/box-bot): ") and said in err
    assert err.count("\n") == 1 and hub.calls == []
    checked = tunelab.check(None, short, model=False)
    item = next(i for i in checked.items if i.name == "train.push_to")
    assert not checked.passed and item.status == "fail" and said in item.summary


def test_check_passes_the_option_with_a_token(short, hub):
    checked = tunelab.check(None, short, model=False)
    item = next(i for i in checked.items if i.name == "train.push_to")
    assert item.status == "pass" and "alice/box-bot" in item.summary


def test_a_push_that_fails_after_a_good_run_keeps_it_and_exits_1(short, hub, capsys):
    response = type("Response", (), {"status_code": 500, "headers": {}, "request": None})()
    hub.fail = HfHubHTTPError("500 Server Error: try later", response=response)
    assert main(["train", *_flags(short | {"train.push_private": True})]) == 1
    err = capsys.readouterr().err
    run = short["output_dir"]
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"tunelab train: error: training finished and the run is saved in {run}")
    assert "pushing to alice/box-bot failed: 500 Server Error: try later" in line and TOKEN not in line
    assert line.endswith(f"Push it again with: tunelab push {run} --repo alice/box-bot --private")
    assert json.loads((Path(run) / "run.json").read_text())["finished"] is True
    hub.fail = None
    assert main(["push", run, "--repo", "alice/box-bot"]) == 0  # the command it gave pushes the run as it stands


def test_an_adapter_holding_inf_is_never_pushed_and_no_retry_is_offered(tiny_run_dir, tmp_path, hub):
    run = shutil.copytree(tiny_run_dir, tmp_path / "run")
    weights = load_file(run / "adapter_model.safetensors")
    first = sorted(weights)[0]
    weights[first] = torch.full_like(weights[first], float("inf"))
    save_file(weights, run / "adapter_model.safetensors", metadata={"format": "pt"})
    config = resolve(None, {"model.name": "x", "data.train": [], "train.push_to": "alice/box-bot"}).config
    with pytest.raises(PushFailed, match="the adapter holds NaN or inf") as caught:
        push_result(run, config)
    assert caught.value.exit_code == 1 and "Push it again" not in str(caught.value) and hub.calls == []


def test_staged_and_federated_runs(tiny_overrides):
    base = tiny_overrides | {"train.push_to": "alice/box-bot"}
    continued = [{}, {"train": {"lr": 1e-4}}]  # continue: adapter, over the original base
    assert resolve(None, base | {"stages": continued}).config.train.push_to == "alice/box-bot"
    with pytest.raises(ConfigError, match="but the last stage's method.name is full"):
        resolve(None, base | {"stages": [{}, {"method": {"name": "full"}, "continue": "merge"}]})
    with pytest.raises(ConfigError, match="'train.push_to' belongs to the whole run"):
        resolve(None, tiny_overrides | {"stages": [{"train": {"push_to": "alice/box-bot"}}]})
    from tunelab.federated.run import check_config

    with pytest.raises(ConfigError, match=re.escape("train.push_to ('alice/box-bot'): push the federation's")):
        check_config(resolve(None, base).config)


def test_trl_names_point_to_the_option():
    assert ALIASES["hub_model_id"] == ALIASES["push_to_hub"] == "train.push_to"
    assert ALIASES["hub_private_repo"] == "train.push_private"
    with pytest.raises(ConfigError, match="train.push_to"):
        resolve(None, {"model.name": "x", "data.train": [], "hub_model_id": "alice/box-bot"})


@pytest.mark.parametrize(
    "stages, where",
    [
        ([{}, {"continue": "merge"}], "stage 2 starts from stage 1's adapter merged into the base (continue: merge)"),
        ([{"method": {"name": "full"}}, {"continue": "merge"}], "stage 2 starts from the weights stage 1 trained"),
        ([{"method": {"name": "layers"}}, {}], "stage 2 starts from the weights stage 1 trained (method layers)"),
        ([{}, {"continue": "merge"}, {}], "stage 2 starts from stage 1's adapter merged"),  # stage 3 continues it
    ],
)
def test_an_adapter_over_weights_earlier_stages_changed_is_refused_before_training(short, hub, capsys, stages, where):
    """Such an adapter, pushed, names the original base in adapter_config.json: AutoPeftModelForCausalLM puts it there
    without a word and gives another model than the one trained. Refused at load (exit 2), with the commands that
    share the run instead: the CLI's, or the API's calls."""
    run = short["output_dir"]
    assert main(["train", *_flags(short | {"stages": stages})]) == 2
    err = capsys.readouterr().err
    assert "option 'train.push_to' is 'alice/box-bot', but the last stage trains its adapter over weights" in err
    assert where in err and "Traceback" not in err
    assert f"tunelab merge {run} --out {run}-merged, then tunelab push {run}-merged --repo alice/box-bot" in err
    assert hub.calls == [] and not Path(run).exists()
    with pytest.raises(ConfigError, match=re.escape(f"tunelab.merge({run!r}, '{run}-merged'), then tunelab.push(")):
        tunelab.train(None, short | {"stages": stages})


def test_tunelab_push_refuses_an_adapter_over_merged_stages(tiny_overrides, hub, capsys):
    """The run trained without train.push_to: `tunelab push` and `tunelab.push` refuse its adapter before any
    request, naming the stage that changed the weights, and give the commands (or calls) that merge and push it."""
    stages = [{"train": {"max_steps": 2}}, {"continue": "merge", "train": {"max_steps": 2}}]
    run = str(tunelab.train(None, tiny_overrides | {"stages": stages}).run_dir)
    capsys.readouterr()
    assert main(["push", run, "--repo", "alice/box-bot"]) == 2
    err = capsys.readouterr().err
    assert "the run's last stage trained its adapter over weights that earlier stages changed (stage 2 starts" in err
    assert f"tunelab merge {run} --out {run}-merged, then tunelab push {run}-merged --repo alice/box-bot" in err
    with pytest.raises(RunDirError, match=re.escape(f"tunelab.merge({run!r}, '{run}-merged'), then tunelab.push(")):
        tunelab.push(run, "alice/box-bot")
    assert hub.calls == []
    merged = tunelab.merge(run, f"{run}-merged")  # what the message says works
    assert tunelab.push(merged, "alice/box-bot").files and hub.calls[-1][0] == "create_commit"
    shutil.rmtree(Path(run) / "stage-1")  # run.json's own record of its stages is enough to tell
    with pytest.raises(RunDirError, match="continue: merge"):
        tunelab.push(run, "alice/box-bot")


@pytest.mark.parametrize(
    "stages, said",
    [
        ([("lora", None)], None),
        ([("lora", None), ("lora", "adapter"), ("dora", "adapter")], None),
        ([("lora", None), ("lora", "merge")], "stage 2 starts from stage 1's adapter merged into the base"),
        ([("lora", None), ("lora", "adapter"), ("lora", "merge"), ("lora", "adapter")], "stage 3 starts from stage 2"),
        ([("full", None), ("lora", "adapter")], "stage 2 starts from the weights stage 1 trained (method full)"),
        ([("lora", None), (None, None)], None),  # a record without a method after it: its start is stage 1's
        ([(None, None), ("lora", "adapter")], "stage 2 starts from the weights stage 1 trained (method None)"),
    ],
)
def test_which_last_stage_trains_over_changed_weights(stages, said):
    from tunelab.config.validate import over_changed_weights

    found = over_changed_weights(stages)
    assert found == said if said is None else found.startswith(said)


def _stage_file(tmp_path, overrides: dict, stages: list[dict]) -> str:
    """A config file of `overrides` (dotted names, written as sections) and `stages`."""
    sections: dict = {}
    for name, value in (overrides | {"stages": stages}).items():
        section, _, key = name.rpartition(".")
        (sections.setdefault(section, {}) if section else sections)[key or name] = value
    path = tmp_path / "staged.yaml"
    path.write_text(json.dumps(sections))
    return str(path)


def test_the_check_reads_each_stage_as_it_trains_under_a_flag(short, hub, capsys, tmp_path):
    """A flag wins over the file, its stages included (--method.name full trains every stage full), but the check of
    train.push_to read each stage's method from the file's stages: it accepted a run whose push, after the whole
    training, was refused (exit 1); and refused a run whose flag made every stage an adapter's. It reads the stages
    as training resolves them now: refused before training, exit 2, and accepted where the push works."""
    adapters = [{"method": {"name": "lora"}}, {"method": {"name": "lora"}, "train": {"lr": 1e-4}}]
    config = _stage_file(tmp_path, short, adapters)
    assert main(["train", config, "--method.name", "full"]) == 2
    err = capsys.readouterr().err
    assert "option 'train.push_to' is 'alice/box-bot', but the last stage's method.name is full" in err
    assert hub.calls == [] and not Path(short["output_dir"]).exists()  # nothing trained
    with pytest.raises(ConfigError, match="the last stage's method.name is full"):
        resolve(config, {"method.name": "full"})
    whole = [{"method": {"name": "full"}}, {"method": {"name": "lora"}}]  # an adapter over stage 1's weights
    config = _stage_file(tmp_path, short, whole)
    with pytest.raises(ConfigError, match="stage 2 starts from the weights stage 1 trained"):
        resolve(config)
    assert resolve(config, {"method.name": "lora"}).config.train.push_to == "alice/box-bot"  # both stages lora
