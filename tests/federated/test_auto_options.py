"""Federated clients with the training options left to auto (the default) train with the same settings, which the
federation chooses (the rate from the model, the micro-batch MICRO_BATCH, the warmup from rounds x local_steps), not
each client from its own rows: FedAvg averages updates of one local procedure."""

import pytest

pytest.importorskip("flwr", reason="the federated extra (flwr) is not installed")

import json

import torch

import tunelab.federated.local as local
from tunelab.config import DataConfig, FederatedConfig, MethodConfig, ModelConfig, RunConfig, TrainConfig
from tunelab.federated.shards import ClientData
from tunelab.models.load import resolve_source
from tunelab.peft.save import adapter_state_dict
from tunelab.training.build import build_model


@pytest.mark.parametrize("rows", [70, 400])
def test_every_client_trains_with_the_same_auto_options(tiny_model_dir, tmp_path, monkeypatch, rows):
    """A client chose its micro-batch from its own rows (2 for 70 rows, 8 for 400), so clients of one round took
    steps of different sizes at one rate: FedAvg averaged updates of different local procedures, and nothing said
    so. Every client takes the federation's choice now, whatever its size."""
    path = tmp_path / "site.jsonl"
    rows = [{"question": f"Code of box {i}?", "answer": f"Box {i}: {1000 + 37 * i}."} for i in range(rows)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = RunConfig(
        model=ModelConfig(name=str(tiny_model_dir)),
        data=DataConfig(train=[], system_prompt="You answer box questions.", max_length=64),
        method=MethodConfig(r=4),
        train=TrainConfig(),  # every training option auto
        federated=FederatedConfig(local_steps=3, rounds=2, clients=[str(path)]),
    )
    seen = {}
    real_stream, real_optimizer = local.BatchStream, local.build_optimizer

    def stream(datasets, cfg, pad_id):
        seen["micro_batch"], seen["warmup_ratio"] = cfg.train.micro_batch, cfg.train.warmup_ratio
        return real_stream(datasets, cfg, pad_id)

    def optimizer(model, lr, *args, **kwargs):
        seen["lr"] = lr
        return real_optimizer(model, lr, *args, **kwargs)

    monkeypatch.setattr(local, "BatchStream", stream)
    monkeypatch.setattr(local, "build_optimizer", optimizer)
    torch.manual_seed(0)
    initial = adapter_state_dict(build_model(resolve_source(config.model.name), config.model, config.method).model)
    result = local.local_train(config, ClientData("site", (str(path),)), initial, 1, 2, 0.0)
    # micro-batch MICRO_BATCH on every client; the tiny model's width gets the top of the lr range; 6 steps in the
    # federation: warmup 5%.
    assert seen == {"micro_batch": 8, "warmup_ratio": 0.05, "lr": 3e-3}
    assert result.steps == 3 and result.loss == result.loss
