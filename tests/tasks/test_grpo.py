"""Task grpo: the group advantages, the clipped loss and the k3 KL against hand computations, a seeded rollout drawn
twice, reward failures stopped or skipped, a CLI run on a tiny model, resume, and bad input. The rewards themselves:
test_grpo_rewards.py."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import tunelab.training.recipe as recipe
from tunelab.cli import main
from tunelab.config import MethodConfig, ModelConfig, load_config
from tunelab.errors import DataError
from tunelab.models.load import load_tokenizer, resolve_source
from tunelab.tasks import get_task
from tunelab.tasks.grpo import RewardError, group_advantages, tied_groups, token_losses
from tunelab.tasks.log_probs import token_log_probs
from tunelab.training.build import build_model

from .grpo_setup import grpo_overrides, grpo_task, write_rows


@pytest.fixture
def prompt_file(tmp_path):
    rows = [{"prompt": f"What is {i} plus {i + 1}?", "expected": str(2 * i + 1)} for i in range(12)]
    return write_rows(tmp_path / "prompts.jsonl", rows)


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 2.0, 2.0, 2.0])
    got = group_advantages(r, 3)
    mean, std = 1 / 3, math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)  # Bessel: divide by G - 1
    want = [(1 - mean) / (std + 1e-4), -mean / (std + 1e-4), -mean / (std + 1e-4), 0.0, 0.0, 0.0]
    assert got.tolist() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("reward, group", [(0.3, 6), (0.1, 7), (123.456, 5)])
def test_a_group_whose_answers_all_score_the_same_has_advantage_zero(reward, group):
    """The float mean of equal rewards can miss them by a rounding, which over a std of the same rounding plus 1e-4
    gave every answer of the group one same-signed advantage; a tied group teaches nothing and is counted as such."""
    r = torch.tensor([reward] * group + [0.0] + [1.0] * (group - 1))
    got = group_advantages(r, group)
    assert got[:group].tolist() == [0.0] * group and torch.isfinite(got).all()
    assert got[group:].abs().min() > 0.1
    assert tied_groups(r, group).tolist() == [True, False]


def test_token_loss_and_k3_kl_by_hand():
    logp = torch.tensor([-1.0, -2.0, -0.5, -3.0], requires_grad=True)
    old = torch.tensor([-1.0, -2.5, -0.2, -3.0])
    ref = torch.tensor([-1.5, -2.0, -0.4, -2.0])
    adv = torch.tensor([1.0, 1.0, -2.0, 0.5])
    loss, kl = token_losses(logp, old, ref, adv, eps=0.2, beta=0.1)
    want_kl, want = [], []
    for lp, o, r, a in zip(logp.tolist(), old.tolist(), ref.tolist(), adv.tolist()):
        ratio = math.exp(lp - o)
        surr = -min(ratio * a, min(max(ratio, 0.8), 1.2) * a)
        k3 = math.exp(r - lp) - (r - lp) - 1
        want_kl.append(k3)
        want.append(surr + 0.1 * k3)
    assert kl.tolist() == pytest.approx(want_kl, rel=1e-6)
    assert loss.tolist() == pytest.approx(want, rel=1e-6)
    assert all(k >= 0 for k in kl.tolist()) and kl[1].item() == 0.0  # ref == logp: no divergence

    # token 1: ratio exp(0.5) = 1.65 > 1.2 with A > 0: clipped, so only the KL term (zero slope there) has gradient
    # token 0: ratio 1: d/dlogp = -A + beta * (1 - exp(ref - logp))
    loss.sum().backward()
    assert logp.grad[0].item() == pytest.approx(-1.0 + 0.1 * (1 - math.exp(-0.5)), rel=1e-6)
    assert logp.grad[1].item() == pytest.approx(0.0, abs=1e-7)


def test_at_ratio_one_the_surrogate_gradient_is_the_policy_gradient():
    logp = torch.tensor([-1.0, -2.0, -0.7], requires_grad=True)
    adv = torch.tensor([0.5, -1.5, 2.0])
    loss, _ = token_losses(logp, logp.detach(), None, adv, eps=0.2, beta=0.0)
    assert loss.tolist() == pytest.approx((-adv).tolist())  # ratio = 1 in value
    loss.sum().backward()
    assert torch.allclose(logp.grad, -adv)


# ---------------------------------------------------------------- rewards
# ---------------------------------------------------------------- rollout


def test_rollout_is_seeded_by_the_step(tiny_model_dir, tmp_path, prompt_file, reward_module):
    task, data, built, tok = grpo_task(tiny_model_dir, tmp_path, prompt_file, reward_module)
    group = task.make_batches(data.train, 4, tok.pad_token_id, shuffle=True, seed=0, epoch=0)[:1]
    a, b, c = (task.rollout(built.model, group, step, 4) for step in (5, 5, 6))
    assert len(a) == 2 and [x["input_ids"].shape[0] for x in a] == [4, 2]  # 2 prompts x 3 answers, micro-batch 4
    for x, y in zip(a, b):
        assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["advantages"], y["advantages"])
    assert not all(
        torch.equal(x["input_ids"], y["input_ids"])
        for x, y in zip(a, c)
        if x["input_ids"].shape == y["input_ids"].shape
    )
    first = a[0]
    n = int((first["labels"][:, 1:] != -100).sum())
    assert "old" not in first and first["ref"].shape == (n,)  # no dropout: old is the training forward's own
    task, data, built, tok = grpo_task(tiny_model_dir, tmp_path, prompt_file, reward_module, **{"method.dropout": 0.1})
    (first, _) = task.rollout(built.model, group, 5, 4)
    assert first["old"].shape == first["ref"].shape == (n,)
    assert torch.allclose(first["old"], first["ref"], atol=1e-5)  # an untrained adapter: the policy is the base
    assert {"reward", "reward_letters", "reward_contains", "zero_std_groups", "answer_tokens"} <= set(
        first["step_figures"]
    )
    adv = torch.cat([x["advantages"] for x in a]).view(2, 3)
    assert torch.allclose(adv.sum(1), torch.zeros(2, device=adv.device), atol=1e-4)  # centred within each group


def test_reward_failures_stop_or_skip(tiny_model_dir, tmp_path, prompt_file, reward_module, capsys):
    broken = [{"kind": "function", "function": f"{reward_module}:broken"}]
    task, data, built, tok = grpo_task(tiny_model_dir, tmp_path, prompt_file, reward_module, **{"grpo.rewards": broken})
    group = task.make_batches(data.train, 4, tok.pad_token_id, shuffle=False, seed=0, epoch=0)[:1]
    with pytest.raises(RewardError, match=r"prompts\.jsonl:1: reward broken raised ValueError: no score for 1"):
        task.rollout(built.model, group, 0, 4)
    task, data, built, tok = grpo_task(
        tiny_model_dir, tmp_path, prompt_file, reward_module, **{"grpo.rewards": broken, "grpo.on_reward_error": "skip"}
    )
    # both groups skipped: the step had nothing to train on, and the loop crashed on it (IndexError); now it stops
    with pytest.raises(
        DataError, match=r"the reward failed in every group of step 1 \(2 prompts; the first: .*prompts"
    ):
        task.rollout(built.model, group, 0, 4)
    # the eval leaves a failed answer out of its mean, and says and counts it (it was dropped silently)
    some = [{"kind": "function", "function": f"{reward_module}:first_fails"}]
    task, data, built, tok = grpo_task(
        tiny_model_dir, tmp_path, prompt_file, reward_module, **{"grpo.rewards": some, "grpo.on_reward_error": "skip"}
    )
    rows = sorted(data.train, key=lambda r: r.line)[:3]  # the first row's expected text is "1"
    figures = task.evaluate(built.model, [{"rows": rows}])
    assert figures["eval_reward_errors"] == 1.0 and figures["eval_reward"] == 1.0
    assert "grpo eval: left out" in capsys.readouterr().out
    # when every answer's reward fails the eval was an empty {}, said by nothing but the lines above
    figures = task.evaluate(built.model, [{"rows": rows[:1]}])
    assert figures == {"eval_reward_errors": 1.0}
    assert "the reward failed for every one of the 1 eval answers" in capsys.readouterr().out


# ---------------------------------------------------------------- the CLI


def test_cli_run_logs_rewards_and_saves_a_peft_adapter(tiny_model_dir, tmp_path, prompt_file, reward_module):
    rewards = json.dumps([{"kind": "function", "function": f"{reward_module}:letters"}, "contains"])
    args = ["train", "--task", "grpo", "--model.name", str(tiny_model_dir), "--data.train", prompt_file]
    args += ["--data.eval_fraction", "0.25", "--data.max_length", "64", "--method.r", "4", "--train.max_steps", "3"]
    args += ["--grpo.num_generations", "3", "--grpo.prompts_per_step", "2", "--grpo.max_new_tokens", "6"]
    args += ["--grpo.rewards", rewards, "--train.micro_batch", "4", "--output_dir", str(tmp_path / "run")]
    assert main(args) == 0
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert len(steps) == 3 and all(math.isfinite(r["loss"]) for r in steps)
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the first step's policy is the base
    assert {"reward", "reward_std", "reward_letters", "reward_contains", "zero_std_groups", "answer_tokens"} <= set(
        steps[0]
    )
    assert any(s["kl"] > 0 for s in steps[1:])  # the policy moved
    assert {"eval_loss", "eval_reward", "eval_reward_letters"} <= set(records[-1])
    assert records[-1]["eval_loss"] == -records[-1]["eval_reward"]
    # the model before training is evaluated too, as step 0, for the verdict to compare with
    assert records[0]["step"] == 0 and "eval_reward" in records[0] and records[1]["step"] == 1
    verdict = json.loads((run / "run.json").read_text())["extra"]["verdict"]
    assert verdict["numbers"]["eval_reward_before"] == round(records[0]["eval_reward"], 4)
    config = json.loads((run / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and "lora_A" in next(iter(load_file(run / "adapter_model.safetensors")))
    assert json.loads((run / "run.json").read_text())["task"] == "grpo"
    assert main(["report", str(run)]) == 0
    assert "Rewards" in (run / "report.html").read_text()


def test_resume_equals_uninterrupted(tiny_model_dir, tmp_path, straight_and_resumed, prompt_file, reward_module):
    common = grpo_overrides(tiny_model_dir, tmp_path, prompt_file, reward_module, **{"train.max_steps": 4})
    common |= {"train.save_every": 2, "data.eval_fraction": 0.25, "train.eval_every": 2, "method.dropout": 0.1}
    straight, resumed = straight_and_resumed(common, 3)  # dies in step 3, after the checkpoint of step 2
    a, b = (load_file(r.run_dir / "adapter_model.safetensors") for r in (straight, resumed))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    timing = ("tokens_per_s", "elapsed_s", "gen_tokens_per_s")
    records = [
        [
            {k: v for k, v in json.loads(line).items() if k not in timing}
            for line in (r.run_dir / "metrics.jsonl").open()
        ]
        for r in (straight, resumed)
    ]
    assert records[0] == records[1] and any("eval_reward" in r for r in records[0])
    assert len({r["reward"] for r in records[0] if "reward" in r}) > 1  # the steps drew different answers


def test_bad_input_exits_2_with_file_and_line(tiny_model_dir, tmp_path, prompt_file, reward_module, capsys):
    base = ["train", "--task", "grpo", "--model.name", str(tiny_model_dir), "--output_dir", str(tmp_path / "r")]
    bad = write_rows(
        tmp_path / "bad.jsonl", [{"prompt": "a", "expected": "1"}, {"question_text": "b", "expected": "2"}]
    )
    assert main([*base, "--data.train", bad]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and "no prompt" in err and "Traceback" not in err

    long = write_rows(tmp_path / "long.jsonl", [{"prompt": "word " * 200, "expected": "1"}])
    assert main([*base, "--data.train", long, "--data.max_length", "32"]) == 2
    err = capsys.readouterr().err
    assert "long.jsonl:1" in err and "max_length" in err

    no_key = write_rows(tmp_path / "nokey.jsonl", [{"prompt": "a"}])
    assert main([*base, "--data.train", no_key]) == 2
    assert "nokey.jsonl:1" in (err := capsys.readouterr().err) and "expected" in err

    assert main([*base, "--data.train", prompt_file, "--grpo.rewards", "bleu"]) == 2
    assert "contains, equals, regex, length, function, model" in capsys.readouterr().err

    assert main([*base, "--data.train", prompt_file, "--train.grad_accum", "2"]) == 2
    assert "grad_accum" in capsys.readouterr().err

    failing = json.dumps([{"kind": "function", "function": f"{reward_module}:text"}])
    args = [*base, "--data.train", prompt_file, "--grpo.rewards", failing, "--train.max_steps", "1"]
    assert main([*args, "--grpo.max_new_tokens", "2", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "prompts.jsonl:" in err and "reward text returned 'high'" in err and "on_reward_error" in err


def test_full_fine_tuning_reference_is_the_starting_weights(tiny_model_dir, tmp_path, prompt_file, reward_module):
    task, data, built, tok = grpo_task(tiny_model_dir, tmp_path, prompt_file, reward_module, **{"method.name": "full"})
    with torch.no_grad():  # the policy moves away from where it started
        for p in built.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    moved = {n: p.clone() for n, p in built.model.named_parameters()}
    group = task.make_batches(data.train, 4, tok.pad_token_id, shuffle=False, seed=0, epoch=0)[:1]
    batch = task.rollout(built.model, group, 0, 8)[0]
    base = build_model(resolve_source(str(tiny_model_dir)), ModelConfig(), MethodConfig(name="full")).model.eval()
    with torch.no_grad():
        live = token_log_probs(base, batch)[0]
        policy = token_log_probs(built.model.eval(), batch)[0]
    assert torch.allclose(batch["ref"], live, atol=1e-5)
    assert not torch.allclose(policy, live, atol=1e-2)
    assert all(torch.equal(p, moved[n]) for n, p in built.model.named_parameters())  # put back after the reference


def test_a_continued_adapter_is_the_reference_as_it_starts(tiny_model_dir, tmp_path, prompt_file, reward_module):
    """model.adapter (an SFT run; a grpo stage after an sft stage, continue: adapter): the KL term pulled towards the
    base with that adapter off, not towards the model the run starts from."""
    cfg = load_config(None, grpo_overrides(tiny_model_dir, tmp_path, prompt_file, reward_module)).config
    cfg.model.adapter = "runs/sft"  # what prepare reads: the adapter below is the one the run starts from
    source = resolve_source(str(tiny_model_dir))
    tok = load_tokenizer(source)
    task = get_task("grpo", cfg)
    data = task.build_data(cfg, tok, 0)
    built = build_model(source, cfg.model, cfg.method)
    with torch.no_grad():  # the continued adapter: away from zero
        for p in built.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    start = {n: p.clone() for n, p in built.model.named_parameters() if p.requires_grad}
    task.prepare(built, data, cfg)
    with torch.no_grad():  # then the policy moves on
        for p in built.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    group = task.make_batches(data.train, 4, tok.pad_token_id, shuffle=False, seed=0, epoch=0)[:1]
    batch = task.rollout(built.model, group, 0, 8)[0]
    moved = {n: p.data for n, p in built.model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for n, p in built.model.named_parameters():
            if n in start:
                p.data = start[n]
        starting = token_log_probs(built.model.eval(), batch)[0]
        for n, p in built.model.named_parameters():
            if n in moved:
                p.data = moved[n]
    assert torch.allclose(batch["ref"], starting, atol=1e-5)


def _plain_log_probs(model, batch, temperature):
    """(n,) log softmax(logits / temperature) of the answer tokens, from the model's whole (B, T, V) logits."""
    out = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
    )
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    logp = torch.log_softmax(getattr(out, "logits", out)[:, :-1][keep].float() / temperature, dim=-1)
    return logp.gather(1, targets[keep][:, None])[:, 0]


@pytest.mark.parametrize("impl", ["fast", "generic"])
@pytest.mark.parametrize("temperature", [0.5, 1.0])
def test_log_probs_are_those_of_the_sampling_temperature(
    tiny_model_dir, tmp_path, prompt_file, reward_module, temperature, impl
):
    """Answers drawn from softmax(logits / grpo.temperature): the reference's log p and the loss's (ratio and KL) are
    of that distribution, as TRL computes them; at temperature 1 the loss and its gradients are bit for bit those of
    the plain log-probs."""
    task, data, built, tok = grpo_task(
        tiny_model_dir, tmp_path, prompt_file, reward_module, **{"grpo.temperature": temperature, "model.impl": impl}
    )
    model = built.model
    group = task.make_batches(data.train, 4, tok.pad_token_id, shuffle=False, seed=0, epoch=0)[:1]
    batch = task.rollout(model, group, 0, 8)[0]
    with torch.no_grad():  # an untrained adapter: the policy is the reference
        assert torch.allclose(batch["ref"], _plain_log_probs(model, batch, temperature), atol=1e-5)
        for p in model.parameters():  # then the policy moves away from it: the KL term is not 0
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    trained = [p for p in model.parameters() if p.requires_grad]
    loss = task.loss(model, batch)[0]
    got = torch.autograd.grad(loss, trained)
    cfg = load_config(None, grpo_overrides(tiny_model_dir, tmp_path, prompt_file, reward_module)).config.grpo
    logp, rows = token_log_probs(model, batch)  # the plain (temperature 1) log-probs, as before
    if temperature != 1:
        logp = _plain_log_probs(model, batch, temperature)
    per_token, kl = token_losses(logp, logp.detach(), batch["ref"], batch["advantages"][rows], cfg.epsilon, cfg.beta)
    want = torch.autograd.grad(per_token.sum(), trained)
    assert kl.sum() > 1e-4
    if temperature == 1:
        assert torch.equal(loss, per_token.sum()) and all(torch.equal(a, b) for a, b in zip(got, want))
    else:
        assert torch.allclose(loss, per_token.sum(), rtol=1e-4)
        # want reads the model's logits rounded to its dtype; the fast path's fused head keeps them in fp32: in bf16
        # (a GPU) the two differ by that rounding, while a missing temperature would differ by about the whole norm
        worst = max(((a - b).norm() / b.norm()).item() for a, b in zip(got, want))
        base = next(p for p in model.parameters() if not p.requires_grad).dtype
        assert worst < (1e-4 if base == torch.float32 else 2e-2), worst


def test_top_p_shapes_the_sampling_only_and_is_said_so(tiny_model_dir, tmp_path, prompt_file, reward_module):
    """With grpo.top_p < 1 the answers come from the top-p set, while every log p of the loss is of the whole
    softmax(logits / temperature), as TRL scores them; the option's help and the README said nothing of it."""
    import dataclasses

    from tunelab.config import GrpoConfig

    task, data, built, tok = grpo_task(
        tiny_model_dir, tmp_path, prompt_file, reward_module, **{"grpo.top_p": 0.3, "grpo.temperature": 0.5}
    )
    model = built.model
    group = task.make_batches(data.train, 4, tok.pad_token_id, shuffle=False, seed=0, epoch=0)[:1]
    batch = task.rollout(model, group, 0, 8)[0]
    with torch.no_grad():
        full = _plain_log_probs(model, batch, 0.5)
        assert torch.allclose(batch["ref"], full, atol=1e-5)  # an untrained adapter: the reference is the policy
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
        )
        targets = batch["labels"][:, 1:]
        keep = targets != -100
        probs = torch.softmax(getattr(out, "logits", out)[:, :-1][keep].float() / 0.5, dim=-1)  # (n, V)
        drawn = probs.gather(1, targets[keep][:, None])  # (n, 1)
        above = (probs * (probs > drawn)).sum(dim=1)  # the mass of the tokens more likely than the drawn one
    assert (above < 0.3 + 1e-4).all()  # each drawn token is in the top-p set: the sampling was truncated
    assert (full.exp() < 0.3).any()  # yet scored under the whole distribution: not renormalised to the set
    top_p = next(f for f in dataclasses.fields(GrpoConfig) if f.name == "top_p")
    assert "shapes the sampling only" in top_p.metadata["help"] and "as TRL does" in top_p.metadata["help"]


def test_plan_sizes_the_samplers_kv_cache_from_the_longest_prompt(tiny_model_dir, tmp_path, prompt_file, reward_module):
    """tunelab plan (and train's planner, through the same plan_for_config) size grpo's KV cache from the data's
    longest prompt, grpo.max_new_tokens and the answers sampled at once; with many long answers it is the peak."""
    from tunelab.api import plan

    big = {"grpo.num_generations": 64, "grpo.prompts_per_step": 12, "grpo.max_new_tokens": 512}
    overrides = grpo_overrides(tiny_model_dir, tmp_path, prompt_file, reward_module, **big)
    report = plan(None, overrides, gpu_memory="4GiB")
    cfg = recipe.resolve(None, overrides).config
    inputs = recipe.load_inputs(cfg, get_task("grpo", cfg))
    longest = max(len(r.prompt_ids) for r in inputs.data.train)
    assert report.memory.chosen.estimate.peak_phase == "sampling"
    assert f"grpo sampler: KV cache of 768 answers x {longest + 512} tokens" in report.text()


def test_a_dora_rollout_computes_each_weight_norm_once(
    tiny_model_dir, tmp_path, prompt_file, reward_module, monkeypatch
):
    """The sampler recomputed every DoRA layer's weight norm at each of its decode steps; now once per layer for the
    whole sampling, and none in the reference's forward (the base: adapters off)."""
    from tunelab.peft.dora import DoRALinear

    task, data, built, tok = grpo_task(tiny_model_dir, tmp_path, prompt_file, reward_module, **{"method.name": "dora"})
    layers = [m for m in built.model.modules() if isinstance(m, DoRALinear)]
    calls = []
    original = DoRALinear.weight_norm
    monkeypatch.setattr(DoRALinear, "weight_norm", lambda self, w=None: calls.append(self) or original(self, w))
    group = task.make_batches(data.train, 4, tok.pad_token_id, shuffle=True, seed=0, epoch=0)[:1]
    batches = task.rollout(built.model, group, 0, 4)
    assert "ref" in batches[0]
    assert layers and sorted(map(id, calls)) == sorted(map(id, layers))
    # with dropout the old policy's forward runs the adapters over 2 micro-batches: each norm once more, not twice
    task, data, built, tok = grpo_task(
        tiny_model_dir, tmp_path, prompt_file, reward_module, **{"method.name": "dora", "method.dropout": 0.1}
    )
    layers = [m for m in built.model.modules() if isinstance(m, DoRALinear)]
    calls.clear()
    batches = task.rollout(built.model, group, 0, 4)
    assert len(batches) == 2 and "old" in batches[0] and "old" in batches[1]
    assert sorted(map(id, calls)) == sorted(map(id, layers * 2))


def test_early_stopping_reads_the_held_out_reward(tiny_model_dir, tmp_path, prompt_file, reward_module, capsys):
    """The evaluation before training (step 0) sets the first best; min_delta 100 makes step 1's no new best, so
    patience 1 stops the run after step 1 of 4, and the run speaks of the reward, not of a negative loss."""
    common = grpo_overrides(tiny_model_dir, tmp_path, prompt_file, reward_module, **{"train.max_steps": 4})
    common |= {"data.eval_fraction": 0.25, "train.eval_every": 1, "train.early_stopping_patience": 1}
    result = recipe.train(None, common | {"train.early_stopping_min_delta": 100.0})
    assert result.steps == 1 and result.early_stop["best_step"] == 0 and result.early_stop["waited"] == [1]
    out = capsys.readouterr().out
    assert "early stopping: stopped after step 1 of the 4 planned: the held-out reward has not improved" in out
    assert f"(held-out reward {-result.early_stop['best_eval_loss']:.4f})" in out
