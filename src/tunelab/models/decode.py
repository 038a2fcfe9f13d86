"""Batched sampling with a KV cache, for tunelab's decoder and for any transformers causal LM.

`sample(model, prompts, settings, pad_id=...)` left-pads the prompts into one batch, runs one prefill over them, then
one token per step for the rows still running, and returns each prompt's new tokens. The loop (`_generate`) is one
for both kinds of model; only a "stepper" differs, which turns tokens into the last position's logits (B, V):

- `_FastStepper`, for `models.llama.LlamaForCausalLM`: its `forward_cached` over a preallocated `KVCache`; the head
  runs on the last position only. Projections go through the model's slots, so adapters (LoRA, DoRA, NF4 bases) are
  those of training, and `peft.lora.adapters_disabled` switches them off here too.
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
from tunelab.models.llama import KVCache, LlamaForCausalLM


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
) -> list[list[int]]:
    """For each prompt (token ids), the generated ids: up to max_new_tokens, ending with the first stop id (kept)
    when one is drawn. Prompts are left-padded into one batch; one prefill, then one token per step for the rows
    still running.

    `generator` (on the model's device) seeds the draws: the same seed gives the same answers. Greedy answers
    (temperature 0) do not depend on which prompts share the batch. The model runs in eval mode (no dropout) and
    gets its previous modes back afterwards."""
    _check(prompts, settings)
    if not prompts or settings.max_new_tokens == 0:
        return [[] for _ in prompts]
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        stepper = _FastStepper(model) if isinstance(model, LlamaForCausalLM) else _HFStepper(model)
        if generator is not None and generator.device.type != stepper.device.type:
            raise ValueError(
                f"sample: the generator is on {generator.device} and the model on {stepper.device}; draw with "
                f"torch.Generator(device={str(stepper.device)!r}).manual_seed(seed)"
            )
        return _generate(stepper, prompts, settings, pad_id, generator)
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


# --------------------------------------------------------------------------------------------------------------------
# The loop, shared by both kinds of model


class _Stepper(Protocol):
    device: torch.device  # where the model's inputs go

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
) -> list[list[int]]:
    device = stepper.device
    B, T = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, T - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, T - len(prompt) :] = 1
    stops = torch.tensor(settings.stop_ids, dtype=torch.long, device=device)
    answers: list[list[int]] = [[] for _ in prompts]
    running = torch.arange(B)  # (b,) which prompt each row of the batch is, on the host
    logits = stepper.prefill(ids.to(device), mask.to(device), settings.max_new_tokens)  # (B, V)
    for made in range(1, settings.max_new_tokens + 1):
        tokens = _pick(logits, settings, generator)  # (b,)
        ended = torch.isin(tokens, stops)  # (b,)
        # One device -> host copy per step, of b tokens and b flags: the loop needs both on the host anyway.
        drawn, ended_host = torch.stack((tokens, ended.long())).tolist()
        for row, token in zip(running.tolist(), drawn, strict=True):
            answers[row].append(token)
        if made == settings.max_new_tokens:
            break
        if any(ended_host):
            kept = torch.tensor([i for i, end in enumerate(ended_host) if not end], dtype=torch.long)  # (b',)
            if kept.numel() == 0:
                break
            running = running[kept]
            kept = kept.to(device)
            logits = stepper.step(tokens[kept], kept)
        else:
            logits = stepper.step(tokens, None)
    return answers


def _pick(logits: torch.Tensor, settings: SampleSettings, generator: torch.Generator | None) -> torch.Tensor:
    """(b, V) logits -> (b,) token ids: argmax at temperature 0, else a draw from softmax(logits / temperature)
    restricted to the nucleus, the fewest most likely tokens whose probabilities sum to at least top_p."""
    logits = logits.float()
    if settings.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / settings.temperature, dim=-1)  # (b, V)
    if settings.top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # (b, V) the mass of the likelier tokens
        # A token is in the nucleus when the likelier ones have not reached top_p yet; the likeliest always is.
        sorted_probs = sorted_probs.masked_fill(before >= settings.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)  # renormalises the nucleus itself


# --------------------------------------------------------------------------------------------------------------------
# Steppers


class _FastStepper:
    """tunelab's decoder over a `KVCache` sized for the prompt and every new token."""

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


class _HFStepper:
    """A transformers causal LM stepped through its own cache, with the inputs its `generate` would give it: the
    attention mask over every position so far, and position ids cumsum(mask) - 1 (pads at 0)."""

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
