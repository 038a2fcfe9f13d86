"""Task dpo: the three losses against hand computations on fixed log-probs, the per-token log-probs against
transformers' logits, the cached reference against a live reference forward, the data formats and their answer-only
labels, a CLI run, resume, and bad input."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tunelab.api import train
from tunelab.cli import main
from tunelab.config import DpoConfig, MethodConfig, ModelConfig, load_config
from tunelab.data.render import IGNORE
from tunelab.models.load import resolve_source
from tunelab.peft.lora import adapters_disabled, lora_modules
from tunelab.tasks import get_task
from tunelab.tasks.dpo import collate, pair_scores
from tunelab.tasks.log_probs import row_sums, sequence_log_probs
from tunelab.tasks.preference_data import build_preferences
from tunelab.training.build import build_model


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def pair_file(tmp_path):
    rows = [
        {
            "prompt": f"What is the code of box {i}?",
            "chosen": f"Box {i} has code {1000 + 37 * i}.",
            "rejected": "No idea.",
        }
        for i in range(12)
    ]
    return _write(tmp_path / "pairs.jsonl", rows)


def _overrides(model_dir, tmp_path, data, **extra):
    return {
        "task": "dpo",
        "model.name": str(model_dir),
        "data.train": [data],
        "data.max_length": 64,
        "method.r": 4,
        "train.micro_batch": 2,
        "train.grad_accum": 2,
        "train.lr": 1e-3,
        "train.max_steps": 3,
        "output_dir": str(tmp_path / "run"),
    } | extra


# Fixed log-probs of two pairs: policy and reference summed log p, and answer lengths, chosen rows first.
POLICY = torch.tensor([-10.0, -22.0, -14.0, -20.0])
REFERENCE = torch.tensor([-12.0, -21.0, -13.0, -23.0])
LENGTHS = torch.tensor([5, 8, 4, 10])


def _log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def test_sigmoid_loss_with_label_smoothing_by_hand():
    s = pair_scores(POLICY, REFERENCE, LENGTHS, DpoConfig(loss="sigmoid", beta=0.1, label_smoothing=0.2))
    # pair 0: ((-10 + 12) - (-14 + 13)) = 3 -> z = 0.3; pair 1: ((-22 + 21) - (-20 + 23)) = -4 -> z = -0.4
    for z, got in zip((0.3, -0.4), s.loss.tolist()):
        assert got == pytest.approx(-0.8 * _log_sigmoid(z) - 0.2 * _log_sigmoid(-z), rel=1e-6)
    assert s.chosen_reward.tolist() == pytest.approx([0.2, -0.1])
    assert s.rejected_reward.tolist() == pytest.approx([-0.1, 0.3])


def test_ipo_loss_by_hand():
    s = pair_scores(POLICY, REFERENCE, LENGTHS, DpoConfig(loss="ipo", beta=0.5))
    # per-token log ratios: chosen 2/5, -1/8; rejected -1/4, 3/10; target 1 / (2 * 0.5) = 1
    expected = [(2 / 5 + 1 / 4 - 1) ** 2, (-1 / 8 - 3 / 10 - 1) ** 2]
    assert s.loss.tolist() == pytest.approx(expected, rel=1e-6)


def test_simpo_loss_by_hand_needs_no_reference():
    s = pair_scores(POLICY, None, LENGTHS, DpoConfig(loss="simpo", beta=2.0, simpo_gamma=0.5))
    # z = 2 * (mean log p chosen - mean log p rejected) - 0.5
    expected = [-_log_sigmoid(2 * (-10 / 5 + 14 / 4) - 0.5), -_log_sigmoid(2 * (-22 / 8 + 20 / 10) - 0.5)]
    assert s.loss.tolist() == pytest.approx(expected, rel=1e-6)
    assert s.chosen_reward.tolist() == pytest.approx([2 * -10 / 5, 2 * -22 / 8])


def test_loss_gradient_flows_only_through_the_policy():
    policy = POLICY.clone().requires_grad_()
    pair_scores(policy, REFERENCE, LENGTHS, DpoConfig()).loss.sum().backward()
    # d/dpi_c of softplus(-z) = -beta * sigmoid(-z): chosen pushed up, rejected down
    z = torch.tensor([0.3, -0.4])
    want = torch.cat([-0.1 * torch.sigmoid(-z), 0.1 * torch.sigmoid(-z)])
    assert torch.allclose(policy.grad, want, atol=1e-7)


def _data(tiny_model_dir, data, **extra):
    from tunelab.models.load import load_tokenizer

    cfg = load_config(None, {"task": "dpo", "data.train": [data], "data.max_length": 64} | extra).config
    tokenizer = load_tokenizer(resolve_source(str(tiny_model_dir)))
    return cfg, tokenizer, build_preferences(cfg, tokenizer, 0)


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
)
def test_row_sums_are_the_rows_sums_and_repeat_bit_for_bit(device):
    torch.manual_seed(0)
    counts = torch.tensor([700, 0, 1, 512, 1023])
    rows = torch.repeat_interleave(torch.arange(5), counts).to(device)
    values = (torch.randn(rows.numel(), dtype=torch.float64) * 40).float().to(device).requires_grad_()
    sums, got_counts = row_sums(values, rows, torch.Size((5, 1024)))
    want = torch.stack([v.double().sum() for v in values.detach().cpu().split(counts.tolist())])
    assert torch.equal(got_counts.cpu(), counts)
    assert torch.allclose(sums.detach().cpu().double(), want, rtol=1e-6, atol=1e-3) and sums[1] == 0
    (sums * torch.arange(5.0, device=device)).sum().backward()
    assert torch.equal(values.grad, rows.float())  # each value's gradient is its row's weight
    # the same sums every time (CUDA's index_add, with atomics, changes its order of additions between calls)
    assert all(torch.equal(row_sums(values, rows, torch.Size((5, 1024)))[0], sums) for _ in range(20))


@pytest.mark.parametrize("impl", ["fast", "generic"])
def test_sequence_log_probs_match_transformers_logits(tiny_model_dir, pair_file, impl):
    from transformers import AutoModelForCausalLM

    cfg, tok, data = _data(tiny_model_dir, pair_file)
    batch = collate(data.train[:3], tok.pad_token_id)
    built = build_model(
        resolve_source(str(tiny_model_dir)), ModelConfig(impl=impl, device="cpu"), MethodConfig(name="full")
    )
    built.model.eval()
    got, lengths = sequence_log_probs(built.model, batch)
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        logp = torch.log_softmax(hf(batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float(), -1)
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    picked = logp[:, :-1].gather(2, targets.clamp(min=0)[..., None])[..., 0]  # (B, T-1)
    want = (picked * keep).sum(1)
    assert torch.equal(lengths, keep.sum(1))
    assert torch.allclose(got.detach(), want, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_cached_reference_equals_a_live_reference_forward(tiny_model_dir, pair_file, method):
    # on the CPU in fp32: the live forward batches rows differently from the cache, which bf16 would round apart
    over = {"method.name": method, "train.micro_batch": 3, "model.device": "cpu"}
    cfg, tok, data = _data(tiny_model_dir, pair_file, **over)
    source = resolve_source(str(tiny_model_dir))
    built = build_model(source, cfg.model, cfg.method)
    task = get_task("dpo", cfg)
    task.prepare(built, data, cfg)
    with torch.no_grad():  # the policy moves away from the base
        for p in built.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    batches = task.make_batches(data.train, 4, tok.pad_token_id, shuffle=True, seed=1, epoch=0)
    base = build_model(source, cfg.model, cfg.method).model.eval()  # a fresh copy of the starting weights
    for batch in batches:
        with torch.no_grad():
            if method == "lora":
                assert any(m.lora_B.weight.abs().sum() > 0 for _, m in lora_modules(built.model))
                with adapters_disabled(built.model):
                    live = sequence_log_probs(built.model.eval(), batch)[0]
            else:
                live = sequence_log_probs(base, batch)[0]
            policy = sequence_log_probs(built.model, batch)[0]
        assert torch.allclose(batch["reference"], live, atol=1e-4, rtol=1e-5)
        assert not torch.allclose(policy, live, atol=1e-2)


def test_a_run_that_max_steps_ends_early_computes_the_reference_of_the_pairs_it_reaches(
    tiny_model_dir, pair_file, capsys
):
    """A run of train.max_steps 2 over 205 pairs computed the reference log-probs of all 205 before its first step
    (about 2 minutes on the CPU). Only the micro-batches that hold a pair of its steps (and the eval pairs) are
    computed now, each the same as a full run computes it."""
    from tunelab.data.loader import epoch_rows

    over = {"train.micro_batch": 2, "train.grad_accum": 1, "model.device": "cpu"}
    full_cfg, tok, data = _data(tiny_model_dir, pair_file, **over)
    built = build_model(resolve_source(str(tiny_model_dir)), full_cfg.model, full_cfg.method)
    get_task("dpo", full_cfg).prepare(built, data, full_cfg)
    full = [row.reference for row in data.train]
    assert all(ref is not None for ref in full) and "reference log-probs of 12 pairs" in capsys.readouterr().out
    for row in data.train:
        row.reference = None

    cfg, _, _ = _data(tiny_model_dir, pair_file, **over, **{"train.max_steps": 2})
    task = get_task("dpo", cfg)
    task.prepare(built, data, cfg)
    assert "reference log-probs of 4 of 12 pairs: the train pairs that train.max_steps (2) reaches" in (
        capsys.readouterr().out
    )
    computed = [row.reference for row in data.train if row.reference is not None]
    assert 4 <= len(computed) <= 8  # the 4 pairs of its steps, and those that share their micro-batches
    assert computed == [ref for row, ref in zip(data.train, full) if row.reference is not None]  # bit for bit
    rows = epoch_rows(data, cfg.train.seed, 0)
    steps = task.make_batches(rows, 2, tok.pad_token_id, shuffle=cfg.data.shuffle, seed=cfg.train.seed, epoch=0)[:2]
    assert all("reference" in batch for batch in steps)  # what the loop trains on


def test_a_resumed_run_that_reaches_part_of_its_pairs_equals_the_uninterrupted_one(
    tiny_model_dir, tmp_path, straight_and_resumed, capsys
):
    """The resumed run computes the reference of the same pairs, from the starting weights, as the straight run."""
    rows = [
        {"prompt": f"Box {i}?", "chosen": f"Box {i} has code {1000 + 37 * i}.", "rejected": "No."} for i in range(40)
    ]
    data = _write(tmp_path / "many.jsonl", rows)
    common = _overrides(tiny_model_dir, tmp_path, data, **{"train.max_steps": 4, "train.save_every": 2})
    common |= {"data.eval_fraction": 0.25, "train.eval_every": 2}
    straight, resumed = straight_and_resumed(common, 3)
    assert capsys.readouterr().out.count("reference log-probs of 26 of 40 pairs") == 3  # 16 train pairs, 10 eval
    a, b = (load_file(r.run_dir / "adapter_model.safetensors") for r in (straight, resumed))
    assert all(torch.equal(a[key], b[key]) for key in a)
    logged = [
        [json.loads(line).get("loss") for line in (r.run_dir / "metrics.jsonl").open()] for r in (straight, resumed)
    ]
    assert logged[0] == logged[1]


def test_a_run_that_continues_an_adapter_takes_it_as_its_reference(tiny_model_dir, pair_file):
    """model.adapter (an SFT run; a dpo stage after an sft stage, continue: adapter): the reference was the base with
    that adapter off, so the policy started away from its reference and DPO pulled towards the base, not the SFT
    model."""
    cfg, tok, data = _data(tiny_model_dir, pair_file, **{"train.micro_batch": 3, "model.device": "cpu"})
    cfg.model.adapter = "runs/sft"  # what prepare reads: the adapter below is the one the run starts from
    built = build_model(resolve_source(str(tiny_model_dir)), cfg.model, cfg.method)
    with torch.no_grad():  # the continued adapter: away from zero
        for p in built.model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    get_task("dpo", cfg).prepare(built, data, cfg)
    batch = get_task("dpo", cfg).make_batches(data.train, 4, tok.pad_token_id, shuffle=False, seed=0, epoch=0)[0]
    with torch.no_grad():
        policy = sequence_log_probs(built.model.eval(), batch)[0]
        with adapters_disabled(built.model):
            base = sequence_log_probs(built.model, batch)[0]
    assert torch.allclose(batch["reference"], policy, atol=1e-4, rtol=1e-5)
    assert not torch.allclose(policy, base, atol=1e-2)


def test_formats_put_labels_on_the_answers_only(tiny_model_dir, tmp_path):
    rows = [
        {"prompt": "Say yes.", "chosen": "Yes indeed.", "rejected": "No way."},
        {  # LLaMA-Factory's ShareGPT preference format
            "conversations": [{"from": "human", "value": "Say yes."}],
            "chosen": {"from": "gpt", "value": "Yes indeed."},
            "rejected": {"from": "gpt", "value": "No way."},
        },
        {  # two whole conversations: the shared turns are the prompt
            "chosen": [{"role": "user", "content": "Say yes."}, {"role": "assistant", "content": "Yes indeed."}],
            "rejected": [{"role": "user", "content": "Say yes."}, {"role": "assistant", "content": "No way."}],
        },
    ]
    cfg, tok, data = _data(tiny_model_dir, _write(tmp_path / "f.jsonl", rows), **{"data.system_prompt": "Be brief."})
    assert len(data.train) == 3
    first = data.train[0]
    for row in data.train:
        assert (row.chosen_ids, row.chosen_labels) == (first.chosen_ids, first.chosen_labels)
        assert (row.rejected_ids, row.rejected_labels) == (first.rejected_ids, first.rejected_labels)
    answer = tok.decode([t for t in first.chosen_labels if t != IGNORE])
    assert (
        answer.startswith("Yes indeed.")
        and "Say yes" not in answer
        and "Be brief" not in tok.decode([t for t in first.rejected_labels if t != IGNORE])
    )
    assert "Be brief." in tok.decode(first.chosen_ids)

    texts = [{"chosen": "Human: hi\n\nAssistant: hello there", "rejected": "Human: hi\n\nAssistant: go away"}]
    _, _, text_data = _data(tiny_model_dir, _write(tmp_path / "t.jsonl", texts))
    row = text_data.train[0]
    assert "hello there" in tok.decode([t for t in row.chosen_labels if t != IGNORE])
    assert "Human" not in tok.decode([t for t in row.chosen_labels if t != IGNORE])


def test_text_pairs_that_share_no_start_are_counted_in_the_report(tiny_model_dir, tmp_path):
    """Two whole texts sharing no token from the start have no prompt: the loss reads every token of both, as if the
    answers were asked nothing. A row whose prompt sits in a column no reader knows (a `query`) trained so without a
    word; such pairs are now counted in the data report, naming the first and the way to map the prompt."""
    rows = [{"query": f"Code of box {i}?", "chosen": f"Box {i}: {1000 + i}.", "rejected": "No idea."} for i in range(4)]
    rows.append({"chosen": "Human: hi\n\nAssistant: hello there", "rejected": "Human: hi\n\nAssistant: go away"})
    path = _write(tmp_path / "t.jsonl", rows)
    _, _, data = _data(tiny_model_dir, path)
    assert len(data.train) == 5 and all(t != IGNORE for t in data.train[0].chosen_labels[1:])
    note = next(n for n in data.report.notes if "share no" in n)
    assert note.startswith(
        f"4 of the 5 training pairs are two whole texts that share no token from the start (e.g. {path}:1)"
    )
    assert "data.fields" in note and "note:" in data.report.summary()
    _, _, told = _data(tiny_model_dir, path, **{"data.fields": {"prompt": "query"}})
    assert not [n for n in told.report.notes if "share no" in n]


def test_answers_that_repeat_their_prompt_are_counted_in_the_report(tiny_model_dir, tmp_path):
    """Rows whose chosen and rejected are whole transcripts beside a prompt column that holds their start (the prompt
    cut out of HH-RLHF's texts, the sides left whole) trained each answer to repeat the question before answering,
    without a word; such pairs are now counted in the data report."""
    start = "\n\nHuman: Which box holds the keys?\n\nAssistant:"
    rows = [{"prompt": start, "chosen": f"{start} Box {i}.", "rejected": f"{start} No idea."} for i in range(3)]
    rows.append({"prompt": "Which box?", "chosen": "Box 4.", "rejected": "No idea."})
    path = _write(tmp_path / "t.jsonl", rows)
    _, _, data = _data(tiny_model_dir, path)
    note = next(n for n in data.report.notes if "repeat" in n)
    assert note.startswith(f"3 of the 4 pairs have answers that both start with their prompt's text (e.g. {path}:1)")


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_the_reference_of_an_adapter_started_from_the_weight_is_the_base_model(
    tiny_model_dir, tmp_path, pair_file, init
):
    """method.init pissa/olora leave the base a residual: the adapter switched off must add the start back, or the
    reference would be the residual model and step 1 would not sit at ln 2."""
    args = ["train", "--task", "dpo", "--model.name", str(tiny_model_dir), "--data.train", pair_file]
    args += ["--data.max_length", "64", "--method.r", "4", "--method.init", "pissa", "--train.max_steps", "1"]
    args += ["--train.micro_batch", "3", "--output_dir", str(tmp_path / "run")]
    assert main(args) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in records if "loss" in r)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["margin"] == pytest.approx(0.0, abs=1e-5)


def test_cli_run_trains_and_saves_a_peft_adapter(tiny_model_dir, tmp_path, pair_file):
    args = ["train", "--task", "dpo", "--model.name", str(tiny_model_dir), "--data.train", pair_file]
    args += ["--data.eval_fraction", "0.25", "--data.max_length", "64", "--method.r", "4", "--train.max_steps", "3"]
    args += ["--train.micro_batch", "3", "--train.lr", "2e-3", "--output_dir", str(tmp_path / "run")]
    assert main(args) == 0
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]  # the eval records (auto eval_every) sit between them
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at step 1: z = 0
    assert steps[0]["margin"] == pytest.approx(0.0, abs=1e-5)
    assert {"margin", "accuracy", "chosen_logp", "rejected_logp"} <= set(steps[1])
    assert {"eval_loss", "eval_margin", "eval_accuracy"} <= set(records[-1])
    config = json.loads((run / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and "lora_A" in next(iter(load_file(run / "adapter_model.safetensors")))
    assert json.loads((run / "run.json").read_text())["task"] == "dpo"
    assert main(["report", str(run)]) == 0
    assert "Preference" in (run / "report.html").read_text()


@pytest.mark.parametrize(
    "loss", ["sigmoid", pytest.param("simpo", marks=pytest.mark.slow), pytest.param("orpo", marks=pytest.mark.slow)]
)
def test_resume_equals_uninterrupted(tiny_model_dir, tmp_path, straight_and_resumed, pair_file, loss):
    common = _overrides(tiny_model_dir, tmp_path, pair_file, **{"train.max_steps": 4, "train.save_every": 2})
    common |= {"dpo.loss": loss, "data.eval_fraction": 0.25, "train.eval_every": 2, "method.dropout": 0.1}
    straight, resumed = straight_and_resumed(common, 3)  # dies in step 3, after the checkpoint of step 2
    a, b = (load_file(r.run_dir / "adapter_model.safetensors") for r in (straight, resumed))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    timing = ("tokens_per_s", "elapsed_s")
    records = [
        [
            {k: v for k, v in json.loads(line).items() if k not in timing}
            for line in (r.run_dir / "metrics.jsonl").open()
        ]
        for r in (straight, resumed)
    ]
    assert records[0] == records[1] and any("eval_margin" in r for r in records[0])


def test_bad_input_exits_2_with_file_and_line(tiny_model_dir, tmp_path, pair_file, capsys):
    base = ["train", "--task", "dpo", "--model.name", str(tiny_model_dir), "--output_dir", str(tmp_path / "r")]
    bad = _write(
        tmp_path / "bad.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b"}]
    )
    assert main([*base, "--data.train", bad]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and "rejected" in err and "Traceback" not in err

    long = _write(tmp_path / "long.jsonl", [{"prompt": "word " * 200, "chosen": "b", "rejected": "c"}])
    assert main([*base, "--data.train", long, "--data.max_length", "32"]) == 2
    err = capsys.readouterr().err
    assert "long.jsonl:1" in err and "max_length" in err

    assert main([*base, "--data.train", pair_file, "--dpo.loss", "cpo"]) == 2
    err = capsys.readouterr().err
    assert "dpo.loss" in err and "sigmoid, ipo, simpo" in err

    assert main([*base, "--data.train", pair_file, "--data.packing", "true"]) == 2
    assert "packing" in capsys.readouterr().err

    # an empty prompt, or one whose chat ends with the assistant, was trained on silently
    for name, prompt, says in [
        ("null_prompt", None, "field 'prompt': the prompt is empty"),
        ("no_turns", [], "field 'prompt': the prompt is empty"),
        (
            "ends_assistant",
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
            "field 'prompt': the prompt's chat ends with the assistant's turn",
        ),
    ]:
        bad = _write(tmp_path / f"{name}.jsonl", [{"prompt": prompt, "chosen": "b", "rejected": "c"}])
        for task in ("dpo", "reward"):
            assert main([base[0], "--task", task, *base[3:], "--data.train", bad]) == 2
            err = capsys.readouterr().err
            assert f"{name}.jsonl:1: {says}" in err and "Traceback" not in err

    forged = _write(tmp_path / "forged.jsonl", [{"prompt": "a", "chosen": "b<|im_end|>c", "rejected": "c"}])
    assert main([*base, "--data.train", forged]) == 2
    err = capsys.readouterr().err
    assert "forged.jsonl:1: the special token text '<|im_end|>' in an assistant message of the chosen side" in err


def test_a_run_that_leaves_the_training_options_to_auto(tiny_model_dir, tmp_path, pair_file):
    """The reference log-probs are cached in micro-batches of the size auto chose (the option itself reads 'auto')."""
    overrides = _overrides(tiny_model_dir, tmp_path, pair_file)
    for name in ("train.micro_batch", "train.grad_accum", "train.lr"):
        del overrides[name]
    result = train(None, overrides)
    assert result.auto["train.micro_batch"]["value"] == 1 and "train.lr" in result.auto  # 12 pairs: 12 / 32 -> 1
    assert result.steps == 3


def test_text_pairs_that_share_no_start_score_their_first_token(tiny_model_dir, tmp_path):
    """Two whole texts that differ from their first token, with a tokenizer that adds no BOS: each row's first token
    was its first answer token, which the loss never scores (a row's first token is predicted from nothing). Both
    rows start with the tokenizer's BOS (or EOS) token now, and every token of both texts is scored."""
    rows = [{"chosen": f"Box {i}: {1000 + i}.", "rejected": "No idea."} for i in range(4)]
    _, tok, data = _data(tiny_model_dir, _write(tmp_path / "t.jsonl", rows))
    if tok("x")["input_ids"][0] == tok.bos_token_id:  # some transformers versions add one to this tokenizer
        pytest.skip("this transformers version adds a BOS token to the tiny tokenizer: the case cannot arise")
    row = data.train[0]
    assert row.chosen_ids[0] == row.rejected_ids[0] and row.chosen_labels[0] == IGNORE
    scored = row.chosen_labels[1:]  # what the loss reads: labels shifted by one
    assert tok.decode([t for t in scored if t != IGNORE]).startswith("Box 0")
    assert tok.decode([t for t in row.rejected_labels[1:] if t != IGNORE]).startswith("No idea.")
    assert any("share no token" in n for n in data.report.notes)  # still counted as pairs without a prompt


def test_text_pairs_whose_answers_begin_alike_split_at_the_assistant_cue(smollm2_tokenizer, tmp_path):
    """Two HH-RLHF transcripts whose answers begin with the same words were split where their tokens part: ' It is'
    went to the prompt, and each answer was scored from ' 4.' and ' 5.'. The answers now start after the last
    'Assistant:' the texts share; texts with no such cue in their shared start are counted in a note."""
    from tunelab.tasks.preference_data import answer_cue

    ask = "\n\nHuman: What is 2+2?\n\nAssistant: Let me see.\n\nHuman: Go on.\n\nAssistant:"
    rows = [{"chosen": ask + " It is 4.", "rejected": ask + " It is 5."}]
    rows.append({"chosen": "Q: What is 3+3? A: It is 6.", "rejected": "Q: What is 3+3? A: It is 7."})
    path = _write(tmp_path / "t.jsonl", rows)
    cfg = load_config(None, {"task": "dpo", "data.train": [path], "data.max_length": 64}).config
    data = build_preferences(cfg, smollm2_tokenizer, 0)
    answers = [
        [
            smollm2_tokenizer.decode([t for t in labels if t != IGNORE])
            for labels in (r.chosen_labels, r.rejected_labels)
        ]
        for r in data.train
    ]
    eos = smollm2_tokenizer.eos_token
    assert answers[0] == [f" It is 4.{eos}", f" It is 5.{eos}"]
    assert answer_cue(*rows[0].values()) == len(ask) and answer_cue(*rows[1].values()) is None
    (note,) = [n for n in data.report.notes if "'Assistant:' turn cue" in n]
    assert (
        note.startswith("1 of the 2 training pairs are two whole texts whose shared start holds no ") and ":2)" in note
    )


def test_a_run_of_a_fraction_of_an_epoch_computes_the_reference_of_the_pairs_it_reaches(
    tiny_model_dir, pair_file, capsys, monkeypatch
):
    """train.epochs 0.3 trains 2 of the 6 steps of an epoch of 12 pairs, but the reference log-probs of all 12 were
    computed before the first step. Only the micro-batches its steps reach (and the eval pairs) are computed now."""
    import tunelab.tasks.dpo as dpo

    over = {"train.micro_batch": 2, "train.grad_accum": 1, "model.device": "cpu", "train.epochs": 0.3}
    cfg, _, data = _data(tiny_model_dir, pair_file, **over)
    built = build_model(resolve_source(str(tiny_model_dir)), cfg.model, cfg.method)
    calls = []
    real = dpo.sequence_log_probs
    monkeypatch.setattr(dpo, "sequence_log_probs", lambda *a, **k: calls.append(1) or real(*a, **k))
    get_task("dpo", cfg).prepare(built, data, cfg)
    # no eval split: the line named "the eval pairs" all the same
    assert "reference log-probs of 4 of 12 pairs: the train pairs that train.epochs (0.3) reaches (the base," in (
        capsys.readouterr().out
    )
    # the micro-batches (cut from the rows in order, as a full run cuts them) that hold a pair of its 2 steps
    held = [any(row.reference is not None for row in data.train[i : i + 2]) for i in range(0, 12, 2)]
    assert not data.eval and len(calls) == sum(held) < 6
    assert 4 <= sum(row.reference is not None for row in data.train) < 12


@pytest.mark.parametrize("method", ["full", "layers"])
def test_a_full_or_layers_run_names_its_starting_weights_as_the_reference(tiny_model_dir, pair_file, method, capsys):
    """A dpo run of method full or layers has no adapter: its reference is the weights it starts from. The line at
    start said `(the base, adapters off)` all the same."""
    over = {"method.name": method, "model.device": "cpu", "train.micro_batch": 4}
    over |= {"method.top_layers": 1} if method == "layers" else {}
    cfg, _, data = _data(tiny_model_dir, pair_file, **over)
    built = build_model(resolve_source(str(tiny_model_dir)), cfg.model, cfg.method)
    get_task("dpo", cfg).prepare(built, data, cfg)
    printed = capsys.readouterr().out
    assert "adapters off" not in printed and "(the starting weights, before the first update)" in printed, printed
