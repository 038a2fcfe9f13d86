"""A hub base is recorded as one (run.json's base_source) with the commit it resolved to (base_revision): later
commands load those weights, wherever the hub's branch has moved and whatever local folder shares the hub id's name.
model.revision pins a branch, tag or commit, and is refused where it cannot apply. The hub is a cache laid out as
huggingface_hub leaves it, read offline."""

import json
import shutil

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import load_file, save_file

from tunelab import api
from tunelab.errors import ConfigError
from tunelab.models.base_record import base_record, run_base
from tunelab.models.load import load_hf_model, resolve_source
from tunelab.rundir import read_info
from tunelab.training.build import trained_base
from tunelab.training.recipe import train

A, B = "a" * 40, "b" * 40
EMBED = "model.embed_tokens.weight"


@pytest.fixture
def hub(tiny_model_dir, tmp_path, monkeypatch):
    """org/tiny in a hub cache: main at commit A (the tiny model), tag v1 at commit B (other embedding weights)."""
    repo = tmp_path / "hub" / "models--org--tiny"
    for commit in (A, B):
        shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    weights = repo / "snapshots" / B / "model.safetensors"
    state = load_file(weights)
    state[EMBED] = state[EMBED] + 1.0
    save_file(state, weights, metadata={"format": "pt"})
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(A)
    (repo / "refs" / "v1").write_text(B)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return repo


def _embed(source):
    return load_hf_model(source, torch.float32, torch.device("cpu")).model.embed_tokens.weight.detach()


def test_a_hub_base_records_its_commit_and_later_commands_load_it(hub, tiny_model_dir, tiny_overrides):
    """run.json kept the hub id alone: after the hub's main moved on, eval, merge, export and serve of the run opened
    its adapter over other weights than it trained over. The run records the commit now, and opens that one."""
    trained_on = _embed(resolve_source(str(tiny_model_dir)))
    run = train(None, tiny_overrides | {"model.name": "org/tiny", "train.max_steps": 1}).run_dir
    info = read_info(run)
    assert (info.base_model, info.base_source, info.base_revision) == ("org/tiny", "hub", A)
    (hub / "refs" / "main").write_text(B)  # the branch moves on
    assert run_base(info).revision == A
    torch.testing.assert_close(
        trained_base(info, torch.float32, torch.device("cpu"), False).model.embed_tokens.weight, trained_on
    )
    assert base_record("org/tiny")["base_revision"] == B  # a new run takes what main holds now


def test_model_revision_pins_a_tag_and_is_refused_where_it_cannot_apply(hub, tiny_model_dir, tmp_path):
    assert base_record("org/tiny", "v1") | {"base_fingerprint": ""} == {
        "base_model": "org/tiny",
        "base_fingerprint": "",
        "base_source": "hub",
        "base_revision": B,
    }
    assert torch.equal(_embed(resolve_source("org/tiny", "v1")), _embed(resolve_source("org/tiny")) + 1.0)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    for name in (str(tiny_model_dir), str(gguf), "smollm2-135m-instruct"):
        with pytest.raises(ConfigError, match=r"option 'model.revision' is 'v1', but model.name .* has no revisions"):
            resolve_source(name, "v1")


def test_a_hub_base_is_never_read_as_a_local_folder_of_its_name(hub, tiny_model_dir, tmp_path, monkeypatch):
    """A run over the hub id org/tiny, opened from a folder holding a folder org/tiny (another model), was opened over
    that folder: a hub-shaped name was read by its shape. run.json records what the base is, and a hub base is the
    hub's; a run written before base_source keeps being read by its shape."""
    here = tmp_path / "here"
    shutil.copytree(hub / "snapshots" / B, here / "org" / "tiny")
    monkeypatch.chdir(here)
    run = tmp_path / "run"
    run.mkdir()
    info = {
        "base_model": "org/tiny",
        "method": "lora",
        "finished": True,
        "quantize_base": "none",
        "trust_remote_code": False,
    }
    (run / "run.json").write_text(json.dumps(info | {"base_source": "hub", "base_revision": A}))
    source = run_base(read_info(run))
    assert (source.kind, source.path, source.revision) == ("hub", "org/tiny", A)
    assert torch.equal(_embed(source), _embed(resolve_source("org/tiny")))
    (run / "run.json").write_text(json.dumps(info))
    assert run_base(read_info(run)).kind == "local"  # an old run: as before, the folder here


def test_a_later_stage_trains_over_the_commit_stage_one_trained_over(hub, tiny_overrides, monkeypatch):
    """Stage 2 (continue: adapter) loaded the hub id at what its branch held when stage 2 started: a branch that moved
    during stage 1 gave stage 2 other weights under stage 1's adapter. It loads the commit stage 1 recorded."""
    import tunelab.training.stages as stages

    real, calls = stages._run_stage, {"n": 0}

    def run_stage(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            (hub / "refs" / "main").write_text(B)  # the branch moves on between the stages
        return real(*args, **kwargs)

    monkeypatch.setattr(stages, "_run_stage", run_stage)
    base = {k: v for k, v in tiny_overrides.items() if k != "data.train"}
    stage = {"data": {"train": tiny_overrides["data.train"]}, "train": {"max_steps": 1}}
    overrides = base | {"model.name": "org/tiny", "data.train": [], "stages": [stage, stage]}
    run = api.train(None, overrides).run_dir
    assert read_info(run / "stage-1").base_revision == A and read_info(run / "stage-2").base_revision == A
    assert read_info(run).base_revision == A


def test_an_adapter_from_a_hub_run_is_refused_over_another_commit(hub, tiny_overrides, tmp_path):
    """model.adapter of a run over org/tiny went on training over whatever org/tiny's branch held by then: a run over
    a hub id recorded no fingerprint, so nothing was compared. The commit it recorded is compared now."""
    first = train(None, tiny_overrides | {"model.name": "org/tiny", "train.max_steps": 1}).run_dir
    (hub / "refs" / "main").write_text(B)
    again = tiny_overrides | {"model.name": "org/tiny", "model.adapter": str(first), "train.max_steps": 1}
    with pytest.raises(ConfigError, match=f"at commit {A}, but model.name org/tiny is at commit {B} now"):
        train(None, again | {"output_dir": str(tmp_path / "second")})
    pinned = train(None, again | {"output_dir": str(tmp_path / "third"), "model.revision": A}).run_dir
    assert read_info(pinned).base_revision == A


def test_a_merged_hub_run_names_the_commit_of_its_base(hub, tiny_overrides, tmp_path):
    """tunelab_merge.json named a hub base by its id alone: which weights the merged model holds under the adapter
    was not said once the branch moved. It names the commit the run recorded."""
    import json

    from tunelab.export.merge import merge_run

    run = train(None, tiny_overrides | {"model.name": "org/tiny", "train.max_steps": 1}).run_dir
    saved = json.loads((merge_run(run, tmp_path / "merged") / "tunelab_merge.json").read_text())
    assert (saved["base_model"], saved["base_source"], saved["base_revision"]) == ("org/tiny", "hub", A)


def test_the_adapter_config_names_the_commit_for_peft(hub, tiny_overrides, tmp_path):
    """adapter_config.json named the hub id with no revision: PEFT's AutoPeftModel* loaded the base at what the
    branch held by then. It holds the commit run.json recorded as PEFT's `revision`; a local base gets none."""
    from peft import PeftConfig

    run = train(None, tiny_overrides | {"model.name": "org/tiny", "train.max_steps": 1}).run_dir
    (hub / "refs" / "main").write_text(B)  # the branch moves on
    config = PeftConfig.from_pretrained(str(run))
    assert (config.base_model_name_or_path, config.revision) == ("org/tiny", A) == (read_info(run).base_model, A)
    local = train(None, tiny_overrides | {"train.max_steps": 1, "output_dir": str(tmp_path / "local")}).run_dir
    assert PeftConfig.from_pretrained(str(local)).revision is None
