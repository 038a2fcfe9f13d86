"""A mixture through `tunelab train`: eval loss per source in metrics.jsonl and run.json (equal to evaluating each
source's eval rows directly), and a run interrupted and resumed (mixture draw, group_by_length) ends bit-identical
to the uninterrupted one."""

import json

import pytest
import torch
from safetensors.torch import load_file

import tunelab.training.recipe as recipe
from tunelab.config import load_config
from tunelab.data.batches import make_batches
from tunelab.data.loader import build_datasets
from tunelab.eval.report import build_report
from tunelab.models.load import load_tokenizer, resolve_source
from tunelab.peft.save import load_adapter
from tunelab.training.step import evaluate


@pytest.fixture
def mixture_overrides(tiny_overrides, tmp_path):
    other = tmp_path / "other.jsonl"
    other.write_text(
        "".join(
            json.dumps({"question": f"Colour of door {i}?", "answer": f"Door {i} is red."}) + "\n" for i in range(12)
        )
    )
    return tiny_overrides | {
        "data.train": [
            {"path": tiny_overrides["data.train"][0], "weight": 1.0, "name": "boxes"},
            {"path": str(other), "weight": 3.0, "name": "doors"},
        ],
        "data.eval_fraction": 0.25,
        "train.group_by_length": True,
        "train.max_steps": 4,
        "train.save_every": 2,
        "method.dropout": 0.0,
    }


def test_eval_loss_per_source_equals_direct_evaluation(mixture_overrides, tiny_model_dir):
    # trained and evaluated in fp32 on the CPU, as the direct evaluation below is (a GPU run would be bf16)
    result = recipe.train(None, mixture_overrides | {"model.device": "cpu"})
    info = json.loads((result.run_dir / "run.json").read_text())
    losses = info["extra"]["eval_losses"]
    assert set(losses) == {"eval_loss", "eval_loss/boxes", "eval_loss/doors"}
    last = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["eval_loss/doors"] == losses["eval_loss/doors"]
    page = build_report(result.run_dir).read_text()
    assert "Sources (weights count examples)" in page and "doors" in page

    from transformers import AutoModelForCausalLM

    cfg = load_config(None, mixture_overrides).config
    tokenizer = load_tokenizer(resolve_source(str(tiny_model_dir)))
    data = build_datasets(cfg.data, tokenizer, cfg.train.seed)
    model = load_adapter(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), result.run_dir)
    for name, rows in data.eval_sets.items():
        direct = evaluate(model, make_batches(rows, 4, tokenizer.pad_token_id, shuffle=False, seed=0, epoch=0))
        assert direct == pytest.approx(losses[f"eval_loss/{name}"], rel=1e-5)  # fast path vs transformers: fp32


def test_a_resumed_mixture_run_equals_the_uninterrupted_one(mixture_overrides, straight_and_resumed):
    straight, resumed = straight_and_resumed(mixture_overrides, 3)
    a = load_file(straight.run_dir / "adapter_model.safetensors")
    b = load_file(resumed.run_dir / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_packed_mixture_is_planned_by_the_rows_it_trains_on(mixture_overrides):
    """With data.packing the auto rules counted the unpacked rows: a run 'planned' for 10 epochs of 18 steps trained
    10 epochs of the few packed rows instead, and said otherwise."""
    over = {k: v for k, v in mixture_overrides.items() if k != "train.max_steps"}
    packed = {"data.packing": True, "data.max_length": 512, "train.micro_batch": "auto", "train.grad_accum": 1}
    result = recipe.train(None, over | packed | {"train.save_every": 0, "train.group_by_length": False})
    info = json.loads((result.run_dir / "run.json").read_text())
    epochs = info["extra"]["auto"]["train.epochs"]
    per_epoch = int(epochs["reason"].split(" steps an epoch")[0])
    assert info["total_steps"] == result.steps == round(epochs["value"] * per_epoch)
    assert info["extra"]["auto"]["train.micro_batch"]["value"] == 1 and per_epoch < 10  # a few packed rows
