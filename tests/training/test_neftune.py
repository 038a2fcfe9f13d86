"""NEFTune (train.neftune_alpha): uniform noise of scale alpha / sqrt(T d) on the embeddings of training forwards
only, on our decoder and on a transformers model; the option is for task sft; a run with it differs from one without
and repeats itself from its seed."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunelab.api import train
from tunelab.config import load_config
from tunelab.errors import ConfigError
from tunelab.kernels import select as select_ops
from tunelab.models.hf_adapter import from_hf_model
from tunelab.training.neftune import add_embedding_noise, input_embedding


def _models(tiny_model_dir):
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    fast = from_hf_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), select_ops("auto"))
    return {"generic": hf, "fast": fast}


@pytest.mark.parametrize("impl", ["fast", "generic"])
def test_noise_is_uniform_within_alpha_over_sqrt_length_times_width_and_only_while_training(tiny_model_dir, impl):
    model = _models(tiny_model_dir)[impl]
    embedding = input_embedding(model)
    ids = torch.randint(0, embedding.num_embeddings, (3, 40))
    clean = embedding(ids).detach()
    handle = add_embedding_noise(model, alpha=5.0)
    model.train()
    noisy = embedding(ids).detach()
    bound = 5.0 / math.sqrt(40 * embedding.embedding_dim)
    delta = noisy - clean
    assert delta.abs().max() <= bound * (1 + 1e-6)
    assert delta.abs().max() > 0.9 * bound  # it fills the range: uniform on [-bound, bound]
    assert abs(delta.mean().item()) < 0.05 * bound and abs(delta.std().item() - bound / math.sqrt(3)) < 0.05 * bound
    model.eval()
    assert torch.equal(embedding(ids), clean)  # eval and generation: no noise
    model.train()
    handle.remove()
    assert torch.equal(embedding(ids), clean)


def test_with_packing_the_noise_is_scaled_by_max_length_whatever_the_micro_batch(tiny_model_dir):
    """A packed micro-batch reaches the embedding as one sequence of all its rows' tokens, so the noise was scaled by
    1 / sqrt(rows x width): micro_batch 8 gave half the noise of micro_batch 2 for the same data. With packing T is
    data.max_length, the width packed rows are filled up to, for every micro-batch."""
    from tunelab.data.batches import make_batches
    from tunelab.data.packing import pack
    from tunelab.data.render import Rendered
    from tunelab.tasks.sft import summed_loss
    from tunelab.training.neftune import noise_width

    model = _models(tiny_model_dir)["fast"]
    embedding = input_embedding(model)
    cfg = load_config(None, {"model.name": str(tiny_model_dir), "data.packing": True, "data.max_length": 40}).config
    add_embedding_noise(model, 5.0, noise_width(cfg.data))
    model.train()
    seen = []
    embedding.register_forward_hook(lambda m, args, out: seen.append((args[0], out.detach())))
    rows = [Rendered([1 + (7 * i + t) % 90 for t in range(20)], [5] * 20, "d.jsonl", i + 1) for i in range(16)]
    for micro_batch in (2, 8):
        batch = make_batches(pack(rows, 40), micro_batch, 0, shuffle=False, seed=0, epoch=0)[0]
        summed_loss(model, batch)
        ids, noisy = seen.pop()
        assert ids.shape == (1, 40 * micro_batch)  # one sequence of every row's tokens
        delta = noisy - torch.nn.functional.embedding(ids, embedding.weight)
        bound = 5.0 / math.sqrt(40 * embedding.embedding_dim)
        assert 0.9 * bound < delta.abs().max() <= bound * (1 + 1e-6), micro_batch


def test_the_option_is_for_task_sft(tiny_overrides, tmp_path):
    with pytest.raises(ConfigError, match=r"'train.neftune_alpha' adds noise to the embeddings of task sft; .* dpo"):
        load_config(None, tiny_overrides | {"task": "dpo", "train.neftune_alpha": 5})
    with pytest.raises(ConfigError, match="neftune_alpha"):
        load_config(None, tiny_overrides | {"train.neftune_alpha": -1})


def test_a_run_with_noise_differs_from_one_without_and_repeats_from_its_seed(tiny_overrides, tmp_path, logged_losses):
    base = tiny_overrides | {"method.dropout": 0.0, "train.max_steps": 3}
    plain = logged_losses(train(None, base | {"output_dir": str(tmp_path / "plain")}).run_dir)
    noisy = [
        logged_losses(train(None, base | {"train.neftune_alpha": 15.0, "output_dir": str(tmp_path / f"n{i}")}).run_dir)
        for i in range(2)
    ]
    assert noisy[0] == noisy[1]
    assert noisy[0][0] != plain[0]  # the first step's loss already sees the noise
