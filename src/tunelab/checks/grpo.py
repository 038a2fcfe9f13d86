"""`tunelab check` for task grpo: the prompts, the room they leave for an answer, the rewards, and one rollout.

Reading the prompts (`task.build_data`) already refuses what cannot train, with the file, line and field: a row
without a prompt, a chat that does not end with the user's turn, a prompt that leaves no room for an answer (with
data.overlong=truncate; drop skips and counts it), a column a reward reads that a row lacks. Those are bad input
(exit 2), as in train. The items here:

- prompts: how many train and eval prompts are used;
- room: tokens per prompt, and the prompts whose prompt + grpo.max_new_tokens is over data.max_length (their answers
  are cut to fit), with where;
- rewards: each reward read as train reads it (a `function` reward's file or module imported, a reward model's run
  folder found), with its weight.

With the model, the first grpo.prompts_per_step prompts of the training file are rolled out as the first step rolls
out its prompts: grpo.num_generations answers each, sampled and scored. The check shows the first prompt's answers
with their total rewards, the mean and spread of the rewards, and how many prompts' answers all got the same reward.
A prompt whose answers tie gives every one of them an advantage of 0: no learning signal. When every prompt ties,
the step cannot change the model (a warning: the rewards must tell a prompt's answers apart). Then one forward and
backward of the first micro-batch of answers through grpo's loss: it and the gradients must be finite.
"""

from __future__ import annotations

from tunelab.checks.model import dtype_items, task_step, untrained_item
from tunelab.config import RunConfig
from tunelab.data.checks import CheckItem
from tunelab.data.report import location
from tunelab.errors import counted
from tunelab.run_info import RunInfo
from tunelab.tasks import rewards as reward_fns
from tunelab.tasks.grpo import RewardError
from tunelab.tasks.task import Task
from tunelab.training.initial_factors import KeptFactors
from tunelab.training.prepare import Inputs, load_model

SHOWN = 5  # prompts listed by location
ANSWER_CHARS = 100  # an answer shown is cut to this many characters


def prompt_item(inputs: Inputs) -> CheckItem:
    report = inputs.data.report
    return CheckItem("prompts", "pass", f"{report.train.used} training prompts, {report.eval.used} eval prompts")


def room_item(cfg: RunConfig, inputs: Inputs) -> CheckItem:
    """Tokens per prompt, and the prompts that leave fewer than grpo.max_new_tokens for an answer."""
    rows = [*inputs.data.train, *inputs.data.eval]
    s, limit, new = inputs.data.report.lengths, cfg.data.max_length, cfg.grpo.max_new_tokens
    bounded = f" ({s.bounds_note('prompt', 'data.max_length')})" if s.at_least else ""
    summary = f"tokens per prompt: min {s.min}, median {s.median}, p95 {s.p95}, max {s.max}{bounded}"
    short = [r for r in rows if len(r.prompt_ids) + new > limit]
    if not short:
        return CheckItem(
            "room", "pass", f"{summary}; each leaves grpo.max_new_tokens {new} within data.max_length {limit}"
        )
    where = [
        f"{location(r.path, r.line)} ({len(r.prompt_ids)} tokens: room for {limit - len(r.prompt_ids)})" for r in short
    ]
    return CheckItem(
        "room",
        "warn",
        f"{summary}; {counted(len(short), 'prompt')} + grpo.max_new_tokens {new} exceed data.max_length {limit}: "
        "their answers "
        "are cut to fit (raise data.max_length or lower grpo.max_new_tokens)",
        where[:SHOWN],
    )


def reward_item(cfg: RunConfig) -> CheckItem:
    """The rewards as training reads them (`rewards.specs`: a `function` reward's file or module is imported, a
    reward model's run must be a folder; the model itself loads with the model checks)."""
    specs = reward_fns.specs(cfg.grpo.rewards)
    names = ", ".join(f"{s.name} x {s.weight:g}" for s in specs)
    total = "its value times its weight" if len(specs) == 1 else "their weighted sum"
    loads = "loads" if len(specs) == 1 else "load"
    return CheckItem("rewards", "pass", f"{counted(len(specs), 'reward')} {loads}: {names} (the total is {total})")


def grpo_data_checks(cfg: RunConfig, inputs: Inputs) -> list[CheckItem]:
    return [prompt_item(inputs), room_item(cfg, inputs), reward_item(cfg)]


def grpo_preview(inputs: Inputs, examples: int) -> str:
    """The first training prompts as the model reads them (the chat template applied)."""
    rows = inputs.data.train[:examples]
    lines = [f"preview of the first {len(rows)} training prompts as the model reads them:"]
    decode = inputs.tokenizer.decode
    lines += [f"  {location(r.path, r.line)}: {decode(r.prompt_ids, skip_special_tokens=False)!r}" for r in rows]
    return "\n".join(lines)


def _spread_item(figures: dict, prompts: int) -> CheckItem:
    tied = round(figures["zero_std_groups"] * prompts)
    if tied == prompts:
        whose = "the prompt's" if prompts == 1 else f"each of the {prompts} prompts'"
        return CheckItem(
            "reward spread",
            "warn",
            f"{whose} answers got one reward for all of them: every advantage is 0, so this "
            "step would not change the model. The rewards must tell a prompt's answers apart: give partial credit "
            "(a function reward), or raise grpo.temperature or grpo.num_generations",
        )
    text = f"{prompts - tied} of {prompts} prompts' answers got different rewards (the learning signal)"
    return CheckItem("reward spread", "pass", text + (f"; {tied} tied (no signal from them)" if tied else ""))


def grpo_model_items(
    cfg: RunConfig, inputs: Inputs, task: Task, resumed: RunInfo | None = None, start: KeptFactors | None = None
) -> list[CheckItem]:
    """The first step's rollout of the first prompts, and one forward/backward of its first micro-batch. `task`:
    the grpo task whose build_data read `inputs.data`; `resumed`: the run.json of the run --resume continues, `start`
    its kept A0, B0."""
    built, untrained = load_model(cfg, inputs, resumed=resumed, start=start)
    task.prepare(built, inputs.data, cfg)
    pad = inputs.tokenizer.pad_token_id
    group = task.make_batches(inputs.data.train, cfg.train.micro_batch, pad, shuffle=False, seed=0, epoch=0)[:1]
    prompts, g = len(group[0]["rows"]), cfg.grpo.num_generations
    items = [*dtype_items(built), untrained_item(untrained)]
    name = "first rollout"
    try:
        batches = task.rollout(built.model, group, 0, cfg.train.micro_batch)
    except RewardError as exc:  # grpo.on_reward_error: stop, as the first step would stop
        return items + [CheckItem(name, "fail", str(exc))]
    if not batches:
        return items + [CheckItem(name, "fail", f"a reward failed on every one of the {prompts} prompts' answers")]
    figures = batches[0]["step_figures"]
    names = [spec.name for spec in reward_fns.specs(cfg.grpo.rewards)]
    per_reward = ", ".join(f"{name} {figures[f'reward_{name}']:.3f}" for name in names)
    first = batches[0]
    shown = min(g, len(first["answers"]))
    where = first["sources"][0][0]
    details = [
        f"{where}, answer {i + 1}: reward {float(first['rewards'][i]):.3f}  {first['answers'][i][:ANSWER_CHARS]!r}"
        for i in range(shown)
    ]
    if figures["reward_errors"]:
        details.append(
            f"skipped: {counted(round(figures['reward_errors']), 'prompt')} whose answers a reward failed on"
        )
    items.append(
        CheckItem(
            name,
            "warn" if figures["reward_errors"] else "info",
            f"{counted(prompts, 'prompt')} x {counted(g, 'answer')}: reward mean {figures['reward']:.3f}, std {figures['reward_std']:.3f} "
            f"({per_reward}); {figures['answer_tokens']:.1f} answer tokens on average",
            details,
        )
    )
    items.append(_spread_item(figures, prompts - int(figures["reward_errors"])))
    value, finite = task_step(task, built.model, first)
    check = "forward/backward (grpo)"
    if not finite:
        return items + [
            CheckItem(check, "fail", f"the loss ({value:g}) or a gradient is not finite on the first batch")
        ]
    return items + [CheckItem(check, "pass", f"first micro-batch of answers: loss {value:.4f}, gradients finite")]
