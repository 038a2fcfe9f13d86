"""The sampler's fast path on a CUDA GPU, in bf16 with the Triton ops: against the generic path (transformers' model)
on the same weights, plain and with an NF4 base under a LoRA adapter (the transformers side holding the dequantized
base with the adapter merged in). Prints a small throughput figure of both paths.

bf16 rounds differently on the two sides (fused kernels, an adapter added after the base GEMM against a merged
weight), so the answers are compared over their first tokens, where the random weights keep the top logits apart."""

import time

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from tunelab.kernels import select
from tunelab.models.decode import SampleSettings, _StaticStepper, sample
from tunelab.models.hf_adapter import from_hf_model
from tunelab.peft.lora import attach_lora, lora_modules
from tunelab.quant.linear import NF4Linear, quantize_model_

pytestmark = pytest.mark.gpu

CONFIG = dict(
    vocab_size=2048,
    hidden_size=512,
    intermediate_size=1408,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,  # grouped-query
    max_position_embeddings=1024,
)
FIRST = 4  # tokens compared per answer


def build(nf4: bool) -> tuple[nn.Module, nn.Module]:
    """(transformers model, our model) holding the same effective weights, bf16 on CUDA."""
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **CONFIG)).to("cuda", torch.bfloat16).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "embed" in name:
                p.normal_(std=1.0)
            elif "norm" not in name:
                # Unit-variance outputs; the head's 3x wider, so the top logits stand apart beyond bf16 rounding.
                p.normal_(std=(3.0 if "lm_head" in name else 1.0) * p.shape[1] ** -0.5)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    ours = from_hf_model(hf, ops=select("triton"))  # shares the weights until NF4 layers replace ours
    if nf4:
        quantize_model_(ours)
        attach_lora(ours, ["all-linear"], r=8, alpha=16)
        with torch.no_grad():
            for name, m in lora_modules(ours):
                nn.init.normal_(m.lora_B.weight, std=0.05)
                assert isinstance(m.base_layer, NF4Linear)
                hf.get_submodule(name).weight.copy_(m.merged_weight())  # dequantized base + scale * B A
    return hf, ours


def prompts(count: int, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, 60, (count,), generator=gen).tolist()
    return [torch.randint(3, CONFIG["vocab_size"], (n,), generator=gen).tolist() for n in lengths]


def test_nf4_lora_decode_follows_its_own_forward_and_the_merged_weights():
    # The generic model holds base + s B A merged and rounded to bf16 once per weight; ours keeps the NF4 base and
    # the adapter apart. Their logits differ by that rounding (a near-tie's argmax may flip), so the cached decode is
    # held to our own full forward, and to the merged model within a relative tolerance.
    hf, ours = build(nf4=True)
    settings = SampleSettings(max_new_tokens=1, temperature=0.0)
    worst = 0.0
    with torch.no_grad():
        for prompt in prompts(8):
            ids = torch.tensor([prompt], device="cuda")
            own = ours.eval()(ids)[0, -1].float()  # (V,) the training forward's logits, no cache
            merged = hf(ids).logits[0, -1].float()
            worst = max(worst, ((own - merged).norm() / merged.norm()).item())
            assert sample(ours, [prompt], settings, pad_id=0)[0][0] == int(own.argmax())
    assert worst < 0.03, worst


@pytest.mark.parametrize("nf4", [False], ids=["bf16"])
def test_fast_path_bf16_matches_the_generic_path(nf4):
    hf, ours = build(nf4)
    batch = prompts(12)
    settings = SampleSettings(max_new_tokens=FIRST, temperature=0.0)
    fast = sample(ours, batch, settings, pad_id=0)
    generic = sample(hf, batch, settings, pad_id=0)
    assert [a[0] for a in fast] == [a[0] for a in generic]  # the prefill's argmax, every row
    same = sum(a == b for a, b in zip(fast, generic, strict=True))
    # Later tokens may part where two logits lie within bf16 rounding of each other: at most one row in six.
    assert same >= len(batch) * 5 // 6, (fast, generic)
    # And the fast path itself: a row's greedy answer does not depend on its neighbours (left padding), in bf16.
    alone = [sample(ours, [p], settings, pad_id=0)[0] for p in batch[:4]]
    assert sum(a == b for a, b in zip(alone, fast[:4], strict=True)) >= 3


@pytest.mark.parametrize("nf4", [False, True], ids=["bf16", "nf4-lora"])
def test_graph_replay_equals_the_same_steps_run_eagerly(nf4, monkeypatch):
    """The CUDA graph replays the fixed-shape step's kernels: greedy answers and seeded draws equal to running that
    step eagerly, bit for bit, with rows that stop early stepping on; and close to the dynamic batch."""
    _, ours = build(nf4)
    batch = prompts(12, seed=2)
    greedy = SampleSettings(max_new_tokens=24, temperature=0.0)
    graphed = sample(ours, batch, greedy, pad_id=0, static=True)
    first = [a[0] for a in graphed]
    stop = max(set(first), key=first.count)  # a row's first token: some rows stop at once, others run on
    stopping = SampleSettings(max_new_tokens=24, temperature=0.0, stop_ids=(stop,))
    drawing = SampleSettings(max_new_tokens=24, temperature=1.0, top_p=0.9)

    def run(static):
        g = torch.Generator(device="cuda").manual_seed(5)
        return (
            sample(ours, batch, greedy, pad_id=0, static=static),
            sample(ours, batch, stopping, pad_id=0, static=static),
            sample(ours, batch, drawing, pad_id=0, generator=g, static=static),
        )

    with_graph = run(True)
    monkeypatch.setattr(_StaticStepper, "capture", False)
    assert run(True) == with_graph
    assert with_graph[0] == graphed
    assert any(len(a) == 1 for a in with_graph[1]) and any(len(a) > 1 for a in with_graph[1])
    dynamic = sample(ours, batch, greedy, pad_id=0, static=False)
    # The dynamic batch attends over fewer positions: other blocked sums, bf16 near-ties may part late in a row.
    assert [a[:4] for a in dynamic] == [a[:4] for a in graphed]


def test_throughput_print():
    hf, ours = build(nf4=False)
    batch = prompts(16, seed=1)
    settings = SampleSettings(max_new_tokens=64, temperature=1.0, top_p=0.9)
    for name, model, static in (("fast, graph", ours, True), ("fast", ours, False), ("generic", hf, None)):
        generator = torch.Generator(device="cuda").manual_seed(0)
        warm = SampleSettings(max_new_tokens=4, temperature=1.0)
        sample(model, batch, warm, pad_id=0, generator=generator, static=static)
        torch.cuda.synchronize()
        tic = time.perf_counter()
        answers = sample(model, batch, settings, pad_id=0, generator=generator, static=static)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - tic
        made = sum(map(len, answers))
        assert made == 16 * 64
        print(f"decode {name}: {made} tokens in {seconds:.2f} s = {made / seconds:,.0f} tokens/s (batch 16, bf16)")
