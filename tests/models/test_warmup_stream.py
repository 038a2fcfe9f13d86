"""Captures warm up on one side stream a device: a new stream each capture held a new cuBLAS workspace each."""

import pytest
import torch

import tunelab.models.streams as streams
from tunelab.models.streams import warmup_stream


def test_every_capture_on_a_device_warms_up_on_the_same_stream(monkeypatch):
    made = []

    class FakeStream:
        def __init__(self, index):
            made.append(index)

    monkeypatch.setattr(streams, "_STREAMS", {})
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    first = warmup_stream(torch.device("cuda", 0))
    assert warmup_stream(torch.device("cuda")) is first  # no index: the current device, the same stream
    assert warmup_stream(None) is first and warmup_stream(0) is first
    assert warmup_stream(torch.device("cuda:1")) is not first
    assert made == [0, 1]


def test_the_training_step_and_the_sampler_take_the_shared_stream():
    """Both capture sites warm up on warmup_stream's stream, not on a stream of their own."""
    import inspect

    import tunelab.models.decode as decode
    import tunelab.training.graphs as graphs

    for module in (graphs, decode):
        source = inspect.getsource(module)
        assert "warmup_stream(" in source and "torch.cuda.Stream(" not in source, module.__name__


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_repeated_captures_hold_no_more_memory_than_the_first():
    """Sampling rounds capture their step again each time: memory reserved after the first round stays put."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunelab.models.decode import SampleSettings, sample
    from tunelab.models.hf_adapter import from_hf_model

    torch.manual_seed(0)
    shape = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, vocab_size=300)
    model = from_hf_model(LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, **shape))).cuda().eval()
    settings = SampleSettings(max_new_tokens=4, temperature=0.0)
    prompts = [[1, 2, 3], [4, 5]]
    sample(model, prompts, settings, pad_id=0, static=True)
    torch.cuda.synchronize()
    after_one = torch.cuda.memory_reserved()
    for _ in range(40):  # more rounds than the stream pool's 32 streams
        sample(model, prompts, settings, pad_id=0, static=True)
    torch.cuda.synchronize()
    assert torch.cuda.memory_reserved() == after_one
