"""The KTO loss of task dpo (dpo.loss kto): Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic
Optimization" (arXiv 2402.01306), on unpaired rows of a prompt, a completion and a desirable/undesirable label
(`tasks/kto_data.py`).

With r = pi - ref, the log ratio of a row's completion (summed log p under the policy minus the reference's):

    z0   = max(0, mean over the micro-batch of (pi - ref) of the mismatched rows)    detached: no gradient
    loss = desirable_weight   * (1 - sigmoid(beta * (r - z0)))     a desirable row
           undesirable_weight * (1 - sigmoid(beta * (z0 - r)))     an undesirable row

z0 is the paper's reference point, a biased estimate of KL(policy || reference) made from each row's prompt with the
completion of another row (`kto_data.FeedbackRow`'s rejected side), as TRL's KTOTrainer makes it; it is clamped at 0
(a KL is never negative) and detached, so it shifts the sigmoid without being trained on. A micro-batch makes its own
estimate (TRL: each batch, averaged over processes; here over its rows in that micro-batch only, so a micro-batch of
one row estimates from one mismatched row). The mismatched rows go through the same forward as the matched ones (one
batch of 2B rows, as dpo's pairs), which costs their backward through the layers though z0 takes no gradient.

The reward of a row is beta * r. The metrics, summed over rows and divided by the step's rows as every dpo metric:
kl (z0, weighed by the micro-batch's rows) and accuracy (the share of rows on their label's side of z0: r > z0
desirable, r < z0 undesirable); desirable_reward and undesirable_reward are the mean reward of that label's rows, their
sums divided by the label's rows (their own count, `tasks.task.metric_means`), left out of a step without such a row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunelab.tasks.task import OWN_COUNT

METRICS = ("kl", "desirable_reward", "undesirable_reward", "accuracy")


@dataclass
class KtoScores:
    """Per row (B,): the loss, the reward beta * r, and the label; z0: the micro-batch's KL estimate (0-dim)."""

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
) -> KtoScores:
    """policy, reference: (2B,) summed log p, the B rows' own completions first, then the B mismatched ones;
    desirable: (B,) bool."""
    b = policy.shape[0] // 2
    ratio = policy - reference
    z0 = ratio[b:].detach().mean().clamp(min=0)
    r = ratio[:b]
    desirable = desirable.to(policy.device)
    loss = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (r - z0))),
        undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r))),
    )
    return KtoScores(loss, beta * r, desirable, z0, beta)


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
