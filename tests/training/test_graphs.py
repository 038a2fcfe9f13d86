"""CUDA graphs on the CPU side: when they apply (and the refusal of an explicit `true` that cannot), the width
buckets, and that padding a batch to a bucket leaves its loss unchanged. The replay itself: test_graphs_cuda.py and
tests/gpu/test_graphs_gpu.py."""

import dataclasses

import pytest
import torch

from tunelab.config import RunConfig
from tunelab.errors import ConfigError
from tunelab.training.graphs import MAX_GRAPHS, bucket_width, pad_to, unsupported_reason, use_graphs

CUDA = torch.device("cuda")  # a device object only: nothing runs on it here


def _cfg(**sections) -> RunConfig:
    cfg = RunConfig()
    for name, values in sections.items():
        cfg = dataclasses.replace(cfg, **{name: dataclasses.replace(getattr(cfg, name), **values)})
    return cfg


def test_graphs_apply_to_the_fast_sft_path_on_one_cuda_device():
    assert unsupported_reason(_cfg(), "fast", CUDA, "sft", 1) is None
    assert use_graphs(_cfg(), "fast", CUDA, "sft", 1)[0]


@pytest.mark.parametrize(
    ("cfg", "impl", "device", "task", "world", "reason"),
    [
        (_cfg(), "fast", torch.device("cpu"), "sft", 1, "CUDA device"),
        (_cfg(), "generic", CUDA, "sft", 1, "fast path"),
        (_cfg(), "fast", CUDA, "dpo", 1, "task dpo"),
        (_cfg(), "fast", CUDA, "sft", 2, "several processes"),
        (_cfg(data={"packing": True}), "fast", CUDA, "sft", 1, "data.packing"),
        (_cfg(method={"dropout": 0.1}), "fast", CUDA, "sft", 1, "method.dropout"),
        (_cfg(train={"neftune_alpha": 5.0}), "fast", CUDA, "sft", 1, "train.neftune_alpha"),
        (
            _cfg(train={"checkpointing": True, "offload_activations": True}),
            "fast",
            CUDA,
            "sft",
            1,
            "train.offload_activations",
        ),
    ],
)
def test_what_graphs_cannot_hold_turns_auto_off_and_refuses_true(cfg, impl, device, task, world, reason):
    assert reason in unsupported_reason(cfg, impl, device, task, world)
    on, why = use_graphs(cfg, impl, device, task, world)
    assert not on and why.startswith("off: ") and reason in why
    forced = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, cuda_graphs=True))
    with pytest.raises(ConfigError, match=r"option 'train.cuda_graphs' is true, but .*auto or false"):
        use_graphs(forced, impl, device, task, world)


def test_false_is_off_whatever_applies():
    cfg = _cfg(train={"cuda_graphs": False})
    assert use_graphs(cfg, "fast", CUDA, "sft", 1) == (False, "off (train.cuda_graphs: false)")


@pytest.mark.parametrize(("max_length", "width"), [(64, 64), (512, 64), (2048, 256), (4096, 512), (1000, 128)])
def test_width_buckets_are_multiples_of_64_and_at_most_max_graphs_up_to_max_length(max_length, width):
    assert bucket_width(max_length) == width
    assert -(-max_length // width) <= MAX_GRAPHS


def test_padding_to_a_bucket_keeps_the_loss(tiny_model_dir):
    from tunelab.kernels import select
    from tunelab.models.llama import LlamaConfig, LlamaForCausalLM
    from tunelab.tasks.sft import summed_loss

    hf = json_config(tiny_model_dir)
    model = LlamaForCausalLM(LlamaConfig.from_hf(hf), select("reference")).float()
    model.init_weights(std=0.02)
    ids = torch.randint(5, hf["vocab_size"], (2, 37), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :10] = -100
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0  # the second row is shorter: right padding already
    labels[1, 30:] = -100
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask, "position_ids": torch.arange(37).expand(2, 37)}
    padded = pad_to(batch, 64, pad_id=0)
    assert padded["input_ids"].shape == (2, 64) and padded["labels"][:, 37:].eq(-100).all()
    assert padded["attention_mask"][:, 37:].eq(0).all() and torch.equal(padded["input_ids"][:, :37], ids)
    assert pad_to(padded, 64, pad_id=0) is padded  # already a multiple
    with torch.no_grad():
        torch.testing.assert_close(summed_loss(model, padded), summed_loss(model, batch), rtol=1e-6, atol=1e-5)


def json_config(folder) -> dict:
    import json

    return json.loads((folder / "config.json").read_text())
