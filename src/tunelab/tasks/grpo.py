"""Online policy optimisation with group-relative advantages (task grpo): the policy answers each prompt G times,
reward functions score the answers, and the answers better than their group's mean are made more likely.

Before each optimizer step the loop calls `rollout` (training/loop.py, one line), which for the step's P prompts:
1. samples G answers per prompt with the current policy (adapter on, eval mode, `models.decode.sample` with a KV
   cache; a DoRA layer's weight norm computed once for the whole sampling, `peft.dora.norms_held`), from a
   generator seeded by (train.seed, step): a resumed run draws what the uninterrupted one drew. Each answer's draws
   are keyed to its place in the step, so with several ranks (DDP) each samples and scores every world-th answer and
   the ranks swap them (`Ranks.gather`), and the step is one process's;
2. scores them (`tasks/rewards.py`): r_i = sum_k w_k r_ik; a reward that fails stops the run or skips the group;
3. normalises within each group:  A_i = (r_i - mean_G(r)) / (std_G(r) + 1e-4)  (std with Bessel's correction,
   as DeepSeekMath's GRPO); a group whose answers all score the same has A = 0 and teaches nothing (counted);
4. builds rows prompt + answer with labels on the answer tokens only (the stop token included), and, without
   gradients, the per-token log-probs of the answers under the policy as it sampled (old) and under the reference
   (the base: adapters off for a new LoRA/DoRA adapter; for full, layers and an adapter the run continues, the
   starting weights, kept at `prepare`). When no dropout draws in the model (method.dropout 0), the policy as it
   sampled is the policy of the training forward, weights and all, so old = that forward's log p, detached: the
   same numbers without a forward of their own. These forwards, like the sampling, compute a DoRA layer's weight
   norm once for all the step's micro-batches (the starting weights' own, which `starting_weights` swaps in).

The loss, per answer token t of answer i (o: old, r: reference log p, logp the policy's now, with gradient):

    ratio_t  = exp(logp_t - o_t)
    surr_t   = -min(ratio_t * A_i, clip(ratio_t, 1 - eps, 1 + eps) * A_i)
    kl_t     = exp(r_t - logp_t) - (r_t - logp_t) - 1            (k3: unbiased for KL(pi || ref), always >= 0)
    loss     = sum_t (surr_t + beta * kl_t) / (answer tokens of the whole step)      (STYLE.md habit 9)

With one optimizer step per rollout, logp = o in value, so ratio = 1 and the clip is inactive; its gradient is
d ratio / d theta = ratio * d logp / d theta = d logp / d theta, so the surrogate's gradient is -A_i d logp_t, the
policy gradient. The clip matters only where the policy moved since sampling (dropout, several ranks' rounding).
The k3 term's gradient is (1 - exp(r_t - logp_t)) d logp_t: it pulls logp back towards the reference.

Every log p (logp, o and r) is of the distribution the answers were drawn from, softmax(logits / grpo.temperature),
as TRL's GRPOTrainer computes it: at 0.7 the ratio and the KL compare the sampling distributions, not the
temperature-1 ones the sampler never drew from; at 1 nothing is divided. grpo.top_p shapes the sampling only: its
truncation is not in any log p, which is of the whole tempered distribution, not of the top-p set renormalised (as in
TRL, whose `_get_per_token_logps_and_entropies` divides the logits by the temperature and takes the full log-softmax).
So a drawn token's log p is at most its truncated one: the ratio and the KL are those of the untruncated policy,
whose gradient the loss follows. Log-probs go through `tasks/log_probs.token_log_probs` (fused head + log-prob op on the fast path: no
(N, V) logits; the temperature divides the hidden states that enter it). Step figures (rewards per function, KL,
answer length, zero-variance groups) are logged each step; eval answers the held-out prompts greedily (temperature
0) and reports their mean reward, with eval_loss = -eval_reward so that train.keep_best keeps the weights whose
greedy answers scored best. The result is saved as sft saves it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from tunelab.config import GrpoConfig, RunConfig
from tunelab.config.flags import CLI, Spelling
from tunelab.data.batches import epoch_chunks
from tunelab.data.loader import Datasets
from tunelab.data.reasoning import OPEN, ThoughtReader, decode_answer, prompt_opens_thought
from tunelab.data.render import IGNORE
from tunelab.data.report import location
from tunelab.errors import DataError, TunelabError, counted
from tunelab.models.decode import SampleSettings, sample
from tunelab.peft.dora import norms_held
from tunelab.peft.lora import adapters_disabled
from tunelab.tasks import rewards as reward_fns
from tunelab.tasks import sft
from tunelab.tasks.head_data import pad_rows
from tunelab.tasks.log_probs import token_log_probs
from tunelab.tasks.prompt_data import PromptRow, build_prompts
from tunelab.tasks.task import Task, eval_mode
from tunelab.training.build import BuiltModel
from tunelab.training.distributed import ONE_PROCESS, Ranks

STD_EPS = 1e-4


class RewardError(TunelabError):
    """A reward function raised or returned a non-number and grpo.on_reward_error is stop."""


def tied_groups(rewards: torch.Tensor, group: int) -> torch.Tensor:
    """(P,) whether each group's G rewards are all the same number."""
    r = rewards.view(-1, group)
    return (r == r[:, :1]).all(1)


def group_advantages(rewards: torch.Tensor, group: int) -> torch.Tensor:
    """(P * G,) total rewards, G consecutive per prompt -> (P * G,) (r - group mean) / (group std + 1e-4), exactly 0
    in a tied group: its float mean can differ from the rewards by a rounding (0.3 * 6 / 6), and divided by a std of
    the same rounding plus 1e-4 that gave every answer one same-signed advantage (-0.07 for a reward of 123.456)."""
    r = rewards.view(-1, group)
    centered = (r - r.mean(1, keepdim=True)).masked_fill(tied_groups(rewards, group)[:, None], 0.0)
    return (centered / (r.std(1, keepdim=True) + STD_EPS)).view(-1)


def token_losses(
    logp: torch.Tensor, old: torch.Tensor, ref: torch.Tensor | None, adv: torch.Tensor, eps: float, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """All (n,) per answer token: the loss surr + beta * kl and the k3 KL (zero without a reference)."""
    ratio = torch.exp(logp - old)
    surrogate = -torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
    if ref is None:
        return surrogate, torch.zeros_like(logp)
    delta = ref - logp
    kl = torch.expm1(delta) - delta  # exp(d) - 1 - d without losing the small d's digits to cancellation
    return surrogate + beta * kl, kl


@contextmanager
def starting_weights(model: nn.Module, saved: dict[str, torch.Tensor]) -> Iterator[None]:
    """The model with the trained parameters named in `saved` set back to their starting values, for a while."""
    params = dict(model.named_parameters())
    current = {name: params[name].data for name in saved}
    try:
        for name, value in saved.items():
            params[name].data = value
        yield
    finally:
        for name, value in current.items():
            params[name].data = value


@dataclass
class Online:
    """What the rollout needs beyond the config: set by build_data (tokenizer) and prepare (rewards, reference)."""

    tokenizer: object = None
    pad_id: int = 0
    stop_ids: tuple[int, ...] = ()
    max_length: int = 0
    seed: int = 0
    rewards: list[reward_fns.Reward] = field(default_factory=list)
    starting: dict[str, torch.Tensor] | None = None  # full and layers: the trained weights before the first step
    adapters: bool = True

    @contextmanager
    def reference(self, model: nn.Module) -> Iterator[None]:
        with adapters_disabled(model) if self.adapters else starting_weights(model, self.starting or {}):
            yield


def _draws_random(model: nn.Module) -> bool:
    """Dropout with p > 0 anywhere in the model: its training forward differs from the eval-mode one."""
    return any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())


def _samples(rows: list[PromptRow], answers: list[list[int]], stops: set[int], tokenizer, group: int, first: int = 0):
    """The samples to score: answers[k] is answer first + k of the step, to prompt rows[(first + k) // group]. A
    thought the answer opens with (or the prompt opened) is read apart from the answer (data/reasoning.py)."""
    out = []
    for k, ids in enumerate(answers):
        row = rows[(first + k) // group]
        text_ids = ids[:-1] if ids and ids[-1] in stops else ids
        text = decode_answer(tokenizer, text_ids)
        thought, answer = ThoughtReader(prompt_opens_thought(tokenizer, row.prompt_ids)).read(text, final=True)
        if thought is None:  # an answer without a thought is read as it was written, its whitespace kept
            answer, text = text, None
        elif not text.lstrip().startswith(OPEN):  # the prompt wrote <think>: it opens the text as written
            text = f"{OPEN}{text}"
        where = location(row.path, row.line)
        sample = reward_fns.Sample(row.prompt, answer or "", row.row, len(ids), where, thought, text, row.spelled)
        out.append(sample)
    return out


def _failure_message(f: reward_fns.Failure, samples: list[reward_fns.Sample]) -> str:
    s = samples[f.sample]
    return f"{s.where}: reward {f.reward} {f.reason} (answer {s.answer[:80]!r})"


def _fit(prompt: list[int], answer: list[int], max_length: int) -> list[int]:
    return answer[: max(0, max_length - len(prompt))]


def collate(prompts: list[list[int]], answers: list[list[int]], where: list[str], pad_id: int) -> dict:
    """Rows prompt + answer, right-padded: input_ids, attention_mask, position_ids (B, T); labels on the answers."""
    batch = pad_rows([p + a for p, a in zip(prompts, answers)], pad_id)
    labels = torch.full_like(batch["input_ids"], IGNORE)
    for b, (p, a) in enumerate(zip(prompts, answers)):
        labels[b, len(p) : len(p) + len(a)] = torch.tensor(a, dtype=torch.long)
    batch["labels"] = labels
    batch["sources"] = [[w] for w in where]
    return batch


def count(batch: dict) -> int:
    """Answer tokens (those with a label after the shift)."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def reward_summary(values: torch.Tensor, rewards: list[reward_fns.Reward], total: torch.Tensor) -> dict[str, float]:
    """Mean and standard deviation of the total and of each function's reward over the answers."""
    out = {"reward": total.mean().item(), "reward_std": total.std(correction=0).item()}
    for j, reward in enumerate(rewards):
        out[f"reward_{reward.name}"] = values[:, j].mean().item()
        out[f"reward_{reward.name}_std"] = values[:, j].std(correction=0).item()
    return out


def make_task(cfg: GrpoConfig, spelling: Spelling = CLI) -> Task:
    """The grpo task with its settings bound; `spelling`: how a reward model's run that cannot be used is told to be
    resumed (`rewards.reward_run`)."""
    specs = reward_fns.specs(cfg.rewards, spelling)
    columns = sorted({s.column for s in specs if s.kind in ("contains", "equals")})
    online = Online()

    def build_data(run: RunConfig, tokenizer, seed: int) -> Datasets:
        data = build_prompts(run, tokenizer, seed, columns)
        reward_fns.refuse_missing_columns(specs, data.train + data.eval)  # a function's column parameters
        online.tokenizer, online.pad_id, online.stop_ids = (
            tokenizer,
            data.facts["pad_id"],
            tuple(data.facts["stop_ids"]),
        )
        online.max_length, online.seed = run.data.max_length, run.train.seed
        return data

    def make_batches(
        rows: list[PromptRow], micro_batch: int, pad_id: int, *, shuffle: bool, seed: int, epoch: int
    ) -> list[dict]:
        """grpo.prompts_per_step prompts per batch (one batch per step; the rollout splits its answers into
        micro-batches): the prompts padded (input_ids, attention_mask, position_ids), the rows, their sources."""
        batches = []
        for chunk in epoch_chunks(rows, cfg.prompts_per_step, shuffle=shuffle, seed=seed, epoch=epoch):
            batch = pad_rows([r.prompt_ids for r in chunk], pad_id)
            batch["rows"] = chunk
            batch["sources"] = [[location(r.path, r.line)] for r in chunk]
            batches.append(batch)
        return batches

    def stop_on(failures: list[reward_fns.Failure], samples: list[reward_fns.Sample]) -> None:
        if failures and cfg.on_reward_error == "stop":
            raise RewardError(
                _failure_message(failures[0], samples)
                + ". Fix the function (it must return a finite number), or set grpo.on_reward_error: skip to skip "
                "the prompts it fails on (counted in the metrics)."
            )

    def score(samples: list[reward_fns.Sample]) -> tuple[torch.Tensor, list[reward_fns.Failure]]:
        values, failures = reward_fns.score(online.rewards, samples)
        stop_on(failures, samples)
        return values, failures

    def sample_and_score(model: nn.Module, rows: list[PromptRow], step: int, ranks: Ranks):
        """The step's prompts (G per row), their answers (cut to fit data.max_length), the samples, the (N, R)
        rewards, the failures and the seconds it took. With several ranks, each samples and scores its share of the
        answers (every world-th) and the ranks swap them: an answer's draws are keyed to its place in the step
        (`models.decode.sample`'s rows), so the answers do not depend on the rank count."""
        device = next(model.parameters()).device
        g, stops = cfg.num_generations, set(online.stop_ids)
        prompts = [r.prompt_ids for r in rows for _ in range(g)]
        settings = SampleSettings(cfg.max_new_tokens, cfg.temperature, cfg.top_p, online.stop_ids)
        generator = torch.Generator(device).manual_seed(1_000_003 * online.seed + step)
        tic = time.perf_counter()
        mine = list(ranks.mine(len(prompts)))
        with norms_held(model):  # DoRA: no weight changes while sampling, so each norm is computed once
            drawn = sample(
                model,
                [prompts[i] for i in mine],
                settings,
                pad_id=online.pad_id,
                generator=generator,
                rows=mine,
                width=len(prompts),
            )
        drawn = [_fit(prompts[i], a, online.max_length) for i, a in zip(mine, drawn)]
        if ranks.world == 1:
            samples = _samples(rows, drawn, stops, online.tokenizer, g)
            return prompts, drawn, samples, *score(samples), time.perf_counter() - tic
        own = [_samples(rows, [a], stops, online.tokenizer, g, i)[0] for i, a in zip(mine, drawn)]
        values, failures = reward_fns.score(online.rewards, own)
        found = [[mine[f.sample], f.reward, f.reason] for f in failures]
        answers, table, failures = [[]] * len(prompts), [[]] * len(prompts), []
        for rank, part in enumerate(ranks.gather([drawn, values.tolist(), found])):
            for i, answer, value in zip(ranks.mine(len(prompts), rank), part[0], part[1], strict=True):
                answers[i], table[i] = answer, value
            failures += [reward_fns.Failure(*f) for f in part[2]]
        order = {r.name: j for j, r in enumerate(online.rewards)}
        failures.sort(key=lambda f: (order[f.reward], f.sample))  # as one process lists them
        samples = _samples(rows, answers, stops, online.tokenizer, g)
        stop_on(failures, samples)
        values = torch.tensor(table, dtype=torch.float32).view(len(prompts), len(online.rewards))
        return prompts, answers, samples, values, failures, time.perf_counter() - tic

    def rollout(
        model: nn.Module, prompt_batches: list[dict], step: int, micro_batch: int, ranks: Ranks = ONE_PROCESS
    ) -> list[dict]:
        """The step's prompt batches -> its training micro-batches of micro_batch rows (see the module docstring).
        With several ranks (DDP: each holds the whole model) each samples its share of the answers; every rank gets
        all the micro-batches, and the fixed log-probs only of those it trains (`Ranks.shard`)."""
        device = next(model.parameters()).device
        rows = [r for b in prompt_batches for r in b["rows"]]
        g = cfg.num_generations
        prompts, answers, samples, values, failures, seconds = sample_and_score(model, rows, step, ranks)
        for f in failures:
            print(f"grpo: skipped the group of {_failure_message(f, samples)}", flush=True)
        failed = {f.sample // g for f in failures}
        keep = [i for i in range(len(samples)) if i // g not in failed]  # whole groups, in order
        if not keep:
            raise DataError(
                f"grpo: the reward failed in every group of step {step + 1} ({len(failed)} prompts; the first: "
                f"{_failure_message(failures[0], samples)}), so the step has nothing to train on. "
                "grpo.on_reward_error: skip drops a failing group from its step; fix the reward function, or give a "
                "step more prompts (grpo.prompts_per_step)."
            )
        weights = torch.tensor([r.weight for r in online.rewards])
        values = values[keep]
        total = (values * weights).sum(1)  # (N,)
        advantages = group_advantages(total, g) if keep else total
        figures = {"reward_errors": float(len(failed)), "gen_tokens_per_s": sum(map(len, answers)) / seconds}
        if keep:
            figures |= reward_summary(values, online.rewards, total)
            figures["zero_std_groups"] = tied_groups(total, g).float().mean().item()
            figures["answer_tokens"] = sum(len(answers[i]) for i in keep) / len(keep)
        batches = []
        for start in range(0, len(keep), micro_batch):
            part = keep[start : start + micro_batch]
            batch = collate(
                [prompts[i] for i in part], [answers[i] for i in part], [samples[i].where for i in part], online.pad_id
            )
            batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
            batch["advantages"] = advantages[start : start + micro_batch].to(device)
            batch["rewards"] = total[start : start + micro_batch]  # (n,) on the CPU: shown by `tunelab check`
            batch["answers"] = [samples[i].answer for i in part]  # the texts the rewards read
            batches.append(batch)
        with norms_held(model):  # no weight changes before the step: a DoRA norm once, not once per micro-batch
            for j in ranks.mine(len(batches)):  # a blank micro-batch (training/distributed.py) counts 0: none needed
                batches[j] |= _fixed_log_probs(model, batches[j])
        for batch in batches:
            batch["step_figures"] = figures
        return batches

    @torch.no_grad()
    def _fixed_log_probs(model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """(n,) log p of the answer tokens under the policy as it sampled ("old", only when dropout draws in the
        training forward) and under the reference ("ref", when beta > 0)."""
        out = {}
        with eval_mode(model):
            if _draws_random(model):
                out["old"] = token_log_probs(model, batch, cfg.temperature)[0]
            if cfg.beta > 0:
                with online.reference(model):
                    out["ref"] = token_log_probs(model, batch, cfg.temperature)[0]
        return out

    def loss(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        logp, rows = token_log_probs(model, batch, cfg.temperature)  # (n,), (n,) of softmax(logits / temperature)
        old = batch["old"] if "old" in batch else logp.detach()  # no dropout: the sampling policy is this one
        per_token, kl = token_losses(logp, old, batch.get("ref"), batch["advantages"][rows], cfg.epsilon, cfg.beta)
        n = count(batch)
        # The step's figures are one value each; the step divides every metric sum by its answer tokens, so each is
        # returned as value x this batch's tokens, which sums over the step's batches back to value x their tokens.
        metrics = {name: value * n for name, value in batch["step_figures"].items()}
        return per_token.sum(), metrics | {"kl": kl.detach().sum()}

    @torch.no_grad()
    def evaluate(model: nn.Module, batches: list[dict]) -> dict[str, float]:
        """Greedy answers to the eval prompts: their mean reward in total and per function (eval_loss = -reward)."""
        rows = [r for b in batches for r in b["rows"]]
        if not rows:
            return {}
        settings = SampleSettings(cfg.max_new_tokens, 0.0, 1.0, online.stop_ids)
        prompts = [r.prompt_ids for r in rows]
        width = cfg.prompts_per_step * cfg.num_generations  # as many rows at once as a rollout samples
        answers = []
        with norms_held(model):
            for start in range(0, len(prompts), width):
                answers += sample(model, prompts[start : start + width], settings, pad_id=online.pad_id)
        answers = [_fit(p, a, online.max_length) for p, a in zip(prompts, answers)]
        samples = _samples(rows, answers, set(online.stop_ids), online.tokenizer, 1)
        values, failures = score(samples)
        for f in failures:  # on_reward_error: skip (stop has raised): said and counted, never dropped silently
            print(f"grpo eval: left out {_failure_message(f, samples)}", flush=True)
        failed = {f.sample for f in failures}
        keep = [i for i in range(len(samples)) if i not in failed]
        if not keep:
            print(
                f"grpo eval: the reward failed for every one of the {len(samples)} eval answers, so this evaluation has "
                "no reward (and keep_best nothing to compare); fix the reward function.",
                flush=True,
            )
            return {"eval_reward_errors": float(len(failed))}
        values = values[keep]
        total = (values * torch.tensor([r.weight for r in online.rewards])).sum(1)
        out = {"eval_reward": total.mean().item()}
        out |= {f"eval_reward_{r.name}": values[:, j].mean().item() for j, r in enumerate(online.rewards)}
        out["eval_answer_tokens"] = sum(len(answers[i]) for i in keep) / len(keep)
        out["eval_reward_errors"] = float(len(failed))  # prompts whose answer the mean leaves out
        return {"eval_loss": -out["eval_reward"]} | out

    def prepare(built: BuiltModel, data: Datasets, run: RunConfig) -> None:
        online.rewards = [reward_fns.build(spec, built.device) for spec in specs]
        # continuing an adapter (model.adapter, a stage's continue: adapter): the reference is its starting weights,
        # the model the run starts from, not the base without it
        online.adapters = run.method.is_adapter and not run.model.adapter
        if cfg.beta > 0 and not online.adapters:
            # the reference of full, layers and a continued adapter: the trained weights as they start (a copy)
            online.starting = {n: p.detach().clone() for n, p in built.model.named_parameters() if p.requires_grad}
        names = ", ".join(f"{r.name} x {r.weight:g}" for r in online.rewards)
        reference = (
            "none (beta 0)"
            if cfg.beta == 0
            else "the base, adapters off"
            if online.adapters
            else "the starting weights"
        )
        print(
            f"grpo: {counted(cfg.prompts_per_step, 'prompt')} x {counted(cfg.num_generations, 'answer')} per step; "
            f"rewards {names}; reference {reference}",
            flush=True,
        )

    return Task(
        name="grpo",
        build_data=build_data,
        make_batches=make_batches,
        count=count,
        loss=loss,
        prepare=prepare,
        save=sft.save,
        evaluate=evaluate,
        rollout=rollout,
        eval_at_start=True,
    )
