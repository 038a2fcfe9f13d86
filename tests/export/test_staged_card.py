"""The merge and the GGUF export of a staged run whose last stage trained over weights an earlier stage changed (here
continue: merge). The last stage's base is stage-1/merged, a folder inside the run; the merged weights are a fine-tune
of stage 1's base, which the cards name (a hub id in their metadata, base_model_relation finetune), saying the run
trained in stages, and tunelab_merge.json records with the folder the last stage trained over. The hub base is a
cache laid out as huggingface_hub leaves it, read offline; the push goes to hub_recorder.py's hub. The adapter card
`tunelab push` writes for a staged run whose stages all trained one adapter lists the stages too."""

import json
import shutil

import huggingface_hub.constants
import pytest

import tunelab
from tunelab.cli import main
from tunelab.export.card import gguf_card_path

COMMIT = "a" * 40


@pytest.fixture
def staged_hub_run(tiny_model_dir, tiny_overrides, tmp_path, monkeypatch):
    """A finished two-stage run over the hub id org/tiny (main at COMMIT): stage `docs`, then stage `qa` over its
    adapter merged into the base (continue: merge)."""
    repo = tmp_path / "hub-cache" / "models--org--tiny"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    base = {k: v for k, v in tiny_overrides.items() if k != "data.train"}
    data = {"train": tiny_overrides["data.train"]}
    stages = [
        {"name": "docs", "data": data, "train": {"max_steps": 1}},
        {"name": "qa", "data": data, "train": {"max_steps": 1}, "continue": "merge"},
    ]
    return tunelab.train(None, base | {"model.name": "org/tiny", "data.train": [], "stages": stages}).run_dir


def _front_matter(card: str) -> dict[str, str]:
    head = card.split("---\n")[1]
    return dict(line.split(": ", 1) for line in head.splitlines() if ": " in line)


def test_a_merged_staged_run_names_stage_ones_base(staged_hub_run, tmp_path, hub):
    """The card said "`merged` fine-tuned with tunelab" and had no base_model (the last stage's base is the folder
    stage-1/merged), and tunelab_merge.json named that folder as the base. Both name org/tiny now, the card with the
    stages it trained in, and `tunelab push` of the folder sends that card."""
    run, out = staged_hub_run, tmp_path / "box-bot"
    assert main(["merge", str(run), "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    front = _front_matter(card)
    assert (front.get("base_model"), front.get("base_model_relation")) == ('"org/tiny"', "finetune"), card
    assert "`org/tiny` fine-tuned with tunelab in 2 stages" in card
    assert "\n1. `docs`: lora, task sft, 1 step, data `qa.jsonl`\n" in card
    merged = "over stage 1's adapter merged into the base (continue: merge)"
    assert f"\n2. `qa`: lora, task sft, 1 step, data `qa.jsonl`, {merged}\n" in card
    assert "`merged`" not in card
    saved = json.loads((out / "tunelab_merge.json").read_text())
    assert (saved["base_model"], saved["base_source"], saved["base_revision"]) == ("org/tiny", "hub", COMMIT)
    assert saved["last_stage_base"] == str((run / "stage-1" / "merged").resolve())

    assert main(["push", str(out), "--repo", "alice/box-bot"]) == 0
    pushed = hub.files["README.md"].decode()
    assert _front_matter(pushed).get("base_model") == '"org/tiny"'
    assert 'from_pretrained("alice/box-bot")' in pushed and "`org/tiny` fine-tuned with tunelab in 2 stages" in pushed


def test_the_gguf_export_of_a_staged_run_names_stage_ones_base(staged_hub_run, tmp_path):
    """The GGUF card, and the file's general.base_model.0.name, named `merged` too."""
    gguf = pytest.importorskip("gguf")
    out = tmp_path / "export" / "box-bot.gguf"
    assert main(["export", str(staged_hub_run), "--gguf", str(out), "--type", "f16", "--no-check"]) == 0
    card = gguf_card_path(out).read_text()
    front = _front_matter(card)
    assert (front.get("base_model"), front.get("base_model_relation")) == ('"org/tiny"', "finetune"), card
    assert "`org/tiny` fine-tuned with tunelab in 2 stages" in card and "`merged`" not in card
    field = gguf.GGUFReader(out).fields["general.base_model.0.name"]
    assert bytes(field.parts[field.data[0]]).decode() == "org/tiny"


def test_each_stage_is_said_with_what_it_started_from():
    """After a full stage the next trains over its weights (whatever continue says); continue: adapter trains the
    adapter on; the base named is stage 1's (`start`), a local one by its folder's name, with no metadata."""
    from tunelab.export.card import model_card
    from tunelab.run_info import RunInfo

    stages = [
        {"name": "whole", "method": "full", "task": "sft", "steps": 3, "continue": None},
        {"name": "chat", "method": "lora", "task": "sft", "steps": 1, "continue": "merge"},
        {"name": "prefs", "method": "lora", "task": "dpo", "steps": 2, "continue": "adapter"},
    ]
    info = RunInfo("/runs/r/stage-1", "lora", base_source="local", task="dpo", extra={"stages": stages})
    start = RunInfo("/models/my-base", "full", base_source="local")
    card = model_card(info, "m", None, None, start)
    assert "`my-base` fine-tuned with tunelab in 3 stages" in card and "base_model" not in card
    assert "\n1. `whole`: full, task sft, 3 steps\n" in card
    assert "\n2. `chat`: lora, task sft, 1 step, over the weights stage 1 trained (full)\n" in card
    assert "\n3. `prefs`: lora, task dpo, 2 steps, training stage 2's adapter on\n" in card
    assert "- full\n- lora\n---" in card


def test_tunelab_push_of_a_staged_run_lists_its_stages(tiny_overrides, hub, tmp_path):
    """A staged run whose stages all continued one adapter is pushed as its last stage's adapter; its card said only
    "trained with tunelab (task sft)", as if one stage had trained it. It lists the stages now, as the merge's and
    the export's cards do, each with the data it trained on (by the names of its sources, as reports name them)."""
    qa = tiny_overrides["data.train"][0]
    shutil.copy(qa, tmp_path / "more-qa.jsonl")
    stages = [
        {"name": "docs", "data": {"train": [qa]}, "train": {"max_steps": 1}},
        {"name": "qa", "data": {"train": [str(tmp_path / "more-qa.jsonl")]}, "train": {"max_steps": 2}},
    ]
    run = tunelab.train(None, tiny_overrides | {"data.train": [], "stages": stages}).run_dir
    assert main(["push", str(run), "--repo", "alice/box-bot"]) == 0
    card = hub.files["README.md"].decode()
    assert "trained with tunelab in 2 stages" in card, card
    assert "\n1. `docs`: lora, task sft, 1 step, data `qa.jsonl`\n" in card
    assert "\n2. `qa`: lora, task sft, 2 steps, data `more-qa.jsonl`, training stage 1's adapter on\n" in card
    assert str(tmp_path) not in card  # the files by their names, not this machine's paths
