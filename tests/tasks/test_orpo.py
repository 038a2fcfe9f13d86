"""Task dpo with loss orpo: the loss against hand computations (and float64 near log p = 0), the same loss on the fast
and the generic path, a CLI run on examples/concise_dpo with no reference pass whose loss falls, the verdict's
threshold, tunelab check's first step, a dpo stage with loss orpo, and the options it refuses (resume: test_dpo.py's
test_resume_equals_uninterrupted)."""

import json
import math
from pathlib import Path

import pytest
import torch

from tunelab.api import train
from tunelab.cli import main
from tunelab.config import DpoConfig, MethodConfig, ModelConfig, load_config
from tunelab.config.load import stage_config
from tunelab.models.load import load_tokenizer, resolve_source
from tunelab.tasks import dpo
from tunelab.tasks.dpo import collate, log1mexp, pair_scores, scores
from tunelab.tasks.preference_data import build_preferences
from tunelab.training.build import build_model
from tunelab.training.verdict import high_loss, judge_metrics

from ..smollm2_vocab import smollm2_tiny_model_dir, smollm2_tiny_tokenizer  # noqa: F401 (SmolLM2's vocabulary)

PAIRS = Path(__file__).parents[2] / "examples" / "concise_dpo" / "pairs.jsonl"

# Fixed summed log p of two pairs and their answer lengths, the chosen rows first.
POLICY = torch.tensor([-10.0, -22.0, -14.0, -20.0])
LENGTHS = torch.tensor([5, 8, 4, 10])


def _log_odds(m):
    """log(p / (1 - p)) of p = exp(m), in float64 by the plain formula."""
    p = math.exp(m)
    return math.log(p / (1 - p))


def test_orpo_loss_by_hand_reads_no_reference():
    s = pair_scores(POLICY, None, LENGTHS, DpoConfig(loss="orpo", beta=0.25))
    # mean log p: chosen -2, -2.75; rejected -3.5, -2
    for k, (mc, mr) in enumerate([(-2.0, -3.5), (-2.75, -2.0)]):
        ratio = _log_odds(mc) - _log_odds(mr)
        want = -mc + 0.25 * math.log1p(math.exp(-ratio))  # NLL + lambda * -log sigmoid(ratio)
        assert s.loss[k].item() == pytest.approx(want, rel=1e-6)
        assert s.log_odds[k].item() == pytest.approx(ratio, rel=1e-6)
        assert s.nll[k].item() == pytest.approx(-mc)
    assert s.chosen_reward.tolist() == pytest.approx([0.25 * -2.0, 0.25 * -2.75])  # beta * mean log p, as TRL
    assert s.rejected_reward.tolist() == pytest.approx([0.25 * -3.5, 0.25 * -2.0])
    sums = dpo.metric_sums(s)
    assert sums["nll"].item() == pytest.approx(4.75) and sums["accuracy"].item() == 1.0


@pytest.mark.parametrize("m", [-1e-6, -3e-4, -0.05, -0.6931, -0.6932, -2.0, -30.0, -200.0])
def test_log1mexp_is_exact_near_zero_and_far_below(m):
    """The plain log1p(-exp(m)) loses digits near 0 in float32 (exp(-1e-6) rounds to a float 6e-8 apart from its
    neighbours, so 1 - exp(-1e-6) comes out 1.3% off); log(-expm1(m)) there, log1p(-exp(m)) below -ln 2, each keep
    float32's relative precision."""
    want = math.log(-math.expm1(m)) if m > -0.7 else math.log1p(-math.exp(m))
    x = torch.tensor([m], requires_grad=True)
    got = log1mexp(x)
    assert got.item() == pytest.approx(want, rel=2e-6, abs=1e-30)
    got.sum().backward()
    # d/dm log(1 - exp(m)) = -exp(m) / (1 - exp(m)) = 1 / (1 - exp(-m)) = -1 / expm1(-m)
    assert x.grad.item() == pytest.approx(-1 / math.expm1(-m), rel=1e-5)
    if m == -1e-6:
        naive = torch.log1p(-torch.exp(torch.tensor(m))).item()
        assert abs(naive - want) > 1e-3  # 500 times the tolerance above: what the stable form fixes


def test_orpo_stays_finite_where_the_chosen_answer_is_certain():
    """A chosen answer whose mean log p is 0 in float32 (every token predicted with probability 1): log odds would be
    infinite; the loss and its gradient stay finite, and a certain chosen answer costs about nothing."""
    policy = torch.tensor([0.0, -1e-9, -6.0, -9.0], requires_grad=True)
    s = pair_scores(policy, None, torch.tensor([3, 3, 3, 3]), DpoConfig(loss="orpo"))
    s.loss.sum().backward()
    assert torch.isfinite(s.loss).all() and torch.isfinite(policy.grad).all()
    assert s.loss.max().item() < 1e-5


def test_orpo_gradient_matches_float64_autograd():
    policy = torch.tensor([-3.0, -40.0, -9.0, -41.0], requires_grad=True)
    lengths = torch.tensor([6, 20, 7, 19])
    pair_scores(policy, None, lengths, DpoConfig(loss="orpo", beta=0.3)).loss.sum().backward()
    ref = policy.detach().double().requires_grad_()
    m = ref / lengths.double()
    odds = m - torch.log(1 - torch.exp(m))
    (-m[:2] + 0.3 * torch.nn.functional.softplus(-(odds[:2] - odds[2:]))).sum().backward()
    assert torch.allclose(policy.grad.double(), ref.grad, rtol=1e-5, atol=1e-7)


def _pairs(tiny_model_dir, n=4):
    cfg = load_config(None, {"task": "dpo", "data.train": [str(PAIRS)], "data.max_length": 256}).config
    cfg.data.overlong = "truncate"
    data = build_preferences(cfg, load_tokenizer(resolve_source(str(tiny_model_dir))), 0)
    return data.train[:n], data.facts["pad_id"]


def test_orpo_scores_alike_on_the_fast_and_the_generic_path(tiny_model_dir):
    rows, pad = _pairs(tiny_model_dir)
    batch = collate(rows, pad)
    got = []
    for impl in ("fast", "generic"):
        built = build_model(resolve_source(str(tiny_model_dir)), ModelConfig(impl=impl, device="cpu"), MethodConfig())
        built.model.eval()
        s = scores(built.model, batch, DpoConfig(loss="orpo"))  # no reference in the batch, none asked for
        assert "reference" not in batch
        got.append(torch.stack([s.loss, s.log_odds, s.nll]).detach())
    assert torch.allclose(got[0], got[1], rtol=1e-4, atol=1e-5)


def _no_reference(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("loss orpo computed reference log-probs")

    monkeypatch.setattr(dpo, "cache_reference", refuse)


def test_cli_run_on_concise_pairs_learns_with_no_reference(tiny_model_dir, tmp_path, monkeypatch, capsys):
    _no_reference(monkeypatch)
    run = tmp_path / "run"
    args = ["train", "--task", "dpo", "--dpo.loss", "orpo", "--model.name", str(tiny_model_dir)]
    args += ["--data.train", str(PAIRS), "--data.max_length", "128", "--data.overlong", "truncate"]
    args += [
        "--data.eval_fraction",
        "0.1",
        "--method.name",
        "full",
        "--train.micro_batch",
        "2",
        "--train.max_steps",
        "14",
    ]
    args += ["--train.lr", "1e-2", "--train.log_every", "1", "--train.eval_every", "7", "--output_dir", str(run)]
    assert main(args) == 0
    assert "dpo: loss orpo needs no reference model" in capsys.readouterr().out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert {"margin", "accuracy", "chosen_logp", "rejected_logp", "log_odds", "nll"} <= set(steps[0])
    assert all(r["loss"] > r["nll"] for r in steps)  # the odds-ratio term is positive
    first, last = (sum(r["loss"] for r in part) / 4 for part in (steps[:4], steps[-4:]))
    assert last < first - 1.0, (first, last)  # nats a pair: its NLL falls from about ln(vocabulary)
    evals = [r for r in records if "eval_loss" in r]
    assert len(evals) == 2 and {"eval_log_odds", "eval_nll", "eval_margin"} <= set(evals[-1])
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    info = json.loads((run / "run.json").read_text())
    verdict = info["extra"]["verdict"]  # a third of a pass, the NLL still near ln(vocabulary): high on orpo's scale
    assert info["task"] == "dpo" and verdict["kind"] == "underfit" and "nats a pair" in verdict["text"]
    assert (run / "model.safetensors").exists()
    assert main(["report", str(run)]) == 0
    html = (run / "report.html").read_text()
    assert "ORPO: the chosen answer" in html and "ORPO: the log odds ratio" in html  # the plots of its two parts


@pytest.mark.parametrize("method, quantize", [("lora", "none"), ("dora", "none"), ("lora", "nf4")])
def test_lora_dora_and_qlora_runs_build_no_reference(tiny_model_dir, tmp_path, monkeypatch, method, quantize):
    _no_reference(monkeypatch)
    overrides = {
        "task": "dpo",
        "dpo.loss": "orpo",
        "model.name": str(tiny_model_dir),
        "method.name": method,
        "method.quantize_base": quantize,
        "data.train": [str(PAIRS)],
        "data.max_length": 256,
        "data.overlong": "truncate",
        "train.micro_batch": 2,
        "train.max_steps": 2,
        "train.lr": 1e-4,
        "output_dir": str(tmp_path / "run"),
    }
    train(None, overrides)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) and r["nll"] > 0 for r in records if "loss" in r)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (info["method"], info["quantize_base"]) == (method, quantize)


def test_the_verdict_judges_orpo_on_its_own_scale():
    """orpo's loss holds the chosen answer's NLL: 0.45 a pair is a well-learned run there, where the pair losses'
    ln 2 / 2 would call it underfit."""
    assert high_loss("dpo", orpo_lambda=0.1) == pytest.approx(0.5 + 0.1 * math.log(2) / 2)
    records = [{"step": s, "loss": 0.45 + 2.0 * 0.8**s} for s in range(1, 41)]  # settles at 0.45 a pair
    dpo_sigmoid = judge_metrics(records, 10, 4.0, 1e-4, task="dpo")
    orpo = judge_metrics(records, 10, 4.0, 1e-4, task="dpo", orpo_lambda=0.1)
    assert dpo_sigmoid.kind == "underfit" and orpo.kind == "fine", (dpo_sigmoid.text, orpo.text)


def test_a_dpo_stage_takes_loss_orpo():
    stages = [{"train": {"lr": 1e-3}}, {"task": "dpo", "dpo": {"loss": "orpo"}, "data": {"train": ["p.jsonl"]}}]
    resolved = load_config(None, {"stages": stages})
    sft, pref = (stage_config(resolved, k, f"runs/s{k}").config for k in (0, 1))
    assert (sft.dpo.loss, pref.task, pref.dpo.loss, pref.dpo.beta) == ("sigmoid", "dpo", "orpo", 0.1)


def test_options_orpo_does_not_read_are_refused(tiny_model_dir, tmp_path, capsys):
    base = ["train", "--task", "dpo", "--dpo.loss", "orpo", "--model.name", str(tiny_model_dir)]
    base += ["--data.train", str(PAIRS), "--output_dir", str(tmp_path / "r")]
    for option in ("--dpo.label_smoothing", "--dpo.simpo_gamma"):
        assert main([*base, option, "0.1"]) == 2
        err = capsys.readouterr().err
        assert f"option '{option[2:]}'" in err and "dpo.loss is orpo" in err


def test_check_takes_a_first_orpo_step_with_no_reference(tiny_model_dir, tmp_path, monkeypatch, capsys):
    _no_reference(monkeypatch)
    args = ["check", "--task", "dpo", "--dpo.loss", "orpo", "--model.name", str(tiny_model_dir)]
    args += ["--data.train", str(PAIRS), "--data.max_length", "256", "--data.overlong", "truncate"]
    args += ["--train.micro_batch", "2", "--output_dir", str(tmp_path / "run")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "dpo: loss orpo needs no reference model" in out
    assert "task dpo, loss orpo: SFT's rate / 4" in out  # train.lr auto, as train chooses it
    line = next(x for x in out.splitlines() if "forward/backward (dpo)" in x)
    assert line.lstrip().startswith("[PASS]") and "gradients finite" in line and "ln 2" not in line
    loss = float(line.split("loss ")[1].split(",")[0])
    assert 9 < loss < 12  # the chosen answer's NLL of a random model, about ln(vocabulary) = 10.8, and a little more


def test_train_lr_auto_gives_orpo_a_quarter_of_the_sft_rate_ten_times_dpos(tiny_model_dir, tmp_path):
    overrides = {"task": "dpo", "model.name": str(tiny_model_dir), "data.train": [str(PAIRS)], "train.lr": "auto"}
    overrides |= {"data.max_length": 128, "data.overlong": "truncate", "train.micro_batch": 2, "train.max_steps": 1}
    results = {loss: train(None, overrides | {"dpo.loss": loss, "output_dir": str(tmp_path / loss)}) for loss in ("orpo", "sigmoid")}  # fmt: skip
    chosen = {loss: result.auto["train.lr"] for loss, result in results.items()}
    assert chosen["orpo"]["reason"].startswith("task dpo, loss orpo: SFT's rate / 4, as ORPO's authors")
    assert chosen["sigmoid"]["reason"].startswith("task dpo: SFT's rate / 40")
    assert chosen["orpo"]["value"] == pytest.approx(10 * chosen["sigmoid"]["value"], rel=0.01)
    # run.json names the loss, and tunelab report's run table with it: an orpo run read as plain "dpo"
    from tunelab.eval.report_inputs import Input
    from tunelab.eval.report_run import run_summary

    for loss, named in (("orpo", "dpo (loss orpo, lambda 0.1)"), ("sigmoid", "dpo (loss sigmoid, beta 0.1)")):
        info = json.loads((results[loss].run_dir / "run.json").read_text())
        assert info["extra"]["dpo"] == {"loss": loss, "beta": 0.1} and named in run_summary(Input("run.json", info))
