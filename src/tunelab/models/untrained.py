"""Untrained token rows: embedding (and untied LM-head) rows that were never trained, for tokens the data uses.

Pretrained checkpoints hold rows that training never touched: zero, or tiny (~1e-20), for tokens the corpus never
contained. Llama-3 base's reserved and chat special tokens (`<|eot_id|>`, `<|start_header_id|>`) are the best known
case, and a chat template puts exactly those into every example. Why it matters: a zero input row gives a zero
hidden state; a decoder layer adds nothing to a zero state at the first position (q = k = v = 0, SwiGLU(0) = 0), so
it stays zero through every layer, and RMSNorm's backward at x = 0 scales the gradient by 1/sqrt(eps) (~1e3) in each
of them: through 32 layers the first step's gradient norm overflows to NaN.

A row is untrained when its L2 norm is below UNTRAINED_RATIO times the median norm of the nonzero rows: the trained
rows of real checkpoints differ by small factors, untrained ones by many orders of magnitude. Only the tokens that
occur in the rendered data (template tokens included) are reported; a federation, which cannot see its clients' data,
takes every token of the tokenizer (`every_token`). `model.fix_untrained_tokens` (on by default)
sets their rows to the mean of the trained rows, computed in fp32, as is common practice for Llama-3 base. The ids
are saved in run.json (`RunInfo.fixed_untrained_tokens`) and `repair_rows` repeats the repair when an adapter run
opens its base model, so inference, merges and GGUF exports see the rows training saw.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from tunelab.errors import counted
from tunelab.models.llama import LlamaForCausalLM

UNTRAINED_RATIO = 1e-3
_CHUNK = 1 << 20  # token ids counted per bincount call


@dataclass
class UntrainedToken:
    id: int
    text: str
    count: int  # occurrences in the rendered training and eval rows
    matrices: list[str]  # which of "embed_tokens", "lm_head" hold an untrained row for it


@dataclass
class UntrainedReport:
    tokens: list[UntrainedToken] = field(default_factory=list)
    repaired: bool = False

    def rows(self) -> dict[str, list[int]]:
        """{matrix: token ids} of the untrained rows, the form run.json records."""
        out: dict[str, list[int]] = {}
        for token in self.tokens:
            for name in token.matrices:
                out.setdefault(name, []).append(token.id)
        return out

    def summary(self, federation: bool = False) -> str:
        """The line printed at start. `federation`: the rows are those of every token the tokenizer has, repaired on the
        server and on every client (a federation cannot see its clients' data; federated/local.py)."""
        if not self.tokens:
            return (
                f"untrained tokens: {'none in the tokenizer' if federation else 'none among the tokens the data uses'}"
            )
        count = (lambda t: "") if federation else (lambda t: f"{t.count}x, ")
        listed = ", ".join(f"{t.text!r} (id {t.id}, {count(t)}{'+'.join(t.matrices)})" for t in self.tokens[:10])
        more = f" and {len(self.tokens) - 10} more" if len(self.tokens) > 10 else ""
        where = " on the server and on every client" if federation else ""
        action = (
            f"repaired{where}: set to the mean of the trained rows (model.fix_untrained_tokens)"
            if self.repaired
            else "NOT repaired (model.fix_untrained_tokens is false): expect NaN gradients on deep models"
        )
        which = "of the tokenizer" if federation else "the data uses"
        return f"untrained tokens: {counted(len(self.tokens), 'token')} {which} {'has' if len(self.tokens) == 1 else 'have'} untrained rows: {listed}{more}; {action}"


def token_counts(rows: Iterable, vocab_size: int) -> torch.Tensor:
    """(vocab_size,) int64: how often each token id occurs in the rows' input_ids (ids past the vocab are ignored)."""
    counts = torch.zeros(vocab_size, dtype=torch.int64)
    pending: list[int] = []
    for row in rows:
        pending += row.input_ids
        if len(pending) >= _CHUNK:
            counts += _bincount(pending, vocab_size)
            pending = []
    if pending:
        counts += _bincount(pending, vocab_size)
    return counts


def every_token(tokenizer, vocab_size: int) -> torch.Tensor:
    """(vocab_size,) int64 counts that take every token the tokenizer has as used, once: the rows a federation finds,
    whose server never sees its clients' data (federated/local.py's untrained_rows). Ids past the tokenizer's
    vocabulary, which no data can hold, count 0, as train leaves their rows."""
    counts = torch.zeros(vocab_size, dtype=torch.int64)
    counts[: min(len(tokenizer), vocab_size)] = 1
    return counts


def _bincount(ids: list[int], vocab_size: int) -> torch.Tensor:
    t = torch.tensor(ids, dtype=torch.int64)
    return torch.bincount(t[t < vocab_size], minlength=vocab_size)


def _weight(module: nn.Module | None) -> torch.Tensor | None:
    if module is None:
        return None
    weight = getattr(module, "weight", None)
    if weight is None and hasattr(module, "base_layer"):  # a LoRA-wrapped head
        weight = getattr(module.base_layer, "weight", None)
    return weight if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None


def embedding_matrices(model: nn.Module) -> dict[str, torch.Tensor]:
    """{"embed_tokens": (V, d) input embedding, "lm_head": (V, d) output head only when it is not tied to it}."""
    if isinstance(model, LlamaForCausalLM):
        embed, head = _weight(model.model.embed_tokens), _weight(model.lm_head)
    else:
        embed, head = _weight(model.get_input_embeddings()), _weight(model.get_output_embeddings())
    out = {"embed_tokens": embed}
    if head is not None and head.shape == embed.shape and head.data_ptr() != embed.data_ptr():
        out["lm_head"] = head
    return out


def untrained_mask(weight: torch.Tensor) -> torch.Tensor:
    """(V,) bool: rows whose norm is below UNTRAINED_RATIO x the median norm of the nonzero rows."""
    norms = weight.detach().float().norm(dim=1)
    nonzero = norms[norms > 0]
    if nonzero.numel() == 0:
        return torch.zeros_like(norms, dtype=torch.bool)
    return norms < UNTRAINED_RATIO * nonzero.median()


def find_untrained(model: nn.Module, counts: torch.Tensor, tokenizer) -> list[UntrainedToken]:
    """Tokens with a nonzero count whose embedding (or untied head) row is untrained, most frequent first."""
    flagged: dict[int, list[str]] = {}
    for name, weight in embedding_matrices(model).items():
        mask = untrained_mask(weight).cpu()
        used = counts[: mask.numel()] > 0
        for token_id in torch.nonzero(mask[: used.numel()] & used).flatten().tolist():
            flagged.setdefault(token_id, []).append(name)
    tokens = [UntrainedToken(i, tokenizer.decode([i]), int(counts[i]), names) for i, names in flagged.items()]
    return sorted(tokens, key=lambda t: (-t.count, t.id))


@torch.no_grad()
def repair_rows(model: nn.Module, rows: dict[str, list[int]]) -> None:
    """Set the listed rows of each matrix to the mean of its trained rows (fp32 mean, stored in the weight's dtype).

    The mean depends only on the base weights, so repeating this on a freshly loaded base reproduces training's rows
    (up to the dtype the base is loaded in)."""
    matrices = embedding_matrices(model)
    for name, ids in rows.items():
        if not ids or name not in matrices:
            continue
        weight = matrices[name]
        trained = ~untrained_mask(weight)
        mean = weight[trained].float().mean(dim=0)  # (d,)
        weight[torch.tensor(ids, device=weight.device)] = mean.to(weight.dtype)
