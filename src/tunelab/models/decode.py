"""Batched sampling with a KV cache, for tunelab's decoder and for any transformers causal LM.

`sample(model, prompts, settings, pad_id=...)` left-pads the prompts into one batch, runs one prefill over them, then
one token per step for the rows still running, and returns each prompt's new tokens. The loop (`_generate`) is one
for both kinds of model; only a "stepper" differs, which turns tokens into the last position's logits (B, V):

- `_FastStepper`, for `models.llama.LlamaForCausalLM`: its `forward_cached` over a preallocated `KVCache`; the head
  runs on the last position only. Projections go through the model's slots, so adapters (LoRA, DoRA, NF4 bases) are
  those of training, and `peft.lora.adapters_disabled` switches them off here too.
- `_StaticStepper`, the same model with fixed shapes (`forward_step`): every row steps until the last one ends (a
  finished row's draws are dropped), the attention reads the whole cache with later positions masked, and the new
  position is a tensor moved in place. On CUDA the step is captured once as a CUDA graph and replayed: a 7B step
  issues over two thousand small kernels (per projection an NF4 dequantization, the base GEMM and the adapter's two
  thin ones), which the host launches more slowly than the GPU runs them. The default on CUDA.
- `_HFStepper`, for a transformers model (or a PEFT model around one): its own cache, stepped as its `generate` does.

Left padding must not change an answer: each row's rope positions are cumsum(mask) - 1 (its first real token at 0,
as if it were alone) and no position reads a pad's key. Rows that end (a stop id, or max_new_tokens) leave the batch:
the cache keeps only the running rows, so late steps cost what the rows left need.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from tunelab.errors import ConfigError
from tunelab.models.kv_cache import KVCache
from tunelab.models.llama import LlamaForCausalLM
from tunelab.models.streams import warmup_stream


@dataclass(frozen=True)
class SampleSettings:
    """How answers are drawn."""

    max_new_tokens: int
    """Most tokens generated per prompt (the stop id included)."""
    temperature: float = 1.0
    """Logits are divided by it before softmax; 0 means greedy (argmax)."""
    top_p: float = 1.0
    """Nucleus sampling: draw among the most likely tokens whose probabilities reach top_p (1: all tokens)."""
    stop_ids: tuple[int, ...] = ()
    """A row ends at the first of these ids it draws (kept in its answer)."""


@torch.no_grad()
def sample(
    model: nn.Module,
    prompts: list[list[int]],
    settings: SampleSettings,
    *,
    pad_id: int,
    generator: torch.Generator | None = None,
    static: bool | None = None,
    rows: list[int] | None = None,
    width: int | None = None,
) -> list[list[int]]:
    """For each prompt (token ids), the generated ids: up to max_new_tokens, ending with the first stop id (kept)
    when one is drawn. Prompts are left-padded into one batch; one prefill, then one token per step for the rows
    still running.

    `generator` (on the model's device) seeds the draws: the same seed gives the same answers. Each new token of a
    prompt is drawn by one uniform number (inverse CDF, `_pick`): at its k-th token, every call draws `width`
    uniforms (default: one per prompt) and prompt i takes number `rows[i]` of them (default: i). So a prompt's draws
    depend on the seed and its row alone, not on which prompts share the batch, nor on `static`, nor on when the others
    end: prompts 0..n-1 sampled in one call, or split between calls (or ranks) that each pass their `rows` and the
    same `width` and seed, get the same answers (up to the float rounding that a batch's other widths may bring to
    the logits). Greedy answers (temperature 0) draw nothing. The model runs in eval mode (no dropout) and gets its
    previous modes back afterwards.

    `static` (tunelab's decoder only): step every row with fixed shapes, replayed from a CUDA graph on CUDA (module
    docstring); None: on CUDA."""
    _check(prompts, settings)
    keys = _row_keys(rows, width, len(prompts))
    if not prompts or settings.max_new_tokens == 0:
        return [[] for _ in prompts]
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        if isinstance(model, LlamaForCausalLM):
            fixed = model.lm_head.weight.is_cuda if static is None else static
            stepper = _StaticStepper(model) if fixed else _FastStepper(model)
        else:
            stepper = _HFStepper(model)
        if generator is not None and generator.device.type != stepper.device.type:
            raise ValueError(
                f"sample: the generator is on {generator.device} and the model on {stepper.device}; draw with "
                f"torch.Generator(device={str(stepper.device)!r}).manual_seed(seed)"
            )
        return _generate(stepper, prompts, settings, pad_id, generator, keys)
    finally:
        for module, training in modes:
            module.training = training


def _check(prompts: list[list[int]], settings: SampleSettings) -> None:
    if settings.max_new_tokens < 0:
        raise ConfigError(f"sampling: max_new_tokens must be >= 0, got {settings.max_new_tokens}.")
    if settings.temperature < 0:
        raise ConfigError(f"sampling: temperature must be >= 0 (0 = greedy), got {settings.temperature}.")
    if not 0 < settings.top_p <= 1:
        raise ConfigError(f"sampling: top_p must be in (0, 1], got {settings.top_p}.")
    empty = [i for i, p in enumerate(prompts) if not p]
    if empty:
        raise ConfigError(f"sampling: prompt {empty[0]} is empty; every prompt needs at least one token.")


def _row_keys(rows: list[int] | None, width: int | None, count: int) -> tuple[torch.Tensor, int]:
    """(count,) the uniform each prompt takes of the `width` drawn per token, and width."""
    rows = list(range(count)) if rows is None else rows
    width = max(rows, default=-1) + 1 if width is None else width
    if len(rows) != count or len(set(rows)) != count or any(not 0 <= r < width for r in rows):
        raise ValueError(f"sample: rows must be {count} distinct numbers in [0, {width}), got {rows}")
    return torch.tensor(rows, dtype=torch.long), width


# --------------------------------------------------------------------------------------------------------------------
# The loop, shared by both kinds of model


class _Stepper(Protocol):
    device: torch.device  # where the model's inputs go
    fixed_batch: bool  # every row steps to the end (step gets all B tokens, rows None); else finished rows leave

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """ids, mask (B, T) left-padded prompts -> logits (B, V) of each row's last token."""

    def step(self, tokens: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """tokens (b,) the last drawn token of each running row -> logits (b, V) of the next. rows: indices into the
        previous call's rows of those still running, or None when all are."""


def _generate(
    stepper: _Stepper,
    prompts: list[list[int]],
    settings: SampleSettings,
    pad_id: int,
    generator: torch.Generator | None,
    keys: tuple[torch.Tensor, int],
) -> list[list[int]]:
    device = stepper.device
    keyed, width = keys[0].to(device), keys[1]  # (b,) the uniform each running row takes of the width drawn
    B, T = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, T - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, T - len(prompt) :] = 1
    stops = torch.tensor(settings.stop_ids, dtype=torch.long, device=device)
    answers: list[list[int]] = [[] for _ in prompts]
    running = torch.arange(B)  # (b,) which prompt each row of the batch is, on the host
    alive = [True] * B  # which prompts still generate (a fixed batch keeps stepping the others)
    logits = stepper.prefill(ids.to(device), mask.to(device), settings.max_new_tokens)  # (B, V)
    for made in range(1, settings.max_new_tokens + 1):
        uniforms = None
        if settings.temperature > 0:  # the width numbers of this token; each running row takes its own
            drawn_all = torch.rand(width, generator=generator, device=device, dtype=torch.float64)
            uniforms = drawn_all[keyed]
        tokens = _pick(logits, settings, uniforms)  # (b,)
        ended = torch.isin(tokens, stops)  # (b,)
        # One device -> host copy per step, of b tokens and b flags: the loop needs both on the host anyway.
        drawn, ended_host = torch.stack((tokens, ended.long())).tolist()
        for row, token, end in zip(running.tolist(), drawn, ended_host, strict=True):
            if alive[row]:
                answers[row].append(token)
                alive[row] = not end
        if made == settings.max_new_tokens or not any(alive):
            break
        if stepper.fixed_batch:
            logits = stepper.step(tokens, None)
        elif any(ended_host):
            kept = torch.tensor([i for i, end in enumerate(ended_host) if not end], dtype=torch.long)  # (b',)
            running = running[kept]
            kept = kept.to(device)
            keyed = keyed[kept]
            logits = stepper.step(tokens[kept], kept)
        else:
            logits = stepper.step(tokens, None)
    return answers


def _pick(logits: torch.Tensor, settings: SampleSettings, uniforms: torch.Tensor | None) -> torch.Tensor:
    """(b, V) logits -> (b,) token ids: argmax at temperature 0, else a draw from softmax(logits / temperature)
    restricted to the nucleus, the fewest most likely tokens whose probabilities sum to at least top_p.

    The draw is by inverse CDF with one uniform number u in [0, 1) a row: the first token whose cumulative
    probability exceeds u x the total (the nucleus's mass, so it is renormalised). One number a token, whatever the
    vocabulary, is what lets a row's draws be keyed to the row (`sample`)."""
    logits = logits.float()
    if settings.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / settings.temperature, dim=-1)  # (b, V)
    order = None
    if settings.top_p < 1:
        probs, order = probs.sort(dim=-1, descending=True)
        before = probs.cumsum(-1) - probs  # (b, V) the mass of the likelier tokens
        # A token is in the nucleus when the likelier ones have not reached top_p yet; the likeliest always is.
        probs = probs.masked_fill(before >= settings.top_p, 0.0)
    cdf = probs.double().cumsum(-1)  # (b, V) in float64: the sum of 128k probabilities keeps its small ones
    threshold = uniforms.to(cdf.device, cdf.dtype)[:, None] * cdf[:, -1:]  # (b, 1)
    picked = torch.searchsorted(cdf, threshold, right=True).clamp_(max=probs.shape[-1] - 1)  # (b, 1)
    return (picked if order is None else order.gather(-1, picked)).squeeze(1)


# --------------------------------------------------------------------------------------------------------------------
# Steppers


class _FastStepper:
    """tunelab's decoder over a `KVCache` sized for the prompt and every new token."""

    fixed_batch = False

    def __init__(self, model: LlamaForCausalLM):
        self.model = model
        embedding = model.model.embed_tokens.weight  # never quantized: its dtype is the compute dtype
        self.device, self.dtype = embedding.device, embedding.dtype
        self.cache: KVCache | None = None
        self.positions: torch.Tensor | None = None  # (b,) rope position of each running row's last token

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        B, T = ids.shape
        self.cache = KVCache(self.model.config, B, T + max_new_tokens, self.dtype, self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): a row's first real token at 0; pads at 0 (unread)
        self.positions = positions[:, -1]
        return self.model.forward_cached(ids, positions, self.cache, mask)

    def step(self, tokens: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        if rows is not None:
            self.cache.keep(rows)
            self.positions = self.positions[rows]
        self.positions = self.positions + 1
        return self.model.forward_cached(tokens[:, None], self.positions[:, None], self.cache)


class _StaticStepper(_FastStepper):
    """`_FastStepper` with fixed shapes: the prefill as there, then `forward_step` for all B rows at a cache position
    held in a tensor, moved in place; on CUDA captured as a CUDA graph at the first step and replayed after.

    Capture follows PyTorch's rules: eager warm-up passes on a side stream first (lazily sized buffers, the NF4
    scratch, reach their size outside the graph's memory pool), then the capture. A warm-up pass computes exactly the
    step that the capture then records (same token, same position), so what it writes into the cache is written
    again, unchanged. The graph belongs to this call: adapters trained between two calls are read afresh."""

    fixed_batch = True
    WARMUP = 2
    capture = True  # on CUDA: replay a CUDA graph (False: the same fixed-shape steps run eagerly, for comparisons)

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        logits = super().prefill(ids, mask, max_new_tokens)
        self.tokens = torch.zeros(ids.shape[0], 1, dtype=torch.long, device=self.device)  # (B, 1) the step's input
        self.step_positions = self.positions[:, None].clone()  # (B, 1) rope position of each row's new token
        self.at = torch.tensor(self.cache.length - 1, dtype=torch.long, device=self.device)  # its cache position
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None
        return logits

    def step(self, tokens: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        self.tokens.copy_(tokens[:, None])
        self.step_positions.add_(1)
        self.at.add_(1)
        if self.device.type != "cuda" or not self.capture:
            return self._forward()
        if self.graph is None:
            side = warmup_stream(self.device)  # one for every capture: see models/streams.py
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(self.WARMUP):
                    self._forward()
            torch.cuda.current_stream(self.device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits = self._forward()
        self.graph.replay()
        return self.logits.clone()  # the graph's output buffer is rewritten by the next replay

    def _forward(self) -> torch.Tensor:
        return self.model.forward_step(self.tokens, self.step_positions, self.cache, self.at)


class _HFStepper:
    """A transformers causal LM stepped through its own cache, with the inputs its `generate` would give it: the
    attention mask over every position so far, and position ids cumsum(mask) - 1 (pads at 0)."""

    fixed_batch = False

    def __init__(self, model: nn.Module):
        self.model = model
        self.device = next(model.parameters()).device
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT passes kwargs through
        accepted = inspect.signature(base.forward).parameters
        # transformers 5 names the cache argument `cache` (`past_key_values` is deprecated); older versions only know
        # the latter. logits_to_keep=1: the head on the last position only, as in `generate`'s prefill.
        self.cache_name = "cache" if "cache" in accepted else "past_key_values"
        self.extra = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}
        self.cache = None
        self.mask: torch.Tensor | None = None  # (b, positions so far) 1/0
        self.positions: torch.Tensor | None = None  # (b,)

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        self.mask, self.positions = mask, positions[:, -1]
        return self._forward(ids, positions)

    def step(self, tokens: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        if rows is not None:
            self.cache.batch_select_indices(rows)
            self.mask, self.positions = self.mask[rows], self.positions[rows]
        self.mask = torch.cat((self.mask, self.mask.new_ones(self.mask.shape[0], 1)), dim=1)
        self.positions = self.positions + 1
        return self._forward(tokens[:, None], self.positions[:, None])

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = self.model(
            input_ids=ids,
            attention_mask=self.mask,
            position_ids=positions,
            use_cache=True,
            **{self.cache_name: self.cache},
            **self.extra,
        )
        self.cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        return out.logits[:, -1]  # (b, V)
