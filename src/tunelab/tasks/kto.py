"""The KTO loss of task dpo (dpo.loss kto): Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic
Optimization" (arXiv 2402.01306), on unpaired rows of a prompt, a completion and a desirable/undesirable label
(`tasks/kto_data.py`).

With r = pi - ref, the log ratio of a row's completion (summed log p under the policy minus the reference's):

    z0   = max(0, mean over the micro-batch (and the ranks) of (pi - ref) of the mismatched rows)    detached
    loss = desirable_weight   * (1 - sigmoid(beta * (r - z0)))     a desirable row
           undesirable_weight * (1 - sigmoid(beta * (z0 - r)))     an undesirable row

z0 is the paper's reference point, a biased estimate of KL(policy || reference) made from each row's prompt with the
completion of another row (`kto_data.FeedbackRow`'s rejected side), as TRL's KTOTrainer makes it; it is clamped at 0
(a KL is never negative) and detached, so it shifts the sigmoid without being trained on. Each micro-batch makes an
estimate from its rows (a micro-batch of one row estimates from one mismatched row); with several ranks
(training/distributed.py) a training micro-batch's estimate is the mean over the rows of the micro-batches the ranks
run side by side, as TRL gathers a batch's estimate over its processes: the sums and the row counts are summed over the
ranks (`reference_point`; a blank micro-batch adds none), so every rank uses the same z0, the one a process holding all
those rows would have. Eval batches are the same on every rank, so their estimate stays the micro-batch's own. The mismatched rows go through the same forward as the matched ones (one
batch of 2B rows, as dpo's pairs), which costs their backward through the layers though z0 takes no gradient.

The reward of a row is beta * r. The metrics, summed over rows and divided by the step's rows as every dpo metric:
kl (z0, weighed by the micro-batch's rows) and accuracy (the share of rows on their label's side of z0: r > z0
desirable, r < z0 undesirable); desirable_reward and undesirable_reward are the mean reward of that label's rows, their
sums divided by the label's rows (their own count, `tasks.task.metric_means`), left out of a step without such a row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from tunelab.tasks.task import OWN_COUNT

METRICS = ("kl", "desirable_reward", "undesirable_reward", "accuracy")


@dataclass
class KtoScores:
    """Per row (B,): the loss, the reward beta * r, and the label; z0: the KL estimate (0-dim) the rows were scored
    against."""

    loss: torch.Tensor
    reward: torch.Tensor
    desirable: torch.Tensor
    z0: torch.Tensor
    beta: float


def kto_scores(
    policy: torch.Tensor,
    reference: torch.Tensor,
    desirable: torch.Tensor,
    beta: float,
    desirable_weight: float,
    undesirable_weight: float,
    share: float | None = None,
) -> KtoScores:
    """policy, reference: (2B,) summed log p, the B rows' own completions first, then the B mismatched ones;
    desirable: (B,) bool; share: None for the micro-batch's own z0, else its rows' weight in the z0 of all ranks
    (`reference_point`)."""
    b = policy.shape[0] // 2
    ratio = policy - reference
    z0 = reference_point(ratio[b:], share)
    r = ratio[:b]
    desirable = desirable.to(policy.device)
    loss = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (r - z0))),
        undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r))),
    )
    return KtoScores(loss, beta * r, desirable, z0, beta)


def reference_point(kl: torch.Tensor, share: float | None = None) -> torch.Tensor:
    """z0 = max(0, mean of `kl`), the mismatched rows' log ratios (B,), detached. With `share` (1, or 0 for a blank
    micro-batch, whose rows must not count) and torch.distributed initialised with several ranks, the mean is over the
    rows of every rank: their sum and their count are summed with all_reduce (in float64) and divided once, so ranks of
    different row counts weigh their rows alike and every rank gets the same z0. One process (or share None) computes
    the micro-batch's mean as it always has."""
    kl = kl.detach()
    if share is None or not dist.is_initialized() or dist.get_world_size() == 1:
        return kl.mean().clamp(min=0)
    totals = torch.stack([kl.double().sum(), kl.new_tensor(kl.numel(), dtype=torch.float64)]) * share
    dist.all_reduce(totals)
    return (totals[0] / totals[1].clamp(min=1)).to(kl.dtype).clamp(min=0)


def metric_sums(s: KtoScores) -> dict[str, torch.Tensor]:
    reward = s.reward.detach()
    right = torch.where(s.desirable, reward > s.beta * s.z0, reward < s.beta * s.z0)
    zero = reward.new_zeros(())
    good = s.desirable.sum().float()
    return {
        "kl": s.z0 * reward.shape[0],
        "desirable_reward": torch.where(s.desirable, reward, zero).sum(),
        "desirable_reward" + OWN_COUNT: good,
        "undesirable_reward": torch.where(s.desirable, zero, reward).sum(),
        "undesirable_reward" + OWN_COUNT: reward.shape[0] - good,
        "accuracy": right.sum().float(),
    }
