"""Batched sampling with a KV cache (`models.decode`), on 2-layer random models of the families the fast path runs.

Ground truths: transformers' own `generate` on the same weights (our decoder shares their storage through
`from_hf_model`), and a loop without any cache that re-runs the whole sequence for every token. Everything runs in
fp32 on the CPU: greedy tokens must agree exactly (logits differ by rounding, ~1e-6, while the weights are drawn so
that the top two logits are far apart), and cached logits must agree with the full forward within a stated tolerance.
"""

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from tunelab.errors import ConfigError
from tunelab.models.decode import SampleSettings, _pick, sample
from tunelab.models.hf_adapter import from_hf_model
from tunelab.models.kv_cache import KVCache
from tunelab.peft.lora import adapters_disabled, attach_lora, lora_modules
from tunelab.quant.linear import quantize_model_

SMALL = dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # grouped-query: two query heads per key/value head
    max_position_embeddings=256,
)
FAMILIES = {
    "llama": dict(model_type="llama", **SMALL),
    "llama3_rope_bias": dict(
        model_type="llama",
        **SMALL,
        attention_bias=True,
        mlp_bias=True,
        rope_parameters=dict(
            rope_type="llama3",
            rope_theta=10000.0,
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=16,
        ),
    ),
    "qwen2": dict(model_type="qwen2", **SMALL, tie_word_embeddings=True),  # q/k/v bias
    "qwen3": dict(model_type="qwen3", **SMALL, head_dim=32),  # per-head q/k RMSNorm; heads * head_dim != hidden
}
PROMPTS = [[5, 17, 33, 9, 120, 7, 250], [44, 3, 91], [200], [12, 13, 14, 15, 16]]  # lengths 7, 3, 1, 5
GREEDY = SampleSettings(max_new_tokens=10, temperature=0.0)
# Measured: max |cached - full| 1.7e-6 on logits up to 5 (llama, qwen3), 1.1e-5 on qwen2's up to 40 (3e-7 relative):
# SDPA over a masked cache vs over the row alone, the same sums blocked differently. A leaked pad key or a wrong
# cache slot moves logits by their own size.
CACHE_TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: a second intra-op thread only spins against other processes on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize(model: nn.Module) -> None:
    """Weights far from transformers' init, so every term shows and the logits are peaked (no near ties)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(std=0.3)
            elif "embed_tokens" in name:
                p.normal_(std=1.0)
            else:
                p.normal_(std=p.shape[1] ** -0.5)


def build(family: str) -> SimpleNamespace:
    torch.manual_seed(0)
    fields = dict(FAMILIES[family])
    hf = AutoModelForCausalLM.from_config(AutoConfig.for_model(fields.pop("model_type"), **fields)).float().eval()
    randomize(hf)
    hf.generation_config.eos_token_id = None  # run every prompt to max_new_tokens
    hf.generation_config.pad_token_id = 0
    return SimpleNamespace(hf=hf, ours=from_hf_model(hf))


@pytest.fixture(scope="module", params=list(FAMILIES))
def pair(request):
    return build(request.param)


@pytest.fixture(scope="module")
def llama():
    return build("llama")


def generate_alone(hf: nn.Module, prompt: list[int], new: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new)
    return out[0, len(prompt) :].tolist()


def greedy_without_cache(model: nn.Module, prompt: list[int], new: int) -> list[int]:
    """Greedy decoding that re-runs the whole sequence for each token: no cache, no padding."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(new):
            logits = model(ids)
            logits = logits if torch.is_tensor(logits) else logits.logits
            ids = torch.cat((ids, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    return ids[0, len(prompt) :].tolist()


# --------------------------------------------------------------------------------------------------------------------
# Greedy answers against transformers and against no cache


@pytest.mark.parametrize("path", ["fast", "fast-static", "generic"])
def test_greedy_batch_equals_transformers_generate_alone(pair, path):
    model = pair.hf if path == "generic" else pair.ours
    static = {"fast": False, "fast-static": True}.get(path)
    answers = sample(model, PROMPTS, GREEDY, pad_id=0, static=static)
    expected = [generate_alone(pair.hf, p, GREEDY.max_new_tokens) for p in PROMPTS]
    assert answers == expected
    assert len({tuple(a) for a in answers}) == len(PROMPTS)  # the prompts do lead to different answers


@pytest.mark.parametrize("path", ["fast", "generic"])
def test_batch_equals_one_by_one(llama, path):
    model = llama.ours if path == "fast" else llama.hf
    settings = SampleSettings(max_new_tokens=8, temperature=0.0)
    alone = [sample(model, [p], settings, pad_id=0)[0] for p in PROMPTS]
    assert sample(model, PROMPTS, settings, pad_id=0) == alone
    assert sample(model, PROMPTS[::-1], settings, pad_id=299)[::-1] == alone  # other neighbours, another pad id


def test_cached_logits_equal_full_forward_at_each_position(pair):
    """Prefill a left-padded batch, then feed a continuation token by token: each step's logits are the full
    forward's over the row alone at that position."""
    prompts, continuation = [PROMPTS[0], PROMPTS[1]], [[8, 99, 150, 31], [61, 2, 77, 120]]
    config, T = pair.ours.config, max(map(len, prompts))
    ids = torch.tensor([[0] * (T - len(p)) + p for p in prompts])
    mask = (torch.arange(T)[None] >= torch.tensor([[T - len(p)] for p in prompts])).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = KVCache(config, 2, T + len(continuation[0]), torch.float32, torch.device("cpu"))
    with torch.no_grad():
        steps = [pair.ours.forward_cached(ids, positions, cache, mask)]  # (2, V) after each prompt's last token
        for t in range(len(continuation[0])):
            tokens = torch.tensor([[c[t]] for c in continuation])
            steps.append(pair.ours.forward_cached(tokens, positions[:, -1:] + t + 1, cache))
        for row, (prompt, more) in enumerate(zip(prompts, continuation, strict=True)):
            full = pair.ours(torch.tensor([prompt + more]))[0]  # (len, V), no padding, no cache
            cached = torch.stack([s[row] for s in steps])  # (1 + len(more), V)
            torch.testing.assert_close(cached, full[len(prompt) - 1 :], **CACHE_TOL)
    assert cache.length == T + len(continuation[0])


def test_fixed_shape_step_equals_the_cached_step(pair):
    """`forward_step` (the position a tensor, the whole cache read with later positions masked: what a CUDA graph
    replays) gives the logits of `forward_cached` step by step, from the same prefill of a left-padded batch."""
    prompts, continuation = [PROMPTS[0], PROMPTS[1]], [[8, 99, 150, 31], [61, 2, 77, 120]]
    config, T = pair.ours.config, max(map(len, prompts))
    ids = torch.tensor([[0] * (T - len(p)) + p for p in prompts])
    mask = (torch.arange(T)[None] >= torch.tensor([[T - len(p)] for p in prompts])).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    caches = [KVCache(config, 2, T + len(continuation[0]), torch.float32, torch.device("cpu")) for _ in range(2)]
    at = torch.tensor(T - 1)
    with torch.no_grad():
        for cache in caches:
            pair.ours.forward_cached(ids, positions, cache, mask)
        for t in range(len(continuation[0])):
            tokens = torch.tensor([[c[t]] for c in continuation])
            step_positions = positions[:, -1:] + t + 1
            cached = pair.ours.forward_cached(tokens, step_positions, caches[0])
            at += 1
            fixed = pair.ours.forward_step(tokens, step_positions, caches[1], at)
            torch.testing.assert_close(fixed, cached, **CACHE_TOL)
    for keys_a, keys_b in zip(caches[0].keys, caches[1].keys, strict=True):
        torch.testing.assert_close(keys_a, keys_b)  # the same keys, written at the same positions
    assert torch.equal(caches[0].valid, caches[1].valid)


# --------------------------------------------------------------------------------------------------------------------
# Adapters and quantized bases on the fast path


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("variant", ["lora", "dora", "nf4_lora"])
def test_adapters_and_nf4_bases_decode_as_without_cache(variant, static):
    model = build("llama").ours
    if variant == "nf4_lora":
        quantize_model_(model)
    attach_lora(model, ["all-linear"], r=4, alpha=8, dropout=0.5, dora=variant == "dora")
    with torch.no_grad():
        for _, m in lora_modules(model):
            nn.init.normal_(m.lora_B.weight, std=0.5)  # far from zero, so the adapters change the answers
    model.train()  # dropout would draw here: sampling must switch it off
    prompts = PROMPTS[:3]
    answers = sample(model, prompts, GREEDY, pad_id=0, static=static)
    assert model.training and all(m.training for m in model.modules())  # modes given back
    model.eval()
    assert answers == [greedy_without_cache(model, p, GREEDY.max_new_tokens) for p in prompts]
    with adapters_disabled(model):
        base = sample(model, prompts, GREEDY, pad_id=0, static=static)
        assert base == [greedy_without_cache(model, p, GREEDY.max_new_tokens) for p in prompts]
    assert base != answers


def test_generic_path_runs_a_peft_model_as_its_generate_does():
    from peft import LoraConfig, get_peft_model

    hf = build("llama").hf
    peft_model = get_peft_model(hf, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.eval()
    answers = sample(peft_model, PROMPTS, GREEDY, pad_id=0)
    assert answers == [generate_alone(peft_model, p, GREEDY.max_new_tokens) for p in PROMPTS]
    with peft_model.disable_adapter():
        assert sample(peft_model, PROMPTS, GREEDY, pad_id=0) != answers


def test_modes_are_given_back_module_by_module(llama):
    model = llama.ours
    model.train()
    model.model.layers[0].eval()
    sample(model, PROMPTS[:1], SampleSettings(max_new_tokens=2, temperature=0.0), pad_id=0)
    assert model.training and not model.model.layers[0].training and model.model.layers[1].training
    model.eval()


# --------------------------------------------------------------------------------------------------------------------
# The sampling loop


def draws(model: nn.Module, seed: int, static: bool | None = None, **settings) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    full = dict(max_new_tokens=12, temperature=1.0) | settings
    return sample(model, PROMPTS, SampleSettings(**full), pad_id=0, generator=generator, static=static)


@pytest.mark.parametrize("path", ["fast", "fast-static", "generic"])
def test_seeded_sampling_is_reproducible_and_seeds_differ(llama, path):
    model = llama.hf if path == "generic" else llama.ours
    static = {"fast": False, "fast-static": True}.get(path)
    first = draws(model, 1, temperature=2.0, top_p=0.95, static=static)
    assert draws(model, 1, temperature=2.0, top_p=0.95, static=static) == first
    assert draws(model, 2, temperature=2.0, top_p=0.95, static=static) != first
    assert first != sample(model, PROMPTS, SampleSettings(max_new_tokens=12, temperature=0.0), pad_id=0)


@pytest.mark.parametrize("path", ["fast", "fast-static", "generic"])
def test_a_rows_draws_are_its_own_whatever_shares_the_batch(llama, path):
    """Prompts sampled in one call, or split between calls that pass their rows of the same width and seed (as the
    ranks of a grpo step do), draw the same answers; so do the fixed-shape and dynamic batches with rows ending."""
    model = llama.hf if path == "generic" else llama.ours
    static = {"fast": False, "fast-static": True}.get(path)
    settings = SampleSettings(max_new_tokens=12, temperature=1.5, top_p=0.95)

    def draw(prompts, **rows):
        generator = torch.Generator().manual_seed(7)
        return sample(model, prompts, settings, pad_id=0, generator=generator, static=static, **rows)

    whole = draw(PROMPTS)
    odd = draw(PROMPTS[1::2], rows=[1, 3], width=4)
    even = draw(PROMPTS[0::2], rows=[0, 2], width=4)
    assert [even[0], odd[0], even[1], odd[1]] == whole
    assert draw(PROMPTS[::-1], rows=[3, 2, 1, 0]) == whole[::-1]
    if path != "generic":  # both batch kinds of our decoder, with a stop id that ends some rows early
        stop = whole[1][2]
        ending = dataclasses.replace(settings, stop_ids=(stop,))
        answers = [
            sample(model, PROMPTS, ending, pad_id=0, generator=torch.Generator().manual_seed(7), static=fixed)
            for fixed in (False, True)
        ]
        assert answers[0] == answers[1] == [a[: a.index(stop) + 1] if stop in a else a for a in whole]


def test_bad_rows_are_named(llama):
    for rows, width in (([0, 0, 1, 2], None), ([0, 1, 2], None), ([0, 1, 2, 4], 4), ([-1, 0, 1, 2], None)):
        with pytest.raises(ValueError, match="rows must be 4 distinct numbers"):
            sample(llama.ours, PROMPTS, GREEDY, pad_id=0, rows=rows, width=width)


def test_a_generator_on_another_device_is_named(llama):
    with pytest.raises(ValueError, match="torch.Generator"):
        sample(
            llama.ours, PROMPTS, GREEDY, pad_id=0, generator=SimpleNamespace(device=torch.device("cuda"))
        )  # checked before any draw


def test_tiny_top_p_is_greedy(llama):
    greedy = sample(llama.ours, PROMPTS, SampleSettings(max_new_tokens=12, temperature=0.0), pad_id=0)
    assert draws(llama.ours, 3, temperature=5.0, top_p=1e-6) == greedy


def test_nucleus_keeps_the_fewest_likeliest_tokens_reaching_top_p():
    logits = torch.tensor([0.5, 0.3, 0.2]).log()[None].expand(2000, 3)  # probabilities 0.5, 0.3, 0.2
    generator = torch.Generator().manual_seed(0)

    def uniforms():
        return torch.rand(2000, generator=generator, dtype=torch.float64)

    for top_p, allowed in ((0.6, {0, 1}), (0.5, {0}), (0.81, {0, 1, 2})):
        picked = _pick(logits, SampleSettings(max_new_tokens=1, top_p=top_p), uniforms())
        assert set(picked.tolist()) == allowed
    share = (_pick(logits, SampleSettings(max_new_tokens=1, top_p=0.6), uniforms()) == 0).float().mean()
    assert abs(share.item() - 0.5 / 0.8) < 0.05  # renormalised within the nucleus: 0.625
    picked = _pick(logits, SampleSettings(max_new_tokens=1), uniforms())  # all three, at their probabilities
    assert torch.bincount(picked, minlength=3).div(2000).tolist() == pytest.approx([0.5, 0.3, 0.2], abs=0.04)


def test_the_inverse_cdf_picks_by_hand():
    """u x total falls in a token's stretch of the cumulative sum: 0.1, 0.6, 0.3 -> [0, 0.1), [0.1, 0.7), [0.7, 1)."""
    logits = torch.tensor([0.1, 0.6, 0.3]).log()[None].expand(5, 3)
    u = torch.tensor([0.0, 0.0999, 0.1001, 0.6999, 0.9999], dtype=torch.float64)
    assert _pick(logits, SampleSettings(max_new_tokens=1), u).tolist() == [0, 0, 1, 1, 2]
    # nucleus 0.6: tokens 1 (0.6) alone reaches it; top_p 0.7: 1 then 2 (0.3) -> renormalised [0, 2/3), [2/3, 1)
    assert _pick(logits, SampleSettings(max_new_tokens=1, top_p=0.6), u).tolist() == [1] * 5
    assert _pick(logits, SampleSettings(max_new_tokens=1, top_p=0.7), u).tolist() == [1, 1, 1, 2, 2]


@pytest.mark.parametrize("static", [False, True])
def test_stop_id_ends_its_row_and_is_kept_while_others_run_on(llama, static):
    """Without `static` an ended row leaves the batch; with it, it steps on and its draws are dropped."""
    greedy = sample(llama.ours, PROMPTS, GREEDY, pad_id=0)
    # A token that row 0 draws for the first time at step k >= 1 (the others may draw it too, or not).
    k = next(i for i in range(1, len(greedy[0])) if greedy[0][i] not in greedy[0][:i])
    stop = greedy[0][k]
    stopped = sample(
        llama.ours,
        PROMPTS,
        SampleSettings(max_new_tokens=10, temperature=0.0, stop_ids=(stop,)),
        pad_id=0,
        static=static,
    )
    expected = [a[: a.index(stop) + 1] if stop in a else a for a in greedy]
    assert stopped == expected
    assert stopped[0][-1] == stop and len(stopped[0]) == k + 1
    assert any(len(a) == GREEDY.max_new_tokens for a in stopped)  # some row ran on to the end


def test_max_new_tokens_is_respected(llama):
    for new in (0, 1, 5):
        answers = sample(llama.ours, PROMPTS, SampleSettings(max_new_tokens=new, temperature=0.7), pad_id=0)
        assert [len(a) for a in answers] == [new] * len(PROMPTS)


@pytest.mark.parametrize(
    ("settings", "prompts", "says"),
    [
        (SampleSettings(max_new_tokens=-1), PROMPTS, "max_new_tokens"),
        (SampleSettings(max_new_tokens=4, temperature=-0.5), PROMPTS, "temperature"),
        (SampleSettings(max_new_tokens=4, top_p=0.0), PROMPTS, "top_p"),
        (SampleSettings(max_new_tokens=4), [[1, 2], []], "prompt 1 is empty"),
    ],
)
def test_bad_settings_are_named(llama, settings, prompts, says):
    with pytest.raises(ConfigError, match=says):
        sample(llama.ours, prompts, settings, pad_id=0)


# --------------------------------------------------------------------------------------------------------------------
# The embedded model


@pytest.mark.slow
def test_embedded_smollm2_greedy_equals_transformers_generate(smollm2_tokenizer):
    from tunelab.models.load import load_hf_model, resolve_source

    hf = load_hf_model(resolve_source("smollm2-135m-instruct"), torch.float32, torch.device("cpu")).eval()
    ours = from_hf_model(hf)
    chats = [[{"role": "user", "content": "What is the capital of France?"}], [{"role": "user", "content": "Hi"}]]
    prompts = [smollm2_tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    prompts = [smollm2_tokenizer(p).input_ids for p in prompts]
    eos = smollm2_tokenizer.eos_token_id
    settings = SampleSettings(max_new_tokens=16, temperature=0.0, stop_ids=(eos,))
    answers = sample(ours, prompts, settings, pad_id=smollm2_tokenizer.pad_token_id)
    for prompt, answer in zip(prompts, answers, strict=True):
        ids = torch.tensor([prompt])
        out = hf.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=16, eos_token_id=eos
        )
        assert answer == out[0, len(prompt) :].tolist()
    assert "Paris" in smollm2_tokenizer.decode(answers[0])
