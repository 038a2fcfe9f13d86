"""The verdict on synthetic loss curves: diverged (train loss rising), underfit (high, or still falling), overfit (eval
loss rising), fine."""

import math

from tunelab.training.verdict import judge, judge_metrics


def _curve(values):
    return list(enumerate(values, start=1))


def _decay(start, end, n, rate=5.0):
    """start -> end, flattening exponentially: most of the fall in the first part."""
    return [end + (start - end) * math.exp(-rate * i / n) for i in range(n)]


def _judge(train, evals=(), **kw):
    return judge(
        _curve(train) if train and not isinstance(train[0], tuple) else train,
        list(evals),
        steps_per_epoch=kw.get("spe", 20),
        epochs=kw.get("epochs", 3.0),
        lr=kw.get("lr", 2e-4),
        max_steps=kw.get("max_steps"),
        best_kept=kw.get("best_kept"),
    )


def test_high_loss_is_underfit_with_the_numbers_and_the_options():
    # The failing run: 33 steps at lr 2e-4, loss 2.5 -> 1.3.
    v = _judge(_decay(2.5, 1.25, 33, rate=2.0))
    assert v.kind == "underfit"
    assert "still high" in v.text
    assert f"after 3 passes: {v.numbers['train_start']:.3f} -> {v.numbers['train_end']:.3f} nats a token" in v.text
    assert "train.epochs: 6" in v.text and "train.lr: 0.0004" in v.text
    assert v.numbers["train_end"] > 1.0
    # A top-layers run of lamp_support ended near 0.56 and answered 11% of its held-out questions.
    assert _judge(_decay(3.2, 0.55, 180)).kind == "underfit"
    assert _judge(_decay(3.2, 0.55, 180), epochs=1.0).kind == "fine"


def test_still_falling_at_the_end_is_underfit_even_when_low():
    # A straight line down to 0.3: under the "still high" bar, but the last quarter still drops ~0.4 nats.
    line = [2.0 - 1.7 * i / 99 for i in range(100)]
    v = _judge(line)
    assert v.kind == "underfit" and "still falling" in v.text and v.numbers["train_end"] < 0.5
    assert "train.max_steps: 200 (it was 100)" in _judge(line, max_steps=100).text


def test_a_converged_curve_is_fine_and_says_overfitting_was_not_checked():
    v = _judge(_decay(2.5, 0.05, 120))
    assert v.kind == "fine"
    assert "train loss 2." in v.text and "-> 0.0" in v.text and "data.eval_fraction" in v.text


def test_a_short_run_compares_its_first_steps_with_its_last():
    """Windows of 3 steps on a 2- to 5-step run shared steps: a 2-step run from 2.0 to 1.0 read '1.500 -> 1.500'."""
    verdict = _judge([2.0, 1.8, 0.4, 0.2], epochs=1)
    assert (verdict.numbers["train_start"], verdict.numbers["train_end"]) == (1.9, 0.3)
    assert _judge([2.0, 1.0], epochs=1).numbers["train_end"] == 1.0


def test_a_run_too_short_for_the_windows_is_not_judged_diverged_nor_underfit():
    """3 steps at micro-batch 1 (a CSV sft run, a classify run) compared two single examples' losses and were called
    diverged, with the advice to cut the rate tenfold. Under 6 logged steps (two windows of 3) the run is said to be
    too short, with the count and the length that would do; from 6 steps the verdicts are as before."""
    noisy = [1.2, 0.4, 2.9]  # one example a step: the third is a hard one
    v = _judge(noisy, spe=100, epochs=0.03, max_steps=3)
    assert v.kind == "too_short" and "diverged" not in v.text and "train.lr" not in v.text
    assert v.text.startswith("too short to judge: 3 train loss values logged (1.200 at step 1, 2.900 at step 3)")
    assert "needs 6 or more" in v.text and "train.max_steps: 100 for one full pass" in v.text
    assert "about 97% of them were never trained on" in v.text
    assert "train.max_steps: 6 or more" in _judge(noisy, spe=2, epochs=1.5, max_steps=3).text
    assert "6 steps or more" in _judge(noisy, spe=1, epochs=3).text  # epochs set the length: no max_steps to name
    assert "The run made 10 steps: set train.log_every: 1" in _judge([(5, 1.2), (10, 2.9)], spe=10, epochs=1).text
    assert _judge([2.0, 1.0], epochs=1).kind == "too_short"  # falling: not "underfit" either
    assert _judge([2.0] * 5, epochs=3).kind == "too_short"  # high after 3 passes of tiny data: 5 values still
    # an overfit is read from evaluations of the whole eval split, not from single steps: still said
    assert _judge(noisy, [(1, 1.0), (2, 0.6), (3, 1.2)]).kind == "overfit"
    # 6 steps: judged
    assert _judge([1.2, 0.4, 1.0, 2.9, 3.0, 3.1]).kind == "diverged"
    assert judge_metrics(_grpo_records([0.4, 0.41, 0.39]), 20, 3.0, 1e-5).kind == "too_short"  # rewards alike


def test_one_pass_over_a_large_set_may_end_above_one_nat():
    # 1.8 -> 1.2, flat at the end: after one pass that is how predictable the text is; after three, it is unlearned.
    curve = _decay(1.8, 1.2, 400)
    assert _judge(curve, epochs=1.0).kind == "fine"
    assert _judge(curve, epochs=3.0).kind == "underfit"


def test_a_few_steps_of_a_long_pass_still_falling_are_told_the_length_of_one_pass():
    """A smoke run of train.max_steps 2 over a 46-step pass, its loss falling 2.756 -> 1.585, was told 'still falling
    over the last quarter' (its two steps) and to set max_steps 4: 91% of the rows would still be unseen."""
    v = _judge([2.756, 1.585], spe=46, epochs=2 / 46, max_steps=2)
    assert v.kind == "too_short" and "still falling" not in v.text
    assert "train.max_steps: 46 for one full pass" in v.text and "96% of them were never trained on" in v.text
    longer = _judge(_decay(2.756, 1.585, 8), spe=46, epochs=8 / 46, max_steps=8)
    assert longer.kind == "underfit" and "train.max_steps: 46 for one full pass" in longer.text


def test_a_tiny_share_of_a_pass_is_said_as_it_is_not_as_none():
    """2 steps of a 449-step pass were said as 'after 0.00 of one pass', 'about 100% of them never trained on'."""
    v = _judge([0.705, 0.670], spe=449, epochs=2 / 449, max_steps=2)
    assert "after 0.004 of one pass" in v.text and "about 99.6% of them were never trained on" in v.text


def test_a_run_max_steps_stopped_before_one_pass_with_a_high_loss_is_not_fine():
    """A run that train.max_steps stopped at 30 of a pass's 100 steps, its loss still 1.2, was called 'fine': 70% of
    its rows were never trained on. It says so, with the numbers and the max_steps of one full pass."""
    curve = _decay(2.5, 1.2, 30)
    v = _judge(curve, spe=100, epochs=0.3, max_steps=30)
    assert v.kind == "underfit" and "fine" not in v.text
    assert (
        "train.max_steps (30) stopped the run after 0.30 of one pass over the training rows (100 steps a pass)"
        in v.text
    )
    assert "about 70% of them were never trained on" in v.text and "train.max_steps: 100 for one full pass" in v.text
    assert _judge(curve, spe=100, epochs=0.3).kind == "fine"  # without max_steps: one pass of a 30-step epoch
    assert _judge(_decay(2.5, 0.05, 30), spe=100, epochs=0.3, max_steps=30).kind == "fine"  # learnt: its loss is low


def test_rising_eval_loss_is_overfit_with_the_step_to_stop_at():
    train = _decay(2.5, 0.02, 100)
    evals = [(20, 0.9), (40, 0.6), (60, 0.7), (80, 0.8), (100, 0.85)]
    v = _judge(train, evals, spe=20, epochs=5.0)
    assert v.kind == "overfit"
    assert "from 0.600 at step 40 (epoch 2.0) to 0.850 at step 100 (+42%)" in v.text
    assert "train.epochs: 2 (it was 5)" in v.text and "Set train.keep_best: true" in v.text
    kept = _judge(train, evals, spe=20, epochs=5.0, best_kept=40)
    assert kept.kind == "overfit" and "keep_best saved the weights of step 40" in kept.text
    assert kept.numbers["eval_best_step"] == 40


def test_small_eval_wobbles_are_not_overfitting():
    train = _decay(2.5, 0.05, 100)
    # +5% at the end: under the 10% threshold.
    v = _judge(train, [(25, 0.80), (50, 0.60), (75, 0.58), (100, 0.609)])
    assert v.kind == "fine" and "eval loss lowest at step 75" in v.text
    # +20% but only 0.02 nats: under the absolute threshold.
    assert _judge(train, [(25, 0.3), (50, 0.1), (75, 0.11), (100, 0.12)]).kind == "fine"
    # Two evaluations are too few to call a trend.
    assert _judge(train, [(50, 0.5), (100, 0.9)]).kind == "fine"


def test_overfit_takes_precedence_over_underfit():
    v = _judge(_decay(2.5, 1.4, 60), [(20, 1.5), (40, 1.3), (60, 1.7)], spe=20)
    assert v.kind == "overfit"


def test_judge_metrics_reads_metrics_records():
    records = [{"step": i, "loss": loss, "lr": 1e-3} for i, loss in _curve(_decay(2.5, 0.05, 60))]
    records += [{"step": 20, "eval_loss": 0.5}, {"step": 40, "eval_loss": 0.3}, {"step": 60, "eval_loss": 0.29}]
    v = judge_metrics(records, steps_per_epoch=20, epochs=3.0, lr=1e-3)
    assert v.kind == "fine" and v.numbers["eval_best_step"] == 60
    assert judge_metrics([], 20, 3.0, 1e-3).kind == "fine"


def test_eval_loss_still_falling_at_the_end_is_underfit():
    # Train loss low (the phrasings are memorised) but held-out text still getting likelier: more training helps.
    train = _decay(2.2, 0.1, 72)
    evals = [(8, 1.2), (16, 0.8), (24, 0.65), (32, 0.55), (40, 0.47), (48, 0.41), (56, 0.36), (64, 0.31), (72, 0.277)]
    v = _judge(train, evals)
    assert v.kind == "underfit"
    assert "eval loss was still falling when training stopped: 0.310 at step 64 -> 0.277 at step 72" in v.text
    flat = evals[:-2] + [(64, 0.35), (72, 0.345)]
    assert _judge(train, flat).kind == "fine"


def _grpo_records(rewards, held_out=()):
    """metrics.jsonl of a grpo run: a surrogate loss near zero whatever happens, and the rewards."""
    records = [{"step": i, "loss": 0.001 * (-1) ** i, "reward": r, "zero_std_groups": 0.2} for i, r in _curve(rewards)]
    return records + [{"step": s, "eval_reward": r, "eval_loss": -r} for s, r in held_out]


def test_a_grpo_run_is_judged_on_its_rewards_not_its_loss():
    rising_then_flat = [0.2 + 0.5 * (1 - math.exp(-6 * i / 60)) for i in range(60)]
    v = judge_metrics(_grpo_records(rising_then_flat, [(20, 0.5), (40, 0.62), (60, 0.63)]), 20, 3.0, 1e-5)
    assert v.kind == "fine" and v.text.startswith("fine: train reward 0.305 -> 0.698")  # tenth-of-the-run means
    assert v.numbers["eval_reward_best_step"] == 60
    assert "loss" not in v.text


def test_a_reward_that_never_moves_is_underfit_and_names_the_groups_that_scored_alike():
    v = judge_metrics(_grpo_records([0.4, 0.41, 0.39] * 20), 20, 3.0, 1e-5)
    assert v.kind == "underfit" and "did not move" in v.text and "zero_std_groups" in v.text


def test_a_reward_still_rising_at_the_end_is_underfit_with_twice_the_length():
    v = judge_metrics(_grpo_records([0.1 + 0.01 * i for i in range(60)]), 20, 3.0, 1e-5, max_steps=60)
    assert v.kind == "underfit" and "still rising" in v.text and "train.max_steps: 120 (it was 60)" in v.text


def test_a_falling_held_out_reward_is_overfit_and_names_keep_best():
    flat = [0.6] * 60
    v = judge_metrics(_grpo_records(flat, [(20, 0.5), (40, 0.7), (60, 0.6)]), 20, 3.0, 1e-5, best_kept=40)
    assert v.kind == "overfit" and "fell from 0.700 at step 40 to 0.600" in v.text
    assert "keep_best saved the weights of step 40" in v.text
    learnt = [0.2 + 0.5 * (1 - math.exp(-6 * i / 60)) for i in range(60)]
    small = judge_metrics(_grpo_records(learnt, [(20, 0.5), (40, 0.62), (60, 0.6)]), 20, 3.0, 1e-5)
    assert small.kind == "fine"  # a fall under REWARD_FALL is noise


def test_a_held_out_reward_below_the_models_own_before_training_is_overfit_with_two_evaluations():
    """grpo evaluates at step 0 too: a run whose train reward rose while its held-out reward ended below where it
    began (examples/arithmetic_grpo at seed 42: 0.404 -> 0.016) was called fine, with one evaluation to go on."""
    learnt = [0.2 + 0.5 * (1 - math.exp(-6 * i / 24)) for i in range(24)]
    v = judge_metrics(_grpo_records(learnt, [(0, 0.404), (24, 0.016)]), 100, 0.24, 2e-3, max_steps=24)
    assert v.kind == "overfit" and "below the model's own before training, 0.404 -> 0.016 at step 24" in v.text
    assert "lower train.lr" in v.text and "train.max_steps, it was 24" in v.text
    assert v.numbers["eval_reward_before"] == 0.404
    better = judge_metrics(_grpo_records(learnt, [(0, 0.404), (24, 0.75)]), 100, 0.24, 2e-3, max_steps=24)
    assert better.kind == "fine" and "held-out reward 0.404 before training, 0.750 at the end" in better.text
    assert "learned to score on its training prompts, not on new ones" in v.text
    falling = [0.5 - 0.4 * i / 24 for i in range(24)]
    worse = judge_metrics(_grpo_records(falling, [(0, 0.404), (24, 0.11)]), 100, 0.24, 2e-3, max_steps=24)
    assert worse.kind == "overfit" and "training made the policy worse on its own prompts too" in worse.text
    one = judge_metrics(_grpo_records(learnt, [(24, 0.016)]), 100, 0.24, 2e-3, max_steps=24)
    assert one.kind == "fine" and "too few evaluations" in one.text  # no step 0: nothing to compare with


def test_a_train_loss_that_rises_is_diverged_not_fine_nor_overfit():
    """A run at lr 1e4 without clipping climbed from 2.0 to 10.8 (ln of the vocabulary: a uniform guess) and was
    called fine; with an eval split, its rising eval loss would have been called overfitting."""
    climb = [2.0, 2.1, 6.0, 9.5] + [10.8] * 16
    v = _judge(climb, lr=1e4)
    assert v.kind == "diverged"
    assert v.text.startswith(
        "diverged: the train loss rose instead of falling: 2.000 at step 1, 10.800 nats a token at the end (the first "
        "tenth of the steps averaged 3.367)"
    )
    assert "train.lr: 1e+03 (it was 1e+04)" in v.text and "train.max_grad_norm" in v.text
    assert _judge(climb, [(5, 2.0), (10, 9.0), (20, 10.8)], lr=1e4).kind == "diverged"
    # noise around a flat loss is not divergence: +5%, or +0.08 nats
    assert _judge([2.0] * 10 + [2.1] * 10).kind != "diverged"
    assert _judge([0.5] * 10 + [0.58] * 10, epochs=1.0).kind != "diverged"


def test_a_run_at_lr_0_is_told_so_not_to_use_lr_0():
    """The verdict said 'set train.epochs: 6 (it was 3) or train.lr: 0 (it was 0)'."""
    from tunelab.training.verdict import judge

    v = judge([(i, 2.0) for i in range(1, 31)], [], steps_per_epoch=10, epochs=3, lr=0.0)
    assert v.kind == "underfit" and "train.lr was 0, so the weights did not change" in v.text and "lr: 0 " not in v.text


def test_the_loss_is_quoted_per_unit_of_the_task():
    """A classify, reward or dpo run's verdict said 'nats a token' of a loss averaged over examples or pairs."""
    records = [{"step": i + 1, "loss": loss} for i, loss in enumerate(_decay(2.5, 1.25, 33, rate=2.0))]
    said = {task: judge_metrics(records, 20, 3.0, 2e-4, task=task).text for task in ("sft", "classify", "dpo")}
    assert "nats a token" in said["sft"]
    assert "nats an example" in said["classify"] and "a token" not in said["classify"]
    assert "nats a pair" in said["dpo"] and "a token" not in said["dpo"]


def test_the_high_loss_fits_the_scale_of_the_tasks_loss():
    """The 0.5 'still high' of sft's token loss judged every task: a dpo run whose pair loss barely left ln 2 = 0.693
    (0.45: the chosen answer preferred with a probability of 0.64) was fine, and a 10-label classify run at 0.6 (better than a guess by
    far) was called underfit."""
    import math

    def records(end):
        return [{"step": i + 1, "loss": loss} for i, loss in enumerate([math.log(2)] * 3 + [end] * 57)]

    assert judge_metrics(records(0.45), 20, 3.0, 1e-5, task="dpo").kind == "underfit"
    assert judge_metrics(records(0.45), 20, 3.0, 1e-5, task="reward").kind == "underfit"
    assert judge_metrics(records(0.2), 20, 3.0, 1e-5, task="dpo").kind == "fine"
    assert "high: 0.347 or more" in judge_metrics(records(0.45), 20, 3.0, 1e-5, task="dpo").text
    head = [{"step": i + 1, "loss": loss} for i, loss in enumerate([math.log(10)] * 3 + [0.6] * 57)]
    assert judge_metrics(head, 20, 3.0, 1e-5, task="classify", labels=10).kind == "fine"
    assert judge_metrics(head, 20, 3.0, 1e-5, task="classify", labels=2).kind == "underfit"
    assert judge_metrics(head, 20, 3.0, 1e-5, task="sft").kind == "underfit"


def test_a_grpo_result_kept_from_step_0_is_called_the_untrained_adapter():
    """keep_best kept the step-0 weights (the held-out reward never beat the model's own before training) and the
    verdict said only 'saved the weights of step 0', or nothing when it was not overfit."""
    learnt = [0.2 + 0.5 * (1 - math.exp(-6 * i / 24)) for i in range(24)]
    fell = judge_metrics(_grpo_records(learnt, [(0, 0.404), (24, 0.016)]), 100, 0.24, 2e-3, 24, best_kept=0)
    assert fell.kind == "overfit" and "keep_best kept the untrained adapter (step 0" in fell.text
    assert "training did not improve the held-out reward" in fell.text and "weights of step 0" not in fell.text
    slight = judge_metrics(_grpo_records(learnt, [(0, 0.41), (12, 0.40), (24, 0.40)]), 100, 0.24, 2e-3, 24, best_kept=0)
    assert slight.kind != "overfit" and slight.text.endswith("training did not improve the held-out reward.")
    trained = judge_metrics(_grpo_records(learnt, [(0, 0.404), (24, 0.6)]), 100, 0.24, 2e-3, 24, best_kept=24)
    assert "untrained" not in trained.text


def test_a_pass_shorter_than_a_verdict_is_not_told_a_longer_one_is_a_pass():
    """train.max_steps 2 over 20 grpo prompts at 4 a step: '(5 steps a pass) ... Set train.max_steps: 6 for one full
    pass', a pass of 5 steps called 6. A pass under the 6 logged steps a verdict needs is told as both figures."""
    v = _judge([0.4, 0.3], spe=5, epochs=2 / 5, max_steps=2)
    assert "(5 steps a pass)" in v.text and "train.max_steps: 6 for one full pass" not in v.text, v.text
    assert "Set train.max_steps: 5 for one full pass, 6 or more for a verdict." in v.text, v.text


def _early(step=40, planned=100, best_step=20, best=1.2, waited=(30, 40), patience=2):
    """run.json's extra.early_stop of a run that early stopping ended."""
    record = {"step": step, "planned_steps": planned, "patience": patience, "min_delta": 0.0}
    return record | {"best_step": best_step, "best_eval_loss": best, "waited": list(waited)}


def test_an_early_stopped_run_still_high_is_told_the_rate_not_to_train_longer():
    curve, evals = _decay(2.5, 1.25, 40, rate=2.0), [(10, 1.5), (20, 1.2), (30, 1.25), (40, 1.21)]
    plain = judge(_curve(curve), evals, steps_per_epoch=10, epochs=4.0, lr=2e-4, max_steps=100)
    assert "train.max_steps: 200 (it was 100)" in plain.text  # the advice a run that was not stopped gets
    v = judge(_curve(curve), evals, steps_per_epoch=10, epochs=4.0, lr=2e-4, max_steps=100, early=_early())
    assert v.kind == "underfit" and "still high after 4 passes" in v.text
    assert "early stopping ended the run after step 40 of the 100 planned" in v.text
    assert "had not improved on step 20's (1.200) for 2 evaluations in a row" in v.text
    assert "more steps would not lower it" in v.text and "train.lr: 0.0004 (it was 0.0002)" in v.text
    assert "max_steps" not in v.text and "Train longer" not in v.text and "train.epochs" not in v.text


def test_an_early_stopped_run_still_falling_is_told_to_add_data():
    line = [2.0 - 1.7 * i / 39 for i in range(40)]
    v = judge(
        _curve(line), [(20, 1.0), (30, 1.01), (40, 1.02)], steps_per_epoch=40, epochs=1.0, lr=2e-4, early=_early()
    )
    assert v.kind == "underfit" and "still falling" in v.text and "more steps would not lower it" in v.text
    assert "more varied, training examples" in v.text and "train.epochs" not in v.text


def test_an_early_stopped_run_is_not_told_a_shorter_or_longer_planned_length():
    noisy = [1.0, 0.8, 0.9, 0.85, 0.9, 0.8]
    overfit = _judge(noisy, [(1, 1.0), (2, 0.6), (3, 1.2)], max_steps=100)
    assert "train.max_steps: 2 (it was 100)" in overfit.text
    early = _early(step=3, best_step=2, best=0.6, waited=(3,), patience=1)
    v = judge(_curve(noisy), [(1, 1.0), (2, 0.6), (3, 1.2)], steps_per_epoch=20, epochs=0.15, lr=2e-4,
              max_steps=100, early=early)  # fmt: skip
    assert v.kind == "overfit" and "max_steps" not in v.text
    assert "add more varied examples. The run stopped early after step 3 of the 100 planned" in v.text
    short = judge(_curve([2.0, 1.0]), [], steps_per_epoch=20, epochs=0.1, lr=2e-4, max_steps=100, early=early)
    assert short.kind == "too_short" and "max_steps" not in short.text and "never trained on" not in short.text
    assert "a larger train.early_stopping_patience (it was 1)" in short.text
    fine = judge(_curve(_decay(2.5, 0.05, 120)), [], steps_per_epoch=20, epochs=6, lr=2e-4, early=early)
    assert fine.kind == "fine" and fine.text.endswith(
        " The run stopped early after step 3 of the 100 planned: 1 evaluations in a row without a new best "
        "(train.early_stopping_patience 1)."
    )


def test_an_early_stopped_grpo_run_still_rising_is_not_told_to_train_longer():
    rising = [0.1 + 0.5 * i / 29 for i in range(30)]
    held_out = [(0, 0.3), (10, 0.5), (20, 0.48), (30, 0.49)]
    plain = judge_metrics(_grpo_records(rising, held_out), 10, 3.0, 1e-5, max_steps=30)
    assert "Train longer: set train.max_steps: 60" in plain.text
    early = _early(step=30, planned=60, best_step=10, best=-0.5, waited=(20, 30))
    v = judge_metrics(_grpo_records(rising, held_out), 10, 3.0, 1e-5, max_steps=30, early=early)
    assert v.kind == "underfit" and "Train longer" not in v.text
    assert "held-out reward had not improved on step 10's (0.500)" in v.text and "would not raise it" in v.text
