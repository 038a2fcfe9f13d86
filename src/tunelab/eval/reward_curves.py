"""The report's section of a grpo run: how the rewards of its sampled answers moved, step by step.

Read from metrics.jsonl: per step the mean reward of the sampled answers (total and per function), the k3 KL to the
base, the mean answer length and the share of prompt groups whose answers all scored the same (they teach nothing);
per evaluation the mean reward of greedy answers to the held-out prompts. The plots are drawn by the report's own
`curve_plot` (passed in), so this module knows nothing of figures.
"""

from __future__ import annotations

from collections.abc import Callable

Plot = Callable[[list[tuple[str, list[tuple[float, float]], str]], str, str], str]  # (series, ylabel, caption) -> html


def _points(records: list[dict], key: str) -> list[tuple[float, float]]:
    return [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float) and "step" in r]


def reward_functions(records: list[dict]) -> list[str]:
    """The reward functions' names, as the metrics spell them (reward_<name>, without the _std columns)."""
    names = {
        k.removeprefix("reward_") for r in records for k in r if k.startswith("reward_") and not k.endswith("_std")
    }
    return sorted(names - {"errors"})


def reward_section(records: list[dict], curve_plot: Plot) -> str:
    """The plots of a grpo run's rewards, KL, answer length and zero-variance groups, as HTML."""
    names = reward_functions(records)
    figures = []
    total = [
        ("sampled (train)", _points(records, "reward"), "-"),
        ("greedy (eval)", _points(records, "eval_reward"), "o-"),
    ]
    total = [s for s in total if s[1]]
    if total:
        figures.append(curve_plot(total, "mean reward", "Rewards: total, sampled answers and greedy held-out answers"))
    per = [(name, _points(records, f"reward_{name}"), "-") for name in names]
    per += [(f"{name} (eval)", _points(records, f"eval_reward_{name}"), "o-") for name in names]
    per = [s for s in per if s[1]]
    if len(names) > 1 and per:
        figures.append(curve_plot(per, "mean reward", "Rewards per function (unweighted)"))
    for key, ylabel, caption in (
        ("kl", "KL per answer token", "KL to the base (k3 estimate, per answer token)"),
        ("answer_tokens", "tokens", "Mean length of the sampled answers"),
        ("zero_std_groups", "share of groups", "Groups whose answers all scored the same (no learning signal)"),
    ):
        if found := _points(records, key):
            figures.append(curve_plot([(key, found, "-")], ylabel, caption))
    if not figures:
        return '<p class="missing">metrics.jsonl holds no reward metrics.</p>'
    return f'<div class="plots">{"".join(figures)}</div>'
