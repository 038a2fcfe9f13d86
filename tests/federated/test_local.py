"""A client's local training (federated/local.py) honours the sft options it reads: NEFTune noise on its training
forwards, train.group_by_length in its stream of micro-batches, and model.fix_untrained_tokens on its base."""

import pytest

pytest.importorskip("flwr", reason="the federated extra (flwr) is not installed")

import dataclasses
import json

import torch

from tunelab.config import DataConfig, FederatedConfig, MethodConfig, ModelConfig, RunConfig, TrainConfig
from tunelab.data.batches import make_batches
from tunelab.federated import local
from tunelab.federated.local import BatchStream, client_datasets, local_train
from tunelab.federated.shards import ClientData
from tunelab.models.load import load_tokenizer, resolve_source
from tunelab.models.untrained import embedding_matrices, untrained_mask
from tunelab.peft.save import adapter_state_dict
from tunelab.training.build import build_model


@pytest.fixture
def client(tmp_path):
    path = tmp_path / "site.jsonl"
    rows = [
        {"question": f"Code of box {i}?" + " Please." * (i % 5), "answer": f"Box {i}: {1000 + 37 * i}."}
        for i in range(16)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ClientData("site", (str(path),))


def _config(model_dir, **train) -> RunConfig:
    return RunConfig(
        model=ModelConfig(name=str(model_dir)),
        data=DataConfig(train=[], system_prompt="You answer box questions.", max_length=64),
        method=MethodConfig(r=4),
        train=TrainConfig(micro_batch=4, lr=1e-2, **train),
        federated=FederatedConfig(local_steps=2, rounds=2),
    )


def test_neftune_noise_reaches_the_clients_training(tiny_model_dir, client):
    config = _config(tiny_model_dir)
    torch.manual_seed(0)
    initial = adapter_state_dict(build_model(resolve_source(config.model.name), config.model, config.method).model)

    def adapter(cfg):
        return local_train(cfg, client, initial, 1, 2, 0.0).adapter

    plain, noisy = (
        adapter(config),
        adapter(dataclasses.replace(config, train=TrainConfig(micro_batch=4, lr=1e-2, neftune_alpha=5.0))),
    )
    again = adapter(config)
    assert all(torch.equal(plain[k], again[k]) for k in plain)  # a round is a function of its seed
    assert any(not torch.equal(plain[k], noisy[k]) for k in plain)


def test_loraplus_reaches_the_clients_optimizer(tiny_model_dir, client):
    """A client builds its optimizer as tunelab train does: train.loraplus_lr_ratio moves its B matrices further."""
    config = _config(tiny_model_dir)
    torch.manual_seed(0)
    initial = adapter_state_dict(build_model(resolve_source(config.model.name), config.model, config.method).model)
    plus = dataclasses.replace(config, train=TrainConfig(micro_batch=4, lr=1e-2, loraplus_lr_ratio=16.0))
    plain, fast = (local_train(cfg, client, initial, 1, 2, 0.0).adapter for cfg in (config, plus))

    def moved(adapter):  # B starts at zero
        return sum(w.norm().item() for k, w in adapter.items() if ".lora_B." in k)

    assert moved(fast) > 4 * moved(plain) > 0


@pytest.mark.parametrize("packing", [False, True])
def test_a_clients_weight_counts_the_rows_it_trains_on(tiny_model_dir, client, tmp_path, packing):
    """FedAvg weighed a client by the data report's examples, where a text document is one however long: a client
    holding one long document weighed as one example beside clients of hundreds of chat rows."""
    document = tmp_path / "manual.txt"
    document.write_text(" ".join(f"Door {i} of the depot is painted red and opens inwards." for i in range(40)))
    config = _config(tiny_model_dir)
    config.data.packing = packing
    tokenizer = load_tokenizer(resolve_source(config.model.name), False)
    text = ClientData("manual", (str(document),))
    blocks = client_datasets(dataclasses.replace(config.data, packing=False), tokenizer, 42, text).train
    assert len(blocks) > 4  # one document, many blocks of data.max_length
    initial = adapter_state_dict(build_model(resolve_source(config.model.name), config.model, config.method).model)
    assert local_train(config, text, initial, 1, 2, 0.0).examples == len(blocks)
    assert local_train(config, client, initial, 1, 2, 0.0).examples == 16  # chat rows: one example each, packed or not


def test_group_by_length_orders_the_clients_micro_batches(tiny_model_dir, client):
    config = _config(tiny_model_dir, group_by_length=True)
    tokenizer = load_tokenizer(resolve_source(config.model.name), False)
    data = client_datasets(config.data, tokenizer, config.train.seed, client)
    stream = BatchStream(data, config, tokenizer.pad_token_id)
    grouped = make_batches(data.train, 4, tokenizer.pad_token_id, shuffle=True, seed=42, epoch=0, group_by_length=True)
    plain = make_batches(data.train, 4, tokenizer.pad_token_id, shuffle=True, seed=42, epoch=0)
    assert any(not torch.equal(g["input_ids"], p["input_ids"]) for g, p in zip(grouped, plain))  # the test can tell
    for step, batch in enumerate(grouped):
        assert torch.equal(stream.step(step)[0]["input_ids"], batch["input_ids"])


def test_a_client_trains_over_the_base_with_its_untrained_rows_repaired(zero_row_model_dir, client, monkeypatch):
    """Clients trained over the base as loaded: a zero row of a token every example uses stayed zero (NaN gradients
    on a deep model), though model.fix_untrained_tokens is on by default and tunelab train repairs that row."""
    model_dir, im_start = zero_row_model_dir
    config = _config(model_dir)
    fresh = build_model(resolve_source(config.model.name), config.model, config.method).model
    embed = embedding_matrices(fresh)["embed_tokens"]
    mean = embed[~untrained_mask(embed)].float().mean(0)
    initial = adapter_state_dict(fresh)
    built, real = [], local.build_model
    monkeypatch.setattr(local, "build_model", lambda *args, **kwargs: built.append(real(*args, **kwargs)) or built[-1])

    local_train(config, client, initial, 1, 2, 0.0)
    assert torch.equal(embedding_matrices(built[-1].model)["embed_tokens"][im_start], mean)
    # the rows the server repairs and records in run.json: the same, from the base and the tokenizer alone
    from tunelab.federated.local import untrained_rows

    tokenizer = load_tokenizer(resolve_source(config.model.name), False)
    report = untrained_rows(fresh, tokenizer, fix=True)
    assert report.repaired and report.rows() == {"embed_tokens": [im_start]} and torch.equal(embed[im_start], mean)

    off = dataclasses.replace(config, model=dataclasses.replace(config.model, fix_untrained_tokens=False))
    local_train(off, client, initial, 1, 2, 0.0)
    assert not embedding_matrices(built[-1].model)["embed_tokens"][im_start].any()  # left as it is, as train does


def test_ray_gets_a_short_temp_root_when_the_system_one_is_too_long(monkeypatch):
    """Under a long TMPDIR (pytest's basetemp past pytest-99, a scheduler's job folder) Ray could not create its
    object store's socket (AF_UNIX paths hold 107 bytes) and the simulation crashed."""
    import os

    from tunelab.federated.run import _short_ray_temp

    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    monkeypatch.setenv("TMPDIR", "/tmp/" + "x" * 60)
    with _short_ray_temp():
        inside = os.environ["RAY_TMPDIR"]
        assert inside.startswith("/tmp/tl-ray-") and len(inside) + 68 <= 107 and os.path.isdir(inside)
    assert "RAY_TMPDIR" not in os.environ and not os.path.exists(inside)
    monkeypatch.setenv("TMPDIR", "/tmp/short")
    with _short_ray_temp():
        assert "RAY_TMPDIR" not in os.environ  # short enough: left alone


def test_a_client_host_without_the_servers_model_path_says_so(tmp_path, client):
    """A SuperNode on another host read model.name at the server's path and failed every round with 'not a Hugging
    Face model directory, a .gguf file, or a hub id', which did not say that the path was the server's."""
    from tunelab.errors import ConfigError

    config = _config(tmp_path / "srv" / "models" / "base")
    with pytest.raises(ConfigError, match=r"client site: model.name is \S*/srv/models/base on the server, which this "):
        local_train(config, client, {}, 1, 2, 0.0)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, transform="/srv/shape.py:clean"))
    config.model.name = "smollm2-135m-instruct"
    with pytest.raises(ConfigError, match=r"client site: data.transform is /srv/shape.py on the server"):
        local_train(config, client, {}, 1, 2, 0.0)
    config.data.transform = "site_rows_not_installed:clean"  # an installed module on the server, not on this host
    with pytest.raises(ConfigError, match=r"client site: option 'data.transform' \(the server's, site_rows_not_inst"):
        local_train(config, client, {}, 1, 2, 0.0)


def test_an_fp16_client_trains_its_adapter_with_the_loss_scale(tiny_model_dir, client, monkeypatch):
    config = _config(tiny_model_dir)
    config = dataclasses.replace(config, model=ModelConfig(name=str(tiny_model_dir), dtype="fp16"))
    initial = adapter_state_dict(build_model(resolve_source(config.model.name), config.model, config.method).model)
    scales = []
    real = local.train_step
    monkeypatch.setattr(local, "train_step", lambda *a, **k: scales.append(k["loss_scale"]) or real(*a, **k))
    adapter = local_train(config, client, initial, 1, 2, 0.1).adapter
    assert scales and all(s is scales[0] and s is not None for s in scales)  # one scale through the round
    assert all(bool(torch.isfinite(v).all()) for v in adapter.values())
    assert any(not torch.equal(adapter[k], initial[k].to(adapter[k].dtype)) for k in adapter)
