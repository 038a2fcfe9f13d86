"""Staged runs: stage 2 starts from stage 1's weights bit for bit (continue: adapter) or from its merged model
(continue: merge); the forgetting matrix holds what a direct evaluation gives; a run interrupted inside stage 2 and
resumed equals the uninterrupted one (which stage may follow which: test_stages_chain.py)."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

import tunelab.training.loss_scale as loss_scale
from tunelab.api import train
from tunelab.config import load_config
from tunelab.data.batches import make_batches
from tunelab.data.loader import build_datasets
from tunelab.errors import ConfigError
from tunelab.eval.report import build_report
from tunelab.models.load import load_tokenizer, resolve_source
from tunelab.peft.save import load_adapter
from tunelab.rundir import open_info, read_info
from tunelab.training.step import evaluate

from ..smollm2_vocab import (  # noqa: F401 (SmolLM2's vocabulary)
    smollm2_tiny_model_dir,
    smollm2_tiny_run_dir,
    smollm2_tiny_tokenizer,
)
from .stages_setup import adapter_of, docs_then_qa


@pytest.fixture
def staged(tiny_overrides, tmp_path):
    return docs_then_qa(tiny_overrides, tmp_path)


@pytest.fixture(scope="module")
def cpu_staged_run(tmp_path_factory, tiny_overrides_in):
    """(overrides, result): the staged run trained through on the CPU (fp32), made once for the tests that read it."""
    folder = tmp_path_factory.mktemp("cpu-staged")
    staged = docs_then_qa(tiny_overrides_in(folder), folder) | {"model.device": "cpu"}
    return staged, train(None, staged)


def test_stage_two_continues_stage_ones_adapter_bit_for_bit(staged):
    staged["stages"][1]["train"]["lr"] = 0.0  # stage 2 takes steps that change nothing: it must end where it began
    result = train(None, staged)
    run = result.run_dir
    first, second = adapter_of(run / "stage-1"), adapter_of(run / "stage-2")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert any(v.abs().sum() > 0 for k, v in first.items() if "lora_B" in k)  # stage 1 did learn
    info = open_info(run)  # the run directory opens as its final result
    assert info.finished and info.steps == 6 and [s["name"] for s in info.extra["stages"]] == ["docs", "qa"]
    assert all(torch.equal(a, b) for a, b in zip(adapter_of(run).values(), second.values()))
    stages = [json.loads(line)["stage"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert stages[0] == 1 and stages[-1] == 2
    page = build_report(run).read_text()
    matrix = info.extra["forgetting"]["matrix"]
    assert "Forgetting" in page and "after qa" in page and f"{matrix[1][0]:,.4f}" in page
    # the whole run's figures, not the last stage's beside the steps of both (the report showed stage 2's tokens)
    each = [read_info(run / f"stage-{k}") for k in (1, 2)]
    assert info.tokens == each[0].tokens + each[1].tokens > each[1].tokens
    assert info.elapsed_s == pytest.approx(each[0].elapsed_s + each[1].elapsed_s, abs=0.1)
    assert f"<th>tokens trained on</th><td>{info.tokens:,}</td>" in page
    # keep_best's step counted across the stages, as metrics.jsonl counts it (stage 2 at lr 0: its first step ties)
    assert each[1].extra["best"]["step"] == 1 and info.extra["best"]["step"] == 4
    assert "(step 4, the lowest; kept by train.keep_best)" in page


@pytest.mark.parametrize("overshoot", [False, True])
def test_forgetting_matrix_equals_direct_evaluation(staged, cpu_staged_run, tiny_model_dir, overshoot, monkeypatch):
    """overshoot: stage 2's eval loss is lowest at its first step (by a far too high lr; and, so that this does not
    hang on how a torch build rounds, keep_best sees every later eval loss as higher), so keep_best keeps step 1;
    the matrix held the last step's losses on the earlier stages, of weights that were not kept."""
    if overshoot:
        from tunelab.training.best import BestWeights

        real_observe = BestWeights.observe

        def first_is_best(self, step, eval_loss, model):
            return real_observe(self, step, eval_loss if step == 1 else eval_loss + 1e6, model)

        monkeypatch.setattr(BestWeights, "observe", first_is_best)
        staged["stages"][1]["train"] = {"max_steps": 4, "lr": 3.0, "eval_every": 1}
        staged = staged | {"model.device": "cpu"}  # fp32, as the direct evaluation below
        result = train(None, staged)
    else:
        staged, result = cpu_staged_run  # the plain run, fp32 too
    stage_two = open_info(result.run_dir / "stage-2")
    assert (stage_two.extra["best"]["step"] < stage_two.steps) == overshoot
    matrix = json.loads((result.run_dir / "run.json").read_text())["extra"]["forgetting"]["matrix"]
    assert len(matrix) == 2 and len(matrix[0]) == 1 and len(matrix[1]) == 2
    tokenizer = load_tokenizer(resolve_source(str(tiny_model_dir)))
    resolved = load_config(None, staged)
    for k, stage_dir in enumerate(["stage-1", "stage-2"]):
        model = load_adapter(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), result.run_dir / stage_dir
        )
        for j, entry in enumerate(resolved.config.stages[: k + 1]):
            data_cfg = load_config(
                None, staged | {k2: v for k2, v in entry.items() if k2 not in ("name", "continue")}
            ).config.data
            rows = build_datasets(data_cfg, tokenizer, 42).eval
            direct = evaluate(model, make_batches(rows, 4, tokenizer.pad_token_id, shuffle=False, seed=0, epoch=0))
            assert direct == pytest.approx(matrix[k][j], rel=1e-5), (k, j)  # fast path vs transformers: fp32
    assert matrix[1][0] != matrix[0][0]  # stage 2 moved the loss on stage 1's data


def test_a_stage_without_eval_data_of_its_own_keeps_its_loss_on_earlier_stages(staged):
    """Stage 2 has no eval split, so its only eval loss is the one on stage 1's data: it was computed and logged,
    but run.json kept eval losses only where there were two or more, and the matrix showed '-'."""
    staged["stages"][1]["data"]["eval_fraction"] = 0.0
    result = train(None, staged)
    matrix = open_info(result.run_dir).extra["forgetting"]["matrix"]
    assert matrix[1][0] is not None and matrix[1][1] is None and matrix[1][0] != matrix[0][0]


def test_continue_merge_starts_from_the_merged_model(staged, tiny_model_dir):
    staged["stages"][1] |= {"continue": "merge", "method": {"r": 8}}
    staged["stages"][1]["train"]["lr"] = 0.0
    staged["stages"][0]["data"]["system_prompt"] = "You read about doors."
    result = train(None, staged | {"model.device": "cpu"})  # fp32 weights, compared at fp32 tolerance below
    merged = result.run_dir / "stage-1" / "merged"
    assert json.loads((result.run_dir / "stage-2" / "run.json").read_text())["base_model"] == str(merged)
    # stage 1's tokenizer adds its system prompt; the next stage's base keeps the base's own template
    own = AutoTokenizer.from_pretrained(tiny_model_dir).chat_template
    assert "You read about doors." in AutoTokenizer.from_pretrained(result.run_dir / "stage-1").chat_template
    assert AutoTokenizer.from_pretrained(merged).chat_template == own
    ids = torch.randint(0, 200, (2, 11))
    before = load_adapter(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), result.run_dir / "stage-1"
    )
    after = load_adapter(AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32), result.run_dir / "stage-2")
    # W + s B A folded once in fp32, against x W^T + s (x A^T) B^T: the 1e-6 level
    torch.testing.assert_close(after.eval()(ids).logits, before.eval()(ids).logits, rtol=1e-4, atol=1e-5)


def test_continue_merge_starts_a_fresh_adapter_after_a_run_that_started_from_one(staged, tiny_run_dir):
    """model.adapter (stage 1's start) was kept in stage 2's config after continue: merge, so stage 2 trained that
    adapter on again over the merged model, which already held it, instead of a fresh adapter."""
    staged["model.adapter"] = str(tiny_run_dir)
    staged["stages"][1] |= {"continue": "merge"}
    staged["stages"][1]["train"]["lr"] = 0.0  # stage 2 ends where it began
    run = train(None, staged).run_dir
    saved = yaml.safe_load((run / "stage-2" / "config.yaml").read_text())
    assert saved["model"]["adapter"] is None
    assert yaml.safe_load((run / "stage-1" / "config.yaml").read_text())["model"]["adapter"] == str(tiny_run_dir)
    second = adapter_of(run / "stage-2")
    assert all(not v.any() for k, v in second.items() if "lora_B" in k)  # a fresh adapter: B starts at zero


def test_resume_inside_stage_two_equals_the_uninterrupted_run(small_vocab_overrides, tmp_path, crash_at, capsys):
    """Resumed where it stopped, and moved to another folder before --resume: stage 2's saved config named stage 1 by
    the old folder's path, so --resume refused the moved run as another adapter. One interrupted run, copied, serves
    both (the copy takes the interrupted run's place once the moved one has been resumed)."""
    staged = docs_then_qa(small_vocab_overrides, tmp_path)
    straight = train(None, staged | {"output_dir": str(tmp_path / "straight")})
    with crash_at(5):  # stage 2's second step, after its checkpoint of step 1
        train(None, staged | {"output_dir": str(tmp_path / "resumed")})
    shutil.copytree(tmp_path / "resumed", tmp_path / "copy")
    for moved in (True, False):
        if moved:
            (tmp_path / "resumed").rename(tmp_path / "moved")
        else:
            (tmp_path / "copy").rename(tmp_path / "resumed")  # the interrupted run, where it stopped
        where = str(tmp_path / ("moved" if moved else "resumed"))
        capsys.readouterr()
        resumed = train(None, staged | {"output_dir": where}, resume=True)
        if moved:
            assert "the run was moved; its saved config now names this run's stages" in capsys.readouterr().out
            saved = yaml.safe_load((resumed.run_dir / "stage-2" / "config.yaml").read_text())
            assert saved["model"]["adapter"] == str(tmp_path / "moved" / "stage-1")
        a, b = adapter_of(straight.run_dir), adapter_of(resumed.run_dir)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), moved
        assert (
            json.loads((resumed.run_dir / "run.json").read_text())["extra"]["forgetting"]
            == json.loads((straight.run_dir / "run.json").read_text())["extra"]["forgetting"]
        ), moved


def test_check_covers_every_stage_and_the_cli_refuses_a_bad_weight(staged, tmp_path, capsys):
    from tunelab.checks.run import run_check
    from tunelab.cli import main

    auto = {k: v for k, v in staged.items() if k != "train.micro_batch"}  # each stage's auto micro-batch, resolved
    result = run_check(None, auto, model=False, html=tmp_path / "check.html")
    names = [item.name for item in result.items]
    assert result.passed and any(n.startswith("stage 2: ") for n in names)
    assert not (tmp_path / "run").exists()
    config = tmp_path / "bad.yaml"
    config.write_text(
        json.dumps({"output_dir": str(tmp_path / "run"), "data": {"train": [{"path": "x.jsonl", "weight": -1}]}})
    )
    capsys.readouterr()
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "weight is -1.0" in err and "Traceback" not in err and not (tmp_path / "run").exists()


def test_a_staged_run_through_the_cli(staged, tmp_path, capsys):
    """`tunelab train` runs the stages of a config file and prints the forgetting table; `tunelab report` shows it; a
    second `tunelab train` into the finished run stops with exit 2 and leaves it as it was."""
    from tunelab.cli import main

    nested: dict = {}
    for key, value in staged.items():
        section, _, name = key.partition(".")
        if name:
            nested.setdefault(section, {})[name] = value
        else:
            nested[key] = value
    config = tmp_path / "staged.yaml"
    config.write_text(json.dumps(nested))
    assert main(["train", str(config)]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    matrix = open_info(run).extra["forgetting"]["matrix"]
    assert "===== stage 2 of 2: qa" in out and f"{matrix[1][0]:.4f}" in out.split("each stage's eval data")[-1]
    info = open_info(run)  # the last line names the run directory, where the result is, not stage-2's
    assert out.strip().splitlines()[-1] == (
        f"saved to {run}: the last stage's result ({info.steps} steps in 2 stages, {info.tokens:,} tokens, "
        f"{info.elapsed_s:.0f} s)"
    )
    adapter = (run / "adapter_model.safetensors").read_bytes()
    assert main(["report", str(run), "--out", str(tmp_path / "report.html")]) == 0
    assert "Forgetting" in (tmp_path / "report.html").read_text()
    capsys.readouterr()
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(run) in err
    assert (run / "adapter_model.safetensors").read_bytes() == adapter and (run / "stage-2").is_dir()


@pytest.mark.parametrize("loss", ["sigmoid", "orpo", "kto"])
def test_a_dpo_stage_after_an_sft_stage(staged, tmp_path, loss, capsys):
    """Stages may change the task: SFT, then DPO from the merged SFT model (its reference; orpo has none). Each
    stage's data is read by its own task (kto: unpaired rows), and the forgetting matrix compares only stages of the
    same task."""
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": f"Box {i}?", "chosen": f"Box {i} has code {1000 + i}.", "rejected": "No idea."} for i in range(8)
    ]
    if loss == "kto":
        rows = [
            {"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
            for r in rows
            for side in r
            if side != "prompt"
        ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first = staged["stages"][1]
    staged["stages"] = [
        first | {"name": "sft"},
        {
            "name": "dpo",
            "continue": "merge",
            "task": "dpo",
            "dpo": {"loss": loss},
            "data": {"train": [str(pairs)]},
            "train": {"max_steps": 2},
        },
    ]
    result = train(None, staged)
    said = capsys.readouterr().out
    assert ("reference log-probs of" in said) == (loss != "orpo") and ("needs no reference" in said) == (loss == "orpo")
    run = result.run_dir
    assert json.loads((run / "stage-2" / "run.json").read_text())["task"] == "dpo"
    assert (run / "stage-1" / "merged" / "config.json").is_file()  # the dpo stage's base and reference
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    dpo_steps = [r for r in records if r.get("stage") == 2 and "loss" in r]
    assert (
        dpo_steps
        and ("kl" if loss == "kto" else "margin") in dpo_steps[0]
        and all("eval_loss/stage-1" not in r for r in records)
    )
    assert ("nll" in dpo_steps[0]) == (loss == "orpo")
    assert yaml.safe_load((run / "stage-2" / "config.yaml").read_text())["dpo"]["loss"] == loss
    assert open_info(run).finished


def test_a_flag_wins_over_the_stages_values(tmp_path):
    """README: flags win. A stage's own train.max_steps silently beat --train.max_steps."""
    from tunelab.config import stage_config

    config = tmp_path / "staged.yaml"
    config.write_text(
        "model: {name: smollm2-135m-instruct}\n"
        "stages:\n"
        "  - {data: {train: [a.jsonl]}, train: {max_steps: 3, lr: 1.0e-3}}\n"
        "  - {data: {train: [b.jsonl]}, train: {max_steps: 3}}\n"
    )
    resolved = load_config(config, {"train.max_steps": "2"})
    for index in (0, 1):
        stage = stage_config(resolved, index, str(tmp_path / f"stage-{index + 1}"))
        assert stage.config.train.max_steps == 2 and stage.origins["train.max_steps"] == "overrides['train.max_steps']"
    first = stage_config(resolved, 0, str(tmp_path / "stage-1"))
    assert first.config.train.lr == 1e-3 and first.origins["train.lr"] == "stage 1"  # the others as the stage says


def test_a_longer_length_on_resume_says_the_finished_stage_keeps_its_steps(staged, tmp_path, crash_at, capsys):
    """A resumed staged run skips its finished stages: --train.max_steps that now asked more of them was passed over
    silently. The stages come from the file, so the flag sets every stage's length."""
    from tunelab.training.stages import stage_dir

    config = tmp_path / "staged.yaml"
    config.write_text(yaml.safe_dump({"stages": staged["stages"]}))
    flags = {k: v for k, v in staged.items() if k not in ("stages", "data.train")}
    with crash_at(5):  # stage 2's second step
        train(config, flags)
    result = train(config, flags | {"train.max_steps": 4}, resume=True)
    out = capsys.readouterr().out
    assert (
        "finished; skipped (kept at its 3 steps: train.max_steps: 3 -> 4 applies to the stages still to train)" in out
    )
    assert open_info(stage_dir(result.run_dir, 1)).steps == 3 and open_info(stage_dir(result.run_dir, 2)).steps == 4


def test_a_stage_changed_on_resume_is_named_with_its_line(staged, tmp_path, crash_at):
    """--resume refused a stage's changed option as the whole `stages:` list, old and new, naming no stage. It names
    the stage, its line in the file, and each option old -> new."""
    config = tmp_path / "staged.yaml"
    config.write_text(yaml.safe_dump({"stages": staged["stages"]}))
    flags = {k: v for k, v in staged.items() if k not in ("stages", "data.train")}
    with crash_at(5):  # stage 2's second step
        train(config, flags)
    # not train.lr: the flags give it, and a flag wins over a stage's own, so a stage's lr would train nothing else
    staged["stages"][0]["train"]["weight_decay"] = 0.5
    config.write_text(yaml.safe_dump({"stages": staged["stages"]}))
    with pytest.raises(ConfigError, match=r"staged\.yaml:\d+: stage 1: resume=True .* stage 1's options differ from "):
        train(config, flags, resume=True)
    with pytest.raises(ConfigError, match=r"train\.weight_decay: not set -> 0\.5\. Put them back"):
        train(config, flags, resume=True)
    del staged["stages"][0]["train"]["weight_decay"]
    staged["stages"][0]["model"] = {"revision": "v1"}
    config.write_text(yaml.safe_dump({"stages": staged["stages"]}))
    with pytest.raises(ConfigError, match=r"model\.revision: not set -> 'v1'\. model\.revision names the base every"):
        train(config, flags, resume=True)


def test_resuming_a_finished_staged_run_is_refused(staged):
    """Every stage finished: --resume (even with a longer max_steps, which finished stages do not take) trained
    nothing, published the result again and exited 0."""
    run = train(None, staged).run_dir
    before = (run / "run.json").read_text()
    for extra in ({}, {"train.max_steps": 5}):
        with pytest.raises(ConfigError, match="every one of the 2 stages has finished"):
            train(None, staged | extra, resume=True)
    assert (run / "run.json").read_text() == before


def test_a_staged_runs_trackers_log_into_the_run_directory_with_steps_across_stages(staged, crash_at):
    """One TensorBoard log in the run directory, its steps those of the run's metrics.jsonl (stage 2's after stage
    1's), through a crash inside stage 2 and --resume; the stage directories hold none."""
    pytest.importorskip("tensorboard", reason="pip install tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    staged = staged | {"train.report_to": ["tensorboard"]}
    with crash_at(5):  # stage 2's second step, after its checkpoint of step 1
        train(None, staged)
    run = train(None, staged, resume=True).run_dir
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
    assert [s for s, _ in losses] == [1, 2, 3, 4, 5, 6]
    logged = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [s for s, _ in logged] == [s for s, _ in losses]
    assert [v for _, v in logged] == pytest.approx([v for _, v in losses], rel=1e-6)  # float32 there
    evals = [r["step"] for r in records if "eval_loss" in r]
    assert [e.step for e in events.Scalars("eval/loss")] == evals
    assert [e.step for e in events.Scalars("eval/loss/stage-1")] == [
        r["step"] for r in records if "eval_loss/stage-1" in r
    ]
    assert not list(run.glob("stage-*/tensorboard"))


def test_a_stage_continues_its_predecessor_by_an_absolute_path(staged, tmp_path, monkeypatch):
    """Stage 2's config named stage 1 by a path relative to the folder training started in, so --resume from
    another folder read it as another adapter and refused: 'runs/st2/stage-1' -> '../runs/st2/stage-1'."""
    from tunelab.training.stage_plan import plan_stages

    monkeypatch.chdir(tmp_path)
    resolved = load_config(None, staged | {"output_dir": "run"})
    plans = plan_stages(resolved, Path("run"))
    assert plans[1].config.model.adapter == str(tmp_path / "run" / "stage-1")
    assert plans[1].origins["model.adapter"] == "stage 1's result"  # the printed config said "(default)"


def _base_is_the_start_model(run_dir, tiny_model_dir) -> None:
    """compare, chat and eval put the adapter switched off beside the tuned model as "base": the model the run
    started from."""
    from tunelab.infer.run import open_run

    run = open_run(run_dir, device="cpu")
    ids = torch.randint(0, 200, (1, 7))
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    run.check_base()
    with torch.no_grad(), run.base_model() as base:
        torch.testing.assert_close(base(ids).logits, start(ids).logits)
    assert run.base_info.base_model == str(tiny_model_dir)


def test_the_base_beside_a_staged_run_is_the_model_it_started_from(cpu_staged_run, tiny_model_dir):
    """continue: adapter (the default); continue: merge in the test below, on the run it trains."""
    _base_is_the_start_model(cpu_staged_run[1].run_dir, tiny_model_dir)


def test_a_merged_staged_run_opens_beside_the_model_it_started_from_and_moved(staged, tmp_path, tiny_model_dir):
    """After continue: merge, compare, chat and eval put the adapter switched off, which is stage 1's merged model,
    beside the tuned one as "base": the question "what did the run change" was answered for the last stage only.
    And run.json named stage 1's merged model by its absolute path: a staged run moved to another folder could not be
    opened by compare, chat or eval (the base was gone). It is found inside the run. One run, trained once, for both."""
    from tunelab.infer.run import open_run

    staged["stages"][1] |= {"continue": "merge", "method": {"r": 8}}
    result = train(None, staged | {"model.device": "cpu"})
    _base_is_the_start_model(result.run_dir, tiny_model_dir)
    ids = torch.randint(0, 200, (1, 7))
    before = open_run(result.run_dir, device="cpu").model(ids).logits
    moved = tmp_path / "moved"
    result.run_dir.rename(moved)
    info = read_info(moved)
    assert info.base_model == str((moved / "stage-1" / "merged").absolute())
    assert read_info(moved / "stage-2").base_model == info.base_model
    torch.testing.assert_close(open_run(moved, device="cpu").model(ids).logits, before)


def test_a_staged_fp16_runs_overflow_steps_are_summed_over_its_stages(staged, monkeypatch):
    monkeypatch.setattr(loss_scale, "INIT_SCALE", 2.0**20)  # each stage starts high: its first steps overflow
    for stage in staged["stages"]:
        stage["train"]["max_steps"] = 2  # an overflow in each stage is all the sum needs
    result = train(None, staged | {"model.dtype": "fp16", "train.save_every": 0})
    stages = [read_info(result.run_dir / f"stage-{k}").extra["fp16_loss_scale"] for k in (1, 2)]
    whole = read_info(result.run_dir).extra["fp16_loss_scale"]
    assert all(s["overflow_steps"] for s in stages)
    assert whole == {
        "overflow_steps": sum(s["overflow_steps"] for s in stages),
        "final_scale": stages[1]["final_scale"],
    }


def test_an_interrupt_just_after_a_staged_run_moved_the_old_one_aside_says_how_to_get_it_back(staged, tmp_path, tiny_run_dir, monkeypatch, capsys):  # fmt: skip
    """Ctrl-C after --overwrite moved the old run aside, while the staged run wrote its run.json, stopped it without
    the note on where the old run waited (the note covered the stages only)."""
    import shutil

    import tunelab.training.stages as stages

    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stages, "write_info", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(None, staged | {"overwrite": True, "output_dir": str(run)})
    assert f"to get it back: rm -r {run} && mv {run}.previous {run}" in capsys.readouterr().err
    assert (tmp_path / "run.previous" / "run.json").is_file()


@pytest.mark.parametrize("changed", [False, True])
def test_a_staged_run_whose_data_moved_resumes_by_content(staged, tmp_path, crash_at, capsys, changed):
    """A plain run whose data file moved resumes, its rows compared by digest; a staged run with the same data moved
    was refused, its stages' data compared by path. Moved with the same content it resumes, and tunelab check --resume
    agrees; moved and changed, both refuse, naming the stage and the file."""
    from tunelab.api import check

    with crash_at(5):  # stage 2's second step, after its checkpoint of step 1
        train(None, staged)
    doors, qa = Path(staged["stages"][0]["data"]["train"][0]), Path(staged["stages"][1]["data"]["train"][0])
    doors.rename(tmp_path / "doors-moved")
    if changed:
        (tmp_path / "doors-moved" / "door0.txt").write_text("Door 0 of the depot is painted blue. " * 3)
    qa.rename(tmp_path / "qa-moved.jsonl")
    staged["stages"][0]["data"]["train"] = [str(tmp_path / "doors-moved")]
    staged["stages"][1]["data"]["train"] = [str(tmp_path / "qa-moved.jsonl")]
    checked = check(None, staged, resume=True, model=False)
    failed = [f"{item.name}: {item.summary}" for item in checked.items if item.status == "fail"]
    if not changed:
        assert checked.passed, failed
        result = train(None, staged, resume=True)
        out = capsys.readouterr().out
        assert "data is compared by content, not by path" in out
        # the stages whose data moved, each option old -> new, rather than the two whole stages: lists
        assert re.search(r"resume: stage 1: data\.train: \[\S*/doors'\] -> \[\S*/doors-moved'\]; stage 2: ", out)
        assert read_info(result.run_dir).finished and open_info(result.run_dir / "stage-2").steps == 3
        return
    assert any(line.startswith("stage 1: resume data") and "door0.txt" in line for line in failed), failed
    with pytest.raises(
        ConfigError, match=r"stage 1 of 2 \(docs\): .*tokenized training rows differ: \S*door0\.txt changed \(read from"
    ):
        train(None, staged, resume=True)
