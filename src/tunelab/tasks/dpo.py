"""Preference optimisation (task dpo): raise the likelihood of the chosen answer over the rejected one, relative to
a frozen reference (or, for simpo and orpo, to none), with no reward model and no sampling.

With pi = summed log p of an answer's tokens under the policy, ref the same under the reference, and |y| its length:

    sigmoid (DPO)   z = beta * ((pi_c - ref_c) - (pi_r - ref_r))
                    loss = -(1 - eps) * log sigmoid(z) - eps * log sigmoid(-z)      (eps: label smoothing)
    ipo (IPO)       h = (pi_c - ref_c) / |y_c| - (pi_r - ref_r) / |y_r|             (per-token log ratios)
                    loss = (h - 1 / (2 beta))^2
    simpo (SimPO)   z = beta * (pi_c / |y_c| - pi_r / |y_r|) - gamma                (no reference at all)
                    loss = -(1 - eps) * log sigmoid(z) - eps * log sigmoid(-z)
    orpo (ORPO)     m = pi / |y|, the mean log p of a token, so P = exp(m) is the answer's per-token likelihood;
                    log odds(y) = log(P / (1 - P)) = m - log(1 - exp(m))                (no reference at all)
                    loss = -m_c + beta * -log sigmoid(log odds(y_c) - log odds(y_r))    (beta: ORPO's lambda)

ORPO (Hong, Lee, Thorne 2024, arXiv 2403.07691) adds the odds-ratio term to the chosen answer's NLL, so one run does
the SFT and the preference step at once. The NLL is each pair's mean over its chosen tokens, then averaged over the
step's pairs like every loss here (TRL's ORPOTrainer averages it over all chosen tokens of a batch instead: pairs of
different lengths weigh alike here). log(1 - exp(m)) is `log1mexp`: log(-expm1(m)) near 0, log1p(-exp(m)) below
-ln 2, exact in both ranges.

The implicit reward of an answer is beta times the log ratio the loss reads (beta * pi / |y| for simpo and orpo); the
metrics are the reward margin (chosen - rejected), the reward accuracy (share of pairs with margin > 0; a tie is
wrong), and the chosen and rejected summed log p; orpo adds log_odds (log odds chosen - rejected, the term's argument)
and nll (the NLL part of its loss). All are summed over pairs here and divided once by the step's pairs.

The reference is the model being trained with its adapters switched off (`peft.lora.adapters_disabled`), so no
second copy sits in memory; its log-probs never change, so `prepare` computes them once before the first step and the
rows carry them: for every eval row, and for the train rows the run's steps reach (all of them, unless
train.max_steps or train.epochs below 1 ends the run first: its steps' batches, in the loop's order; a resumed run
computes them again, the same), in the same micro-batches either way, so a row's reference does not depend on the
run's length (full fine-tuning: from the starting weights, before any update;
a run that continues an adapter, model.adapter or a stage's continue: adapter, keeps it on: the reference is the
model the run starts from, an SFT stage's result, and the policy equals it at the first step).
Loss kto (`tasks/kto.py`) reads unpaired rows of prompt, completion and label instead (`tasks/kto_data.py`): each
row is carried as a pair is, its own completion as the chosen side and another row's as the rejected one, so the
reference, batches, eval, checkpoints and resume are the pairs' own; only the loss and metrics differ.
A batch holds the P chosen rows then the P rejected rows, scored in one forward through the fused head + log-prob
op (`tasks/log_probs.py`). The result is saved as the sft task saves it (a PEFT adapter or full weights), so
compare, chat, merge and export read it unchanged.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.config import DpoConfig, RunConfig
from tunelab.data.batches import epoch_chunks
from tunelab.data.loader import Datasets, epoch_rows
from tunelab.data.render import IGNORE
from tunelab.data.report import location
from tunelab.peft.lora import adapters_disabled
from tunelab.tasks import kto, sft
from tunelab.tasks.head_data import pad_rows
from tunelab.tasks.kto_data import FeedbackRow, build_feedback
from tunelab.tasks.log_probs import sequence_log_probs
from tunelab.tasks.preference_data import PreferenceRow, build_preferences
from tunelab.tasks.task import Task, eval_mode, metric_means
from tunelab.training.build import BuiltModel
from tunelab.training.distributed import weight

METRICS = ("margin", "accuracy", "chosen_logp", "rejected_logp")
ORPO_METRICS = ("log_odds", "nll")
REFERENCE_FREE = ("simpo", "orpo")  # the losses that read no reference log-probs
LN2 = math.log(2)


@dataclass
class PairScores:
    """Per pair (P,): the loss, both implicit rewards, and the policy's summed log p of both answers."""

    loss: torch.Tensor
    chosen_reward: torch.Tensor
    rejected_reward: torch.Tensor
    chosen_logp: torch.Tensor
    rejected_logp: torch.Tensor
    log_odds: torch.Tensor | None = None  # orpo: log odds(chosen) - log odds(rejected)
    nll: torch.Tensor | None = None  # orpo: the chosen answer's mean NLL per token


def _smoothed(z: torch.Tensor, eps: float) -> torch.Tensor:
    # -log sigmoid(z) = softplus(-z): no overflow for large |z|
    return (1 - eps) * F.softplus(-z) + eps * F.softplus(z)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, without cancellation at either end (Maechler 2012, "Accurately computing
    log(1 - exp(-|a|))"): log(-expm1(x)) for x > -ln 2, where 1 - exp(x) is small; log1p(-exp(x)) below, where
    exp(x) is. x is kept at or below -eps of its dtype: a mean log p closer to 0 is below the resolution of a float
    log-softmax (its log p of a token with probability near 1 is a multiple of about eps / 2), and at 0 the log odds
    would be infinite. Each branch sees only its own range, so the other's gradient is not inf * 0 = nan."""
    x = x.clamp(max=-torch.finfo(x.dtype).eps)
    near = torch.log(-torch.expm1(x.clamp(min=-LN2)))
    far = torch.log1p(-torch.exp(x.clamp(max=-LN2)))
    return torch.where(x > -LN2, near, far)


def _orpo(policy: torch.Tensor, lengths: torch.Tensor, beta: float) -> PairScores:
    p = policy.shape[0] // 2
    mean = policy / lengths  # (2P,) mean log p per token
    log_odds = mean - log1mexp(mean)  # (2P,) log(P / (1 - P)), P = exp(mean)
    ratio = log_odds[:p] - log_odds[p:]  # (P,)
    nll = -mean[:p]
    loss = nll + beta * F.softplus(-ratio)  # -log sigmoid(r) = softplus(-r)
    rewards = beta * mean
    return PairScores(loss, rewards[:p], rewards[p:], policy[:p], policy[p:], ratio, nll)


def pair_scores(
    policy: torch.Tensor, reference: torch.Tensor | None, lengths: torch.Tensor, cfg: DpoConfig
) -> PairScores:
    """policy, reference, lengths: (2P,) summed log p and answer tokens, the P chosen rows first."""
    p = policy.shape[0] // 2
    lengths = lengths.to(policy.dtype).clamp_min(1)
    if cfg.loss == "orpo":
        return _orpo(policy, lengths, cfg.beta)
    if cfg.loss == "simpo":
        ratio = policy / lengths  # (2P,) mean log p per token; no reference
    elif cfg.loss == "ipo":
        ratio = (policy - reference) / lengths
    else:
        ratio = policy - reference
    rewards = cfg.beta * ratio
    if cfg.loss == "ipo":
        loss = (ratio[:p] - ratio[p:] - 1 / (2 * cfg.beta)) ** 2
    elif cfg.loss == "simpo":
        loss = _smoothed(rewards[:p] - rewards[p:] - cfg.simpo_gamma, cfg.label_smoothing)
    else:
        loss = _smoothed(rewards[:p] - rewards[p:], cfg.label_smoothing)
    return PairScores(loss, rewards[:p], rewards[p:], policy[:p], policy[p:])


def metric_sums(s: PairScores) -> dict[str, torch.Tensor]:
    margin = (s.chosen_reward - s.rejected_reward).detach()
    sums = {
        "margin": margin.sum(),
        "accuracy": (margin > 0).sum().float(),
        "chosen_logp": s.chosen_logp.detach().sum(),
        "rejected_logp": s.rejected_logp.detach().sum(),
    }
    if s.log_odds is not None and s.nll is not None:
        sums |= {"log_odds": s.log_odds.detach().sum(), "nll": s.nll.detach().sum()}
    return sums


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.long)
    for b, ids in enumerate(rows):
        out[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def collate(chunk: list[PreferenceRow], pad_id: int) -> dict:
    """input_ids, labels, attention_mask, position_ids (2P, T), right-padded, the P chosen rows first; `reference`
    (2P,) when the rows carry their reference log-probs; sources, per row the file:line of its pair."""
    batch = pad_rows([r.chosen_ids for r in chunk] + [r.rejected_ids for r in chunk], pad_id)
    batch["labels"] = _pad([r.chosen_labels for r in chunk] + [r.rejected_labels for r in chunk], IGNORE)
    batch["sources"] = 2 * [[location(r.path, r.line)] for r in chunk]
    if all(r.reference is not None for r in chunk):
        batch["reference"] = torch.tensor(
            [r.reference[0] for r in chunk] + [r.reference[1] for r in chunk], dtype=torch.float32
        )
    if chunk and isinstance(chunk[0], FeedbackRow):  # loss kto: each row's label
        batch["desirable"] = torch.tensor([r.desirable for r in chunk], dtype=torch.bool)
    return batch


def make_batches(
    rows: list[PreferenceRow], micro_batch: int, pad_id: int, *, shuffle: bool, seed: int, epoch: int
) -> list[dict]:
    chunks = epoch_chunks(rows, micro_batch, shuffle=shuffle, seed=seed, epoch=epoch)
    return [collate(chunk, pad_id) for chunk in chunks]


def count(batch: dict) -> int:
    return int(batch["input_ids"].shape[0]) // 2


def scores(model: nn.Module, batch: dict, cfg: DpoConfig, share: float | None = None) -> PairScores | kto.KtoScores:
    """share (loss kto, a training micro-batch): its rows' weight in the reference point the ranks share
    (`kto.reference_point`); None: the micro-batch's own, as eval (the same batches on every rank) reads it."""
    policy, lengths = sequence_log_probs(model, batch)  # (2P,) each: one forward for chosen and rejected
    reference = batch.get("reference")
    if cfg.loss not in REFERENCE_FREE and reference is None:
        raise ValueError("dpo: the batch has no reference log-probs; the task's prepare computes them")
    if cfg.loss == "kto":
        if "desirable" not in batch:
            raise ValueError("dpo: loss kto needs rows of prompt, completion and label (tasks/kto_data.py)")
        w = (cfg.desirable_weight, cfg.undesirable_weight)
        return kto.kto_scores(policy, reference.to(policy.device), batch["desirable"], cfg.beta, *w, share=share)
    return pair_scores(policy, reference, lengths, cfg)


def all_metric_sums(s: PairScores | kto.KtoScores) -> dict[str, torch.Tensor]:
    return kto.metric_sums(s) if isinstance(s, kto.KtoScores) else metric_sums(s)


def reached_rows(data: Datasets, run: RunConfig) -> list[PreferenceRow] | None:
    """The train rows that the batches of the run's steps hold, as the training loop draws them (`epoch_rows`,
    `epoch_chunks` of train.micro_batch, train.grad_accum of them a step); None when the steps reach every row. The
    steps: train.max_steps, or train.epochs of the first epoch's steps, as the recipe counts them (epochs below 1:
    part of the rows)."""
    t = run.train
    total = t.max_steps
    if not total:
        first = epoch_chunks(epoch_rows(data, t.seed, 0), t.micro_batch, shuffle=run.data.shuffle, seed=t.seed, epoch=0)
        if not first or not isinstance(t.epochs, int | float) or t.epochs >= 1:  # auto: not resolved yet
            return None
        total = max(1, math.ceil(t.epochs * math.ceil(len(first) / t.grad_accum)))
    reached: dict[int, PreferenceRow] = {}
    step, epoch = 0, 0
    while step < total and len(reached) < len(data.train):
        rows = epoch_rows(data, t.seed, epoch)
        chunks = epoch_chunks(rows, t.micro_batch, shuffle=run.data.shuffle, seed=t.seed, epoch=epoch)
        if not chunks:
            return None
        for start in range(0, len(chunks), t.grad_accum):
            if step == total:
                break
            reached |= {id(row): row for chunk in chunks[start : start + t.grad_accum] for row in chunk}
            step += 1
        epoch += 1
    return list(reached.values()) if len(reached) < len(data.train) else None


@torch.no_grad()
def cache_reference(
    model: nn.Module,
    rows: list[PreferenceRow],
    micro_batch: int,
    pad_id: int,
    device,
    adapters: bool = False,
    needed: list[PreferenceRow] | None = None,
) -> None:
    """Set row.reference = (log p chosen, log p rejected) under the model in eval mode, with its adapters off (the
    base), or with `adapters` as they are (the adapter the run continues, before its first step). needed: only the
    micro-batches that hold one of these rows (the others' rows keep None); the batches are cut from `rows` alike,
    so each row's reference is the same either way."""
    wanted = None if needed is None else {id(row) for row in needed}
    with eval_mode(model), adapters_disabled(model) if not adapters else contextlib.nullcontext():
        for start in range(0, len(rows), micro_batch):
            chunk = rows[start : start + micro_batch]
            if wanted is not None and not any(id(row) in wanted for row in chunk):
                continue
            batch = {k: v.to(device) for k, v in collate(chunk, pad_id).items() if torch.is_tensor(v)}
            logp = sequence_log_probs(model, batch)[0].tolist()
            for i, row in enumerate(chunk):
                row.reference = (logp[i], logp[len(chunk) + i])


def make_task(cfg: DpoConfig) -> Task:
    """The dpo task with its loss settings bound."""

    def loss(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        s = scores(model, batch, cfg, share=weight(batch))  # kto: z0 over the ranks' side-by-side micro-batches
        return s.loss.sum(), all_metric_sums(s)

    @torch.no_grad()
    def evaluate(model: nn.Module, batches: list[dict]) -> dict[str, float]:
        names = kto.METRICS if cfg.loss == "kto" else METRICS + (ORPO_METRICS if cfg.loss == "orpo" else ())
        sums, pairs = {"loss": 0.0} | dict.fromkeys(names, 0.0), 0
        with eval_mode(model):
            for batch in batches:
                s = scores(model, batch, cfg)
                sums["loss"] += s.loss.sum().item()
                for name, value in all_metric_sums(s).items():
                    sums[name] = sums.get(name, 0.0) + value.item()
                pairs += count(batch)
        return {f"eval_{name}": value for name, value in metric_means(sums, pairs).items()} if pairs else {}

    def prepare(built: BuiltModel, data: Datasets, run: RunConfig) -> None:
        if cfg.loss in REFERENCE_FREE:
            print(f"dpo: loss {cfg.loss} needs no reference model", flush=True)
            return
        rows = data.train + data.eval
        # continuing an adapter (model.adapter, a stage's continue: adapter): the model as it starts, the adapter on
        starting = bool(run.model.adapter) and run.method.is_adapter
        which = f"the model it starts from: the base with {run.model.adapter}" if starting else "the base, adapters off"
        if not run.method.is_adapter:  # full or layers: no adapter to switch off; the weights before any update
            which = "the starting weights, before the first update"
        reached = reached_rows(data, run)
        needed = None if reached is None else reached + data.eval
        t = run.train
        reach = f"train.max_steps ({t.max_steps})" if t.max_steps else f"train.epochs ({t.epochs})"
        unit = "rows" if cfg.loss == "kto" else "pairs"  # kto: a row and its mismatched side
        counted = (
            f"{len(rows)} {unit}"
            if needed is None
            else f"{len(needed)} of {len(rows)} {unit}: the train {unit} that {reach} reaches"
            + (f", and the eval {unit}" if data.eval else "")
        )
        print(f"dpo: reference log-probs of {counted} ({which}) ...", flush=True)
        cache_reference(
            built.model, rows, run.train.micro_batch, data.facts["pad_id"], built.device, starting, needed=needed
        )

    return Task(
        name="dpo",
        build_data=build_feedback if cfg.loss == "kto" else build_preferences,
        make_batches=make_batches,
        count=count,
        loss=loss,
        prepare=prepare,
        save=sft.save,
        evaluate=evaluate,
    )
