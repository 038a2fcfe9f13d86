"""After training, a verdict in plain words on the loss curves: diverged, underfit, overfit, fine or too short to
judge, with the numbers and the option to change.

Read from metrics.jsonl (train loss per logged step, eval loss per evaluation), in this order:
- diverged: the train loss ended higher than it started (the last tenth of the steps average at least 10% and 0.1
  nats above the first tenth). Fine-tuning starts from a model that already predicts the text well; a loss that
  rises means the updates were too large (a run at lr 1e4 without clipping climbed from 2.0 to 10.8 = ln(vocab),
  the loss of a uniform guess). A lower rate (and gradient clipping) is the fix. Judged first: such a run's eval loss
  rises too, and "overfit" would blame the epochs.
- overfit: the eval loss rose at the end: its last value is at least 10% and 0.05 nats above its lowest, which came
  earlier. More training made held-out text less likely, so fewer epochs (or more data) is the fix.
- underfit: the train loss is still high after the model saw each example at least twice (the last tenth of the
  steps average >= 0.5 nats a token for sft; `high_loss` gives dpo (its losses orpo and kto theirs), reward and
  classify theirs), or it was still falling fast when training stopped (down >= 20% and >= 0.1 nats over the last
  quarter, where a decaying schedule has already slowed it), or the eval loss was still falling (its last value is
  its lowest, >= 10% and 0.02 nats below the one before). More epochs or a higher rate is the fix. A single pass
  over a large, varied set may end above 0.5 and be fine: the text is not yet seen twice, and its loss reflects how
  predictable it is, not how well it was learned. A run that train.max_steps stopped before one pass, its loss still
  that high, is underfit too: part of its rows were never trained on, and the loss cannot say yet how the rest was
  learned (said before its falling loss's advice).
- fine: neither.
A run that train.early_stopping_patience ended (`early`: run.json's extra.early_stop) is judged on the steps it made
and never told to train longer: its eval loss had stopped improving, so more steps would not lower it. Underfit, it is
told the rate (a train loss still high) or the data (one still falling); overfit, not a shorter length; too short, a
larger patience; every verdict says it stopped early.
A run that logs rewards (task grpo) is judged on them instead (`judge_rewards`): its loss is a clipped surrogate
plus a KL term, near zero whatever was learned, so a loss curve says nothing there. Overfit: the held-out reward fell
at the end (its last value at least REWARD_FALL below its highest, which came earlier; grpo evaluates the model
before training too, as step 0, so a run that ends below where it started is caught with two evaluations). Underfit: the reward did not
rise at all (by less than REWARD_MOVE from the first tenth of the steps to the last), or it was still rising when
training stopped (by REWARD_MOVE or more over the last quarter, or the last held-out reward the highest and
REWARD_MOVE above the one before). Rewards are on the reward functions' scale (most give 0..1).
Averages over a tenth of the steps (at least 3, at most half) smooth the step-to-step noise of small micro-batches.
- too_short: fewer than MIN_JUDGED (2 windows of 3) train losses were logged: the start and the end would be a step or
  two each, and a 3-step run at micro-batch 1 compared two single examples' losses and was called diverged. Such a run
  is told so, with the count and the length that would be enough, and no diverged or underfit advice; the verdicts
  read from evaluations of the whole eval split (overfit, a held-out reward) are still given. grpo's rewards alike. The
thresholds are judgement, checked on the runs recorded in README: every run that answered >= 80% of its held-out
questions ended below 0.1 nats a token; a top-layers run that ended at 0.56 answered 11%, and the run that learned
nothing at lr 2e-4 ended at 1.3.
"""

from __future__ import annotations

import math

from tunelab.training.verdict_curve import (
    MIN_EVALS,
    MIN_JUDGED,
    Verdict,
    landmarks,
    no_longer,
    pass_share,
    stopped_early_note,
    too_short,
    unseen_percent,
)

HIGH_LOSS = 0.5  # nats per token: "still high" after two passes or more
FALLING_RELATIVE = 0.2  # the last quarter's fall that counts as "still learning"
FALLING_ABSOLUTE = 0.1
EVAL_FALLING_RELATIVE = 0.10  # the fall between the last two evaluations that counts as "still learning"
EVAL_FALLING_ABSOLUTE = 0.02
DIVERGED_RELATIVE = 0.10  # the train loss rise, start to end, that counts as diverging
DIVERGED_ABSOLUTE = 0.1
RISE_RELATIVE = 0.10  # the eval loss rise that counts as overfitting
RISE_ABSOLUTE = 0.05
# The scale of a task's loss, for the numbers the verdict quotes (sft: nats a token; a head: a row; dpo and reward: a
# pair; dpo's loss kto: `kto_unit`); grpo is judged on its rewards.
LOSS_UNITS = {"classify": "nats an example", "reward": "nats a pair", "dpo": "nats a pair"}
PAIR_TASKS = ("dpo", "reward")


def kto_unit(weight: float) -> str:
    """The scale of kto's loss, said where the verdict quotes it: not nats, a weight times a probability."""
    return f"a row (kto's scale: 0 to the row's weight, {weight / 2:.3g} before training)"


def high_loss(
    task: str = "sft", labels: int | None = None, orpo_lambda: float | None = None, kto_weight: float | None = None
) -> float:
    """The train loss that counts as "still high", on the scale of the task's loss. sft: HIGH_LOSS nats a token (the
    runs above). The others start near the loss of a guess, not near the model's own text loss, so they are judged
    against half of that guess's loss:
    - dpo and reward: -log sigmoid(margin) per pair is ln 2 = 0.693 where chosen and rejected are not told apart (the
      margin both start from); still high at ln 2 / 2 = 0.347, where the average pair's chosen answer is preferred
      with a probability below about 0.71. sft's 0.5 was nearly ln 2 itself: a dpo run that learned little passed.
    - classify: cross-entropy per example is ln K for a uniform guess over K labels; still high at ln K / 2 (2
      labels: 0.347, 10 labels: 1.15), where the right label gets about 1/sqrt(K) of the probability.
    - dpo with loss orpo (orpo_lambda: its dpo.beta): the chosen answer's NLL per token plus lambda times the pair
      term, so sft's HIGH_LOSS plus lambda x ln 2 / 2 (0.535 at the default 0.1): ln 2 / 2 alone was below the NLL
      of text the model already writes well, and called every orpo run underfit.
    - dpo with loss kto (kto_weight: the training rows' mean weight, dpo.desirable_weight or dpo.undesirable_weight by
      label): a row's loss is its weight x (1 - sigmoid(beta (r - z0))) (sign flipped for an undesirable row), between
      0 and the weight, and weight / 2 before training (r = z0 = 0); still high at kto_weight / 4, half of where it
      starts, as the pair losses' ln 2 / 2 is half of theirs: the average row is on its label's side with a
      probability below about 0.75. ln 2 / 2 was on another scale: 0.347 is 69% of kto's 0.5 start at the default
      weights, so a kto run that had learned little passed, and with weights of 0.5 one that learned nothing (0.25)."""
    if task == "dpo" and kto_weight is not None:
        return kto_weight / 4
    if task == "dpo" and orpo_lambda is not None:
        return HIGH_LOSS + orpo_lambda * math.log(2) / 2
    if task in PAIR_TASKS:
        return math.log(2) / 2
    if task == "classify" and labels and labels >= 2:
        return math.log(labels) / 2
    return HIGH_LOSS


REWARD_MOVE = 0.02  # a change of the mean reward that counts as moving (most rewards are on 0..1)
REWARD_FALL = 0.05  # the fall of the held-out reward from its highest that counts as overfitting


def judge(
    train: list[tuple[int, float]],
    evals: list[tuple[int, float]],
    *,
    steps_per_epoch: int,
    epochs: float,
    lr: float,
    max_steps: int | None = None,
    best_kept: int | None = None,
    keep_best_off: str = "",
    unit: str = "nats a token",
    high_at: float = HIGH_LOSS,
    early: dict | None = None,
) -> Verdict:
    """train: (step, loss) per logged step; evals: (step, eval loss). epochs: the passes over the data the run made.
    max_steps: set when it, not epochs, fixed the length (the advice then names it). best_kept: the step whose
    weights keep_best saved as the result; keep_best_off: why keep_best chose none though it was asked (said in
    its place). unit: the loss's scale and what it is averaged over (`LOSS_UNITS`). high_at: the train
    loss that is still high (`high_loss`). early: run.json's extra.early_stop of a run that early stopping ended
    (`stopped_early_note`): its advice is then not to train longer."""
    verdict = _judge(
        train,
        evals,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        lr=lr,
        max_steps=max_steps,
        best_kept=best_kept,
        keep_best_off=keep_best_off,
        unit=unit,
        high_at=high_at,
        early=early,
    )
    return stopped_early_note(verdict, early)


def _judge(
    train: list[tuple[int, float]],
    evals: list[tuple[int, float]],
    *,
    steps_per_epoch: int,
    epochs: float,
    lr: float,
    max_steps: int | None,
    best_kept: int | None,
    keep_best_off: str,
    unit: str,
    high_at: float,
    early: dict | None,
) -> Verdict:
    if not train:
        return Verdict("fine", "no train loss was logged: nothing to judge.")
    start, before, end = landmarks([loss for _, loss in train])
    numbers: dict = {"train_start": round(start, 4), "train_end": round(end, 4), "train_at_75pct": round(before, 4)}
    curve = f"train loss {start:.3f} -> {end:.3f}"
    if lr == 0:  # allowed (a stage that only carries weights on), but nothing trained: no advice to double it
        return Verdict("underfit", f"train.lr was 0, so the weights did not change ({curve}); give a rate above 0.")
    short = len(train) < MIN_JUDGED
    if not short and end >= start * (1 + DIVERGED_RELATIVE) and end - start >= DIVERGED_ABSOLUTE:
        return Verdict(
            "diverged",
            f"diverged: the train loss rose instead of falling: {train[0][1]:.3f} at step {train[0][0]}, {end:.3f} "
            f"{unit} at the end (the first tenth of the steps averaged {start:.3f}): the updates were too large "
            f"for this model. Set train.lr: {lr / 10:.2g} "
            f"(it was {lr:.2g}), and keep train.max_grad_norm above 0 so gradients are clipped.",
            numbers,
        )
    if len(evals) >= MIN_EVALS:
        best_step, best = min(evals, key=lambda e: e[1])
        last_step, last = evals[-1]
        numbers |= {"eval_best": round(best, 4), "eval_best_step": best_step, "eval_last": round(last, 4)}
        if best_step < last_step and last >= best * (1 + RISE_RELATIVE) and last - best >= RISE_ABSOLUTE:
            best_epoch = best_step / steps_per_epoch
            kept = (
                f" train.keep_best saved the weights of step {best_kept} as the result."
                if best_kept == best_step
                else f" {keep_best_off}"
                if keep_best_off
                else " Set train.keep_best: true to save the weights of the lowest eval loss instead of the last."
            )
            shorter = (
                f"train.max_steps: {best_step} (it was {max_steps})"
                if max_steps
                else f"train.epochs: {max(1, math.ceil(best_epoch))} (it was {epochs:g})"
            )
            advice = (  # early stopping already cut the run where the rise began: no length to shorten
                "For a lower eval loss, add more varied examples."
                if early
                else f"Next time set {shorter}, or add more varied examples."
            )
            return Verdict(
                "overfit",
                f"overfit: the eval loss rose from {best:.3f} at step {best_step} (epoch {best_epoch:.1f}) to "
                f"{last:.3f} at step {last_step} (+{100 * (last / best - 1):.0f}%) while the {curve}.{kept} {advice}",
                numbers,
            )
    if short:
        return too_short(
            train,
            "train loss",
            steps_per_epoch=steps_per_epoch,
            epochs=epochs,
            max_steps=max_steps,
            numbers=numbers,
            early=early,
        )
    # Before the curve's own signs: a run max_steps cut short of one pass is told the length of one (doubling a few
    # steps of a long pass would still leave most rows unseen), also while its loss is still falling.
    if max_steps and epochs < 1 and end >= high_at and not early:
        return Verdict(
            "underfit",
            f"underfit: train.max_steps ({max_steps}) stopped the run after {pass_share(epochs)} of one pass over the "
            f"training rows ({steps_per_epoch} steps a pass), so about {unseen_percent(epochs)}% of them were never trained on, "
            f"and the train loss is still high: {start:.3f} -> {end:.3f} {unit}. Set train.max_steps: "
            f"{steps_per_epoch} for one full pass, or remove it so that train.epochs sets the length.",
            numbers,
        )
    high = epochs >= 2 and end >= high_at
    falling = before - end >= FALLING_RELATIVE * before and before - end >= FALLING_ABSOLUTE
    eval_falling = False
    if len(evals) >= MIN_EVALS and not early:  # early stopping: the eval loss stopped improving by min_delta
        (prev_step, prev), (last_step, last) = evals[-2], evals[-1]
        drop = prev - last
        eval_falling = last <= min(loss for _, loss in evals) and (
            drop >= EVAL_FALLING_RELATIVE * prev and drop >= EVAL_FALLING_ABSOLUTE
        )
    if high or falling or eval_falling:
        if high:
            why = (
                f"the train loss is still high after {epochs:.3g} passes: {start:.3f} -> {end:.3f} {unit} "
                f"(high: {high_at:.3f} or more)"
            )
        elif falling:
            why = f"the train loss was still falling when training stopped: {before:.3f} -> {end:.3f} over the last quarter"
        else:
            why = (
                f"the eval loss was still falling when training stopped: {prev:.3f} at step {prev_step} -> "
                f"{last:.3f} at step {last_step} (the {curve})"
            )
        if early:
            return Verdict("underfit", _underfit_stopped(why, high, early, lr), numbers)
        longer = (
            f"train.max_steps: {2 * max_steps} (it was {max_steps})"
            if max_steps
            else f"train.epochs: {2 * epochs:g} (it was {epochs:g})"
        )
        return Verdict(
            "underfit",
            f"underfit: {why}. Train longer or faster: set {longer} or train.lr: {2 * lr:.2g} (it was {lr:.2g}).",
            numbers,
        )
    if len(evals) >= MIN_EVALS:
        evals_text = f"; eval loss lowest at step {numbers['eval_best_step']} ({numbers['eval_best']:.3f}), {numbers['eval_last']:.3f} at the end"
    elif evals:
        evals_text = f"; eval loss {evals[-1][1]:.3f} (too few evaluations to see a trend)"
    else:
        evals_text = "; no eval split, so overfitting was not checked (set data.eval_fraction: 0.1 to check it)"
    return Verdict("fine", f"fine: {curve}{evals_text}.", numbers)


def _underfit_stopped(why: str, high: bool, early: dict, lr: float) -> str:
    """The underfit verdict of a run that early stopping ended: training longer would not help its eval loss, so
    the advice is the rate (`high`: the train loss still high) or the data (a loss still falling while the eval loss
    was not)."""
    if high:
        fix = (
            f"The model has not learned the training text and the held-out text stopped improving with it: a "
            f"higher rate may learn more before the eval loss settles, set train.lr: {2 * lr:.2g} (it was "
            f"{lr:.2g}); or check that the eval split is like the training data."
        )
    else:
        fix = (
            "The model kept fitting the training rows without doing better on held-out ones: more steps would fit "
            "them closer still. Give it more, and more varied, training examples."
        )
    return f"underfit: {why}, but {no_longer(early)}. {fix}"


def judge_metrics(
    records: list[dict],
    steps_per_epoch: int,
    epochs: float,
    lr: float,
    max_steps: int | None = None,
    best_kept: int | None = None,
    task: str = "sft",
    keep_best_off: str = "",
    labels: int | None = None,
    orpo_lambda: float | None = None,
    early: dict | None = None,
    kto_weight: float | None = None,
) -> Verdict:
    """`judge` over the records of metrics.jsonl (`judge_rewards` when they hold rewards); steps the non-finite guard
    skipped (loss null) are left out. labels: a classify run's number of labels; orpo_lambda: a dpo run's dpo.beta
    where its loss is orpo, kto_weight: a kto run's training rows' mean weight (`high_loss`); early: run.json's extra.early_stop of a run that early stopping ended."""
    rewards = [(r["step"], r["reward"]) for r in records if isinstance(r.get("reward"), int | float)]
    if rewards:
        held_out = [(r["step"], r["eval_reward"]) for r in records if isinstance(r.get("eval_reward"), int | float)]
        return judge_rewards(
            rewards,
            held_out,
            epochs=epochs,
            max_steps=max_steps,
            best_kept=best_kept,
            keep_best_off=keep_best_off,
            steps_per_epoch=steps_per_epoch,
            early=early,
        )
    train = [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), int | float)]
    evals = [(r["step"], r["eval_loss"]) for r in records if isinstance(r.get("eval_loss"), int | float)]
    return judge(
        train,
        evals,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        lr=lr,
        max_steps=max_steps,
        best_kept=best_kept,
        keep_best_off=keep_best_off,
        unit=kto_unit(kto_weight) if task == "dpo" and kto_weight is not None else LOSS_UNITS.get(task, "nats a token"),
        high_at=high_loss(task, labels, orpo_lambda, kto_weight),
        early=early,
    )


UNTRAINED_KEPT = (
    " train.keep_best kept the untrained adapter (step 0, evaluated before training) as the result: training did not "
    "improve the held-out reward."
)


def judge_rewards(
    train: list[tuple[int, float]],
    evals: list[tuple[int, float]],
    *,
    epochs: float,
    max_steps: int | None = None,
    best_kept: int | None = None,
    keep_best_off: str = "",
    steps_per_epoch: int = 0,
    early: dict | None = None,
) -> Verdict:
    """The verdict of a run that maximises a reward: train: (step, mean reward of its sampled answers); evals: (step,
    mean reward of the greedy answers to the held-out prompts). steps_per_epoch: the steps of one pass over the prompts,
    named to a run too short to judge. A result that keep_best took from step 0, before training, is said to be the
    untrained adapter whatever the verdict."""
    verdict = _judge_rewards(
        train,
        evals,
        epochs=epochs,
        max_steps=max_steps,
        best_kept=best_kept,
        keep_best_off=keep_best_off,
        steps_per_epoch=steps_per_epoch,
        early=early,
    )
    if best_kept == 0 and UNTRAINED_KEPT not in verdict.text:
        verdict.text += UNTRAINED_KEPT
    return stopped_early_note(verdict, early)


def _judge_rewards(
    train: list[tuple[int, float]],
    evals: list[tuple[int, float]],
    *,
    epochs: float,
    max_steps: int | None,
    best_kept: int | None,
    keep_best_off: str,
    steps_per_epoch: int,
    early: dict | None,
) -> Verdict:
    start, before, end = landmarks([r for _, r in train])
    numbers: dict = {"reward_start": round(start, 4), "reward_end": round(end, 4), "reward_at_75pct": round(before, 4)}
    curve = f"train reward {start:.3f} -> {end:.3f}"
    length = "train.max_steps" if max_steps else "train.epochs"
    was = max_steps if max_steps else epochs
    before_training = evals[0][1] if evals and evals[0][0] == 0 else None  # the task evaluated the model at step 0
    if before_training is not None:
        numbers["eval_reward_before"] = round(before_training, 4)
    if len(evals) >= MIN_EVALS or (before_training is not None and len(evals) >= 2):
        best_step, best = max(evals, key=lambda e: e[1])
        last_step, last = evals[-1]
        numbers |= {
            "eval_reward_best": round(best, 4),
            "eval_reward_best_step": best_step,
            "eval_reward_last": round(last, 4),
        }
        if best_step < last_step and best - last >= REWARD_FALL:
            kept = (
                (
                    UNTRAINED_KEPT
                    if best_kept == 0
                    else f" train.keep_best saved the weights of step {best_kept} as the result."
                )
                if best_kept == best_step
                else f" {keep_best_off}"
                if keep_best_off
                else " Set train.keep_best: true to save the weights of the best held-out reward instead of the last."
            )
            if best_step == 0:
                return Verdict(
                    "overfit",
                    f"overfit: the held-out reward ended below the model's own before training, {best:.3f} -> "
                    f"{last:.3f} at step {last_step}, while the {curve}: "
                    + (
                        "the policy learned to score on its training prompts, not on new ones."
                        if end - start >= REWARD_MOVE
                        else "training made the policy worse on its own prompts too."
                    )
                    + f"{kept} Next time lower train.lr, keep the policy nearer the base (a "
                    f"larger grpo.beta), or train for fewer steps ({length}, it was {was:g}); evaluate more often "
                    "(train.eval_every) to see when the fall began.",
                    numbers,
                )
            shorter = (
                "Next time keep" if early else f"Next time train for fewer steps ({length}, it was {was:g}) or keep"
            )
            return Verdict(
                "overfit",
                f"overfit: the held-out reward fell from {best:.3f} at step {best_step} to {last:.3f} at step "
                f"{last_step} while the {curve}.{kept} {shorter} the policy nearer the base (a larger grpo.beta).",
                numbers,
            )
    if len(train) < MIN_JUDGED:
        return too_short(
            train,
            "train reward",
            steps_per_epoch=steps_per_epoch,
            epochs=epochs,
            max_steps=max_steps,
            numbers=numbers,
            early=early,
        )
    flat = abs(end - start) < REWARD_MOVE
    rising = end - before >= REWARD_MOVE
    eval_rising = False
    if len(evals) >= MIN_EVALS and not early:  # early stopping: the held-out reward stopped improving
        (prev_step, prev), (last_step, last) = evals[-2], evals[-1]
        eval_rising = last >= max(r for _, r in evals) and last - prev >= REWARD_MOVE
    if flat:
        return Verdict(
            "underfit",
            f"underfit: the reward did not move ({curve}). If most groups scored all alike (zero_std_groups "
            "in metrics.jsonl), no answer was better than its siblings: make the reward tell answers apart, raise "
            "grpo.temperature or grpo.num_generations, or train.lr.",
            numbers,
        )
    if rising or eval_rising:
        why = (
            f"the train reward was still rising when training stopped: {before:.3f} -> {end:.3f} over the last quarter"
            if rising
            else f"the held-out reward was still rising: {prev:.3f} at step {prev_step} -> {last:.3f} at step {last_step}"
        )
        if early:
            return Verdict(
                "underfit",
                f"underfit: {why}, but {no_longer(early, 'held-out reward')}. The policy learned to score on its "
                "training prompts, not on new ones: give it more, and more varied, prompts, or keep it nearer the "
                "base (a larger grpo.beta).",
                numbers,
            )
        return Verdict(
            "underfit", f"underfit: {why}. Train longer: set {length}: {2 * was:g} (it was {was:g}).", numbers
        )
    if len(evals) >= MIN_EVALS:
        evals_text = (
            f"; held-out reward highest at step {numbers['eval_reward_best_step']} ({numbers['eval_reward_best']:.3f}), "
            f"{numbers['eval_reward_last']:.3f} at the end"
        )
    elif before_training is not None and len(evals) >= 2:
        evals_text = f"; held-out reward {before_training:.3f} before training, {evals[-1][1]:.3f} at the end"
    elif evals:
        evals_text = f"; held-out reward {evals[-1][1]:.3f} (too few evaluations to see a trend)"
    else:
        evals_text = "; no held-out prompts, so a falling held-out reward was not checked"
    return Verdict("fine", f"fine: {curve}{evals_text}.", numbers)
