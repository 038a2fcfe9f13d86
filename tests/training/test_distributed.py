"""Two ranks on the CPU (gloo) train the run one process trains, write what one process writes, and resume across
rank counts. Launched as users launch them, `tunelab train CONFIG --nproc 2`: its launcher in the test's process (`_launch_here`,
one process importing torch less than a launcher of its own), the ranks in theirs. The model is the tiny one with a
600-token vocabulary (small_vocab_model_dir): SmolLM2's 49,152-token output layer made each rank's steps 20 times
dearer and proves nothing here.

The tolerances: losses relative 1e-6, gradient norms relative 1e-4. Both runs take the same micro-batches and the
same float32 maths; what differs is the order of additions (two ranks' partial gradient sums, FSDP2's norm summed
shard by shard, the tied embedding's two gradient contributions), which Adam carries into later steps. Measured
over 4 steps: losses within 4e-8 relative; gradient norms within 4e-5 (a norm of 3.2M squares, accumulated in
another order, is the figure float32 moves most). A normalisation error is far outside both: averaging instead of
summing across ranks halves a gradient norm, and dividing by one rank's tokens instead of all ranks' weighs the
micro-batches wrongly by tens of percent: here they carry different numbers of loss tokens and, with grad_accum 3
on 2 ranks, rank 0 runs two micro-batches, rank 1 one and a blank.
"""

import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
import weakref
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import tunelab
from tunelab.cli import main
from tunelab.config import load_config
from tunelab.errors import ConfigError
from tunelab.training import recipe
from tunelab.training.distributed import BLANK, Ranks, fsdp2_holds_integer_parameters, pick_sharding
from tunelab.training.sharded_checkpoint import _split_optim_key

LOSS_RTOL, NORM_RTOL = 1e-6, 1e-4


# DDP over QLoRA, FSDP2 over full weights, FSDP2 over QLoRA (NF4 sharded), DDP over LoRA in fp16 (the loss scale)
CASES = ("lora", "full", "qlora_fsdp2", "lora_fp16")
# Other tasks: dpo (and its loss kto) as the full case (FSDP2), grpo and classify as the lora case (QLoRA, DDP).
TASK_CASES = ("dpo", "grpo", "classify", "kto")
# Sharding the NF4 codes needs torch 2.13's FSDP2 (the GPU image's 2.11 refuses it, and tunelab says so).
SHARDS_NF4 = pytest.mark.skipif(
    not fsdp2_holds_integer_parameters(), reason=f"torch {torch.__version__}'s FSDP2 cannot shard integer tensors"
)
CASE_PARAMS = [pytest.param(case, marks=SHARDS_NF4) if case == "qlora_fsdp2" else case for case in CASES]


def _write_config(folder: Path, model_dir: Path, case: str) -> Path:
    qlora = case in ("lora", "qlora_fsdp2", "grpo", "classify")
    fp16 = case == "lora_fp16"
    rows = [  # answers of different lengths, so that micro-batches carry different numbers of loss tokens
        {
            "question": f"What is the code of box {i}?",
            "answer": f"Box {i} has code {1000 + 37 * i}." + " Yes." * (i % 5),
        }
        for i in range(24)
    ]
    data = folder / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        # gloo ranks on the CPU, on a GPU host too
        "model": {"name": str(model_dir), "device": "cpu"} | ({"dtype": "fp16"} if fp16 else {}),
        "data": {"train": [str(data)], "system_prompt": "You answer box questions.", "max_length": 64},
        # The LoRA runs are QLoRA: under DDP the NF4 base's buffers, which no rank broadcasts; under FSDP2 the NF4
        # codes and absmaxes as frozen parameters, each rank holding half of them.
        "method": {
            "name": "lora" if qlora or fp16 else "full",
            "r": 4,
            "dropout": 0.0,
            "quantize_base": "nf4" if qlora else "none",
        },
        "train": {
            "sharding": "fsdp2" if case == "qlora_fsdp2" else "auto",
            "micro_batch": 4,
            "grad_accum": 3,  # 6 micro-batches an epoch: 2 steps; on 2 ranks rank 1 runs a blank in each step
            "lr": 1e-3,
            "max_steps": 4,
            "save_every": 2,
            "keep_checkpoints_after_finish": True,
            "checkpointing": case == "lora",  # DDP over tunelab's recomputed layers (FSDP2 refuses it for now)
        },
    }
    if case in TASK_CASES:
        config = _task_config(folder, config, case)
    path = folder / f"{case}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _task_config(folder: Path, config: dict, task: str) -> dict:
    """A dpo or grpo run of the config: preference pairs whose answers differ in length, or prompts whose
    sampled answers two regex rewards score apart (3 prompts x 4 answers a step, 3 micro-batches of 4 answers: on
    2 ranks rank 1 trains one and a blank, and each rank samples 6 of the 12 answers)."""
    data = folder / f"{task}.jsonl"
    if task == "dpo":
        rows = [
            {
                "prompt": f"Code of box {i}?",
                "chosen": f"Box {i}: {1000 + 37 * i}." + " Yes." * (i % 4),
                "rejected": "No.",
            }
            for i in range(24)
        ]
        extra = {"dpo": {"beta": 0.5}}
    elif task == "kto":  # unpaired rows: the micro-batches the ranks run side by side share one z0 (`ONE_PROCESS_AS`)
        rows = [
            {
                "prompt": f"Code of box {i}?",
                "completion": f"Box {i}: {1000 + 37 * i}." if i % 3 else "No.",
                "label": i % 3 > 0,
            }
            for i in range(24)
        ]
        extra = {"dpo": {"beta": 0.5, "loss": "kto"}}
    elif task == "classify":  # three labels, texts of different lengths: the head reads each row's last token
        rows = [{"text": f"Box {i} is" + " very" * (i % 5) + " full.", "label": "abc"[i % 3]} for i in range(24)]
        extra = {}
    else:
        rows = [{"prompt": f"Code of box {i}?", "expected": str(1000 + 37 * i)} for i in range(12)]
        rewards = [{"kind": "regex", "pattern": "[kqxz]"}, {"kind": "regex", "pattern": "^ ", "weight": 0.5}]
        extra = {"grpo": {"num_generations": 4, "prompts_per_step": 3, "max_new_tokens": 6, "rewards": rewards}}
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train = config["train"] | ({"micro_batch": 4, "grad_accum": 1, "max_steps": 4} if task == "grpo" else {})
    train |= {"grad_accum": 2} if task == "kto" else {}
    return (
        config
        | extra
        | {"task": "dpo" if task == "kto" else task, "data": config["data"] | {"train": [str(data)]}, "train": train}
    )


# What one process runs to train what two ranks train, where the config alone does not say it: kto's z0 is the mean
# over the rows of the micro-batches the ranks run side by side (2 ranks x 4 rows x grad_accum 2), the micro-batch of
# 8 rows one process runs (the same rows: the epoch's order does not depend on the micro-batch's size).
ONE_PROCESS_AS = {"kto": {"train.micro_batch": 8, "train.grad_accum": 1}}


def _rank_env() -> dict[str, str]:
    """What every rank gets: this checkout's tunelab on its path, and one thread (two ranks share two cores)."""
    src = os.pathsep.join([str(Path(tunelab.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    return {"PYTHONPATH": src, "OMP_NUM_THREADS": "1"}


def _launch_here(config: Path, run_dir: Path, *flags: str) -> subprocess.CompletedProcess:
    """`tunelab train CONFIG --nproc 2 *flags` with its launcher in this process and the ranks in theirs: one process
    importing torch less than a launcher of its own. What the launcher and the ranks write to stdout and stderr is read back from
    files put under file descriptors 1 and 2 (the ranks inherit them), which pytest's capture gets back after."""
    argv = ["train", str(config), "--output_dir", str(run_dir), "--nproc", "2", *flags]
    with contextlib.ExitStack() as stack:
        out, err = (
            stack.enter_context(tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")) for _ in range(2)
        )
        saved = []
        for fd, file in ((1, out), (2, err)):
            getattr(sys, ("stdout", "stderr")[fd - 1]).flush()
            saved.append(os.dup(fd))
            os.dup2(file.fileno(), fd)
        try:
            with (
                pytest.MonkeyPatch.context() as patch,
                contextlib.redirect_stdout(out),
                contextlib.redirect_stderr(err),
            ):
                for name, value in _rank_env().items():
                    patch.setenv(name, value)
                code = main(argv)
        finally:
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)
        texts = []
        for file in (out, err):
            file.flush()
            file.seek(0)
            texts.append(file.read())
    return subprocess.CompletedProcess(argv, code, *texts)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_same_curve(one: Path, other: Path, loss_abs: float = 0.0) -> None:
    """loss_abs: for a loss that is a small difference of larger terms, an absolute tolerance. grpo's surrogate sums
    to about 0 over a group (7.5e-5 out of terms of size 1, where another machine's CPU ranks differed by 7.6e-10).
    dpo's -log sigmoid(beta x margin) near 0.03 moves by sigmoid(-beta margin) beta = 0.003 a nat of margin, and the
    margin is a difference of answers' summed log-probs of tens of nats (fp32 ulp ~4e-6): two ranks, whose GEMMs
    see half the rows, sum them in another order (CPU ranks differed by 8.2e-8 at step 4, torch 2.13 and transformers 5.25).
    kto's w (1 - sigmoid(beta (r - z0))) moves by up to beta / 4 = 0.125 a nat of its log ratio, which also differs in
    the summed log-probs' last bits, through r and through z0 (3.3e-7 measured at step 3 on the CPU)."""
    a, b = _metrics(one), _metrics(other)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=LOSS_RTOL, abs=loss_abs), (x, y)
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=NORM_RTOL), (x, y)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_vocab_model_dir):
    """Configs, and each run made once on demand: ("one"|"two", a case of CASES) -> run directory."""
    folder = tmp_path_factory.mktemp("distributed")
    configs = {case: _write_config(folder, small_vocab_model_dir, case) for case in CASES + TASK_CASES}
    made: dict = {}

    def run(ranks: str, method: str) -> Path:
        if (ranks, method) not in made:
            run_dir = folder / f"{ranks}-{method}"
            if ranks == "one":
                recipe.train(configs[method], {"output_dir": str(run_dir)} | ONE_PROCESS_AS.get(method, {}))
            else:
                done = _launch_here(configs[method], run_dir)
                assert done.returncode == 0, done.stderr[-3000:]
                made[("log", method)] = done
            made[(ranks, method)] = run_dir
        return made[(ranks, method)]

    run.configs, run.made, run.folder = configs, made, folder
    return run


@pytest.mark.slow
@pytest.mark.parametrize("method", CASE_PARAMS)
def test_two_ranks_train_what_one_process_trains(runs, method):
    """DDP (QLoRA), FSDP2 (full) and FSDP2 (QLoRA): the same losses and gradient norms, and the same saved result
    (for QLoRA under FSDP2, the adapters gathered from their shards into PEFT's single file)."""
    one, two = runs("one", method), runs("two", method)
    _assert_same_curve(one, two)
    result = "model.safetensors" if method == "full" else "adapter_model.safetensors"
    a, b = load_file(one / result), load_file(two / result)
    if method == "lora_fp16":  # every rank scaled alike; the ranks' overflow test is the shared gradient norm
        kept = [json.loads((d / "run.json").read_text())["extra"]["fp16_loss_scale"] for d in (one, two)]
        assert kept[0] == kept[1] and kept[0]["final_scale"] > 0
    assert a.keys() == b.keys()
    # Adam's update is about lr * sign(m) where |m| ~ sqrt(v): elements with a near-zero gradient may move by up to
    # ~2 lr in one run and not the other; the bound is a few steps' learning rate (lr 1e-3, 4 steps).
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 4e-3
    if method == "qlora_fsdp2":
        out = runs.made[("log", method)].stdout
        assert "ranks: 2 (gloo, fsdp2)" in out
        assert "NF4 base: 37.2 KiB, sharded; the ranks hold 18.6 KiB, 18.6 KiB of it between layers" in out
        shards = (two / "checkpoints" / "step-0000004" / "shards").glob("*.safetensors")
        keys = {k for f in shards for k in load_file(f)}
        assert keys and all(".lora_" in k for k in keys)  # adapters and their Adam state: the NF4 base is not saved


@pytest.mark.slow
@pytest.mark.slow
@pytest.mark.parametrize("task", TASK_CASES)
def test_two_ranks_train_the_tasks_one_process_trains(runs, task):
    """dpo: each rank scores its pairs against the reference cached before the first step. grpo: each rank samples
    and scores half of a step's answers and the ranks swap them, then each trains its micro-batches. Both: the
    curve of one process, with every step learning something (a gradient), and the same adapter."""
    one, two = runs("one", task), runs("two", task)
    _assert_same_curve(one, two, loss_abs={"grpo": 1e-7, "dpo": 2e-7, "kto": 1e-6}.get(task, 0.0))
    a, b = _metrics(one), _metrics(two)
    assert all(r["grad_norm"] > 0 for r in a)
    metrics = {"dpo": ("accuracy", "margin"), "classify": ("accuracy",), "kto": ("kl", "desirable_reward")}.get(
        task, ("reward", "kl", "answer_tokens")
    )
    for x, y in zip(a, b):
        for name in metrics:
            assert y[name] == pytest.approx(x[name], rel=NORM_RTOL, abs=1e-9), (name, x, y)  # kl: 3e-6 measured
    if task == "grpo":  # the rewards told the answers apart: the advantages were not all zero
        assert min(r["zero_std_groups"] for r in a) < 1
    result = (
        "model.safetensors" if task in ("dpo", "kto") else "adapter_model.safetensors"
    )  # FSDP2's full weights, gathered
    saved_a, saved_b = load_file(one / result), load_file(two / result)
    if task == "classify":  # the head is in the adapter (PEFT's modules_to_save), the labels in config.json
        assert any(".score." in k for k in saved_b)
        assert json.loads((two / "config.json").read_text())["id2label"] == {"0": "a", "1": "b", "2": "c"}
    assert saved_a.keys() == saved_b.keys()
    assert max(float((saved_a[k] - saved_b[k]).abs().max()) for k in saved_a) < 4e-3
    assert f"ranks: 2 (gloo, {'fsdp2' if task in ('dpo', 'kto') else 'ddp'})" in runs.made[("log", task)].stdout


@SHARDS_NF4
def test_qlora_fsdp2_adapter_loads_in_peft_with_tunelabs_logits(runs, small_vocab_model_dir):
    """The adapter two FSDP2 ranks gathered into PEFT's file: plain transformers + PEFT over the 16-bit base give
    the logits tunelab gives over the same base (base_precision 16bit), and the adapter moves them."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunelab.infer.run import open_run

    two = runs("two", "qlora_fsdp2")
    ids = torch.tensor([[1, 17, 42, 99, 5, 300, 7, 64]])
    base = AutoModelForCausalLM.from_pretrained(small_vocab_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        plain = base(ids).logits
        peft_logits = PeftModel.from_pretrained(base, two).eval()(ids).logits
        ours = open_run(two, device="cpu", dtype="fp32", base_precision="16bit").model(ids).logits
    torch.testing.assert_close(peft_logits, ours, rtol=1e-5, atol=1e-5)
    assert float((peft_logits - plain).abs().max()) > 1e-3  # the trained adapter is in the file, not zeros


def _shard_worker(rank: int, world: int, model_dir: str, store: str, out: str) -> None:
    """One of `world` gloo ranks: build the QLoRA model as `tunelab train` does, shard it with FSDP2, and write what
    this rank holds of the NF4 base and the loss of one batch, sharded and unsharded."""
    import torch.distributed as dist

    from tunelab.config import load_config
    from tunelab.models.load import resolve_source
    from tunelab.training.build import build_model
    from tunelab.training.distributed import nf4_bytes_held, parallelize

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        cfg = load_config(None, {"model.name": model_dir, "method.quantize_base": "nf4", "model.device": "cpu"}).config
        model = build_model(resolve_source(model_dir), cfg.model, cfg.method).model
        ids = torch.arange(3, 35).view(2, 16)
        batch = (ids, torch.arange(16).expand(2, -1), torch.ones_like(ids))
        before = nf4_bytes_held(model)
        with torch.no_grad():
            whole_loss = float(model(*batch, labels=ids).loss_sum)
        sharded = parallelize(model, "fsdp2", Ranks(rank, world))
        with torch.no_grad():
            sharded_loss = float(sharded(*batch, labels=ids).loss_sum)
        record = {"before": before, "after": nf4_bytes_held(model), "whole": whole_loss, "sharded": sharded_loss}
        Path(out, f"rank-{rank}.json").write_text(json.dumps(record))
        dist.barrier()  # both ranks done before either tears gloo down
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@SHARDS_NF4
def test_each_rank_holds_half_of_the_nf4_base(small_vocab_model_dir, tmp_path):
    """FSDP2 over QLoRA on 2 gloo ranks: each holds about half the NF4 codes and absmaxes (dim 0 of each tensor cut
    in two, the first rank taking the odd element), together all of it, and the sharded model computes the loss the
    whole one does."""
    import torch.multiprocessing as mp

    mp.spawn(_shard_worker, args=(2, str(small_vocab_model_dir), str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    records = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    whole = records[0]["before"][1]
    assert whole > 0 and all(r["before"] == [whole, whole] for r in records)  # unsharded: every rank holds it all
    held = [r["after"][0] for r in records]
    assert all(r["after"][1] == whole for r in records)
    assert sum(held) == whole
    # 14 layers x 3 tensors: each cut is uneven by at most one element (4 bytes for the fp32 absmax2)
    assert all(abs(h - whole / 2) <= 14 * 3 * 4 for h in held), (held, whole)
    for r in records:
        assert r["sharded"] == pytest.approx(r["whole"], rel=1e-6)


@pytest.mark.slow
def test_rank_zero_alone_prints_and_writes(runs):
    two = runs("two", "lora")
    log = runs.made[("log", "lora")]
    assert log.stdout.count("resolved config") == 1
    assert log.stdout.count("saved to") == 1
    assert "ranks: 2 (gloo, ddp)" in log.stdout
    assert len(_metrics(two)) == 4  # one writer: no line twice
    info = json.loads((two / "run.json").read_text())
    assert info["finished"] and info["steps"] == 4
    checkpoint = two / "checkpoints" / "step-0000004"
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["format"] == "sharded" and state["world_size"] == 2
    assert sorted(state["files"]) == sorted(str(p.relative_to(checkpoint)) for p in checkpoint.rglob("*.safetensors"))
    assert {"rng-0.safetensors", "rng-1.safetensors"} <= set(state["files"])
    assert not list(two.glob(".tmp*")) and not list((two / "checkpoints").glob(".tmp*"))


def _cut_after_step_2(run_dir: Path, to: Path) -> Path:
    """A copy of a finished run as if it had been stopped after the checkpoint of step 2."""
    shutil.copytree(run_dir, to)
    shutil.rmtree(to / "checkpoints" / "step-0000004")
    return to


@pytest.mark.slow
@pytest.mark.parametrize("method", CASE_PARAMS)
def test_two_ranks_resume_on_one(runs, method, tmp_path):
    two = runs("two", method)
    resumed = _cut_after_step_2(two, tmp_path / "resumed")
    recipe.train(runs.configs[method], {"output_dir": str(resumed)}, resume=True)
    _assert_same_curve(two, resumed)
    _assert_same_curve(runs("one", method), resumed)


@pytest.mark.slow
@pytest.mark.parametrize("method", CASE_PARAMS)
def test_one_process_resumes_on_two_ranks(runs, method, tmp_path, capfd, monkeypatch):
    """The launcher runs in this process (the `runs` fixture launches `tunelab train` as a process of its own);
    its ranks are processes of their own, writing to this process's stdout."""
    one = runs("one", method)
    resumed = _cut_after_step_2(one, tmp_path / "resumed")
    for name, value in _rank_env().items():
        monkeypatch.setenv(name, value)
    if method != "lora":  # the command line
        code = main(["train", str(runs.configs[method]), "--output_dir", str(resumed), "--nproc", "2", "--resume"])
        assert code == 0, capfd.readouterr().err[-3000:]
    else:  # the Python API
        result = tunelab.train(runs.configs[method], {"output_dir": str(resumed)}, resume=True, nproc=2)
        assert result.steps == 4 and result.final_loss == pytest.approx(_metrics(one)[-1]["loss"], rel=LOSS_RTOL)
    out = capfd.readouterr().out
    assert out.count("resuming from") == 1
    _assert_same_curve(one, resumed)
    assert (resumed / "checkpoints" / "step-0000004" / "shards").is_dir()  # written by two ranks


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--train.sharding", "fsdp2", "--method.quantize_base", "none"], "not supported for LoRA over a 16-bit"),
        (["--train.sharding", "fsdp2", "--method.use_dora", "true"], "not supported for DoRA"),
        (
            ["--method.name", "full", "--method.quantize_base", "none", "--train.checkpointing", "true"],
            "train.checkpointing",
        ),
        (["--model.device", "cuda", "--nproc", "9"], "CUDA device"),
        (["--nproc", "0"], "--nproc"),
    ],
)
def test_bad_launch_is_refused_before_any_process_starts(runs, tmp_path, capsys, flags, message):
    if "--model.device" in flags and torch.cuda.device_count() >= 9:
        pytest.skip("this host has 9 GPUs")
    nproc = [] if "--nproc" in flags else ["--nproc", "2"]
    code = main(["train", str(runs.configs["lora"]), "--output_dir", str(tmp_path / "run"), *nproc, *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_shards_deal_every_micro_batch_once_and_keep_ranks_in_step():
    group = [{"id": i} for i in range(5)]
    parts = [Ranks(rank, 2).shard(group) for rank in range(2)]
    assert [len(p) for p in parts] == [3, 3]  # every rank runs the same number of forwards
    real = [b["id"] for p in parts for b in p if not b.get(BLANK)]
    assert sorted(real) == list(range(5))  # disjoint, and together the whole group
    assert sum(bool(b.get(BLANK)) for p in parts for b in p) == 1
    assert Ranks().shard(group) == group
    assert [list(Ranks(1, 3).mine(7)), list(Ranks(1, 3).mine(7, rank=2))] == [[1, 4], [2, 5]]


def test_the_tasks_get_the_sharding_they_can_run_under():
    def sharding(task, **options):
        return pick_sharding(load_config(None, {"task": task, **options}).config)

    assert sharding("dpo", **{"method.name": "full"}) == "fsdp2"
    assert sharding("grpo", **{"method.name": "full"}) == "ddp"  # auto: the sampler needs the whole model
    assert sharding("grpo") == "ddp"
    with pytest.raises(ConfigError, match="task grpo does not support"):
        sharding("grpo", **{"method.name": "full", "train.sharding": "fsdp2"})
    assert sharding("classify", **{"method.name": "full"}) == sharding("reward") == "ddp"
    with pytest.raises(ConfigError, match="task classify does not support: a head run's result"):
        sharding("classify", **{"train.sharding": "fsdp2"})


def test_fsdp2_takes_torchs_adamw_but_not_the_8bit_one():
    def sharding(optimizer):
        options = {"method.name": "full", "train.sharding": "fsdp2", "train.optimizer": optimizer}
        return pick_sharding(load_config(None, options).config)

    assert sharding("adamw") == sharding("adamw_torch") == "fsdp2"
    with pytest.raises(ConfigError, match="adamw_8bit, which does not take FSDP2's sharded tensors"):
        sharding("adamw_8bit")


def test_optimizer_keys_split_at_the_parameter_name():
    names = {"model.layers.0.mlp.up_proj.weight", "model.norm.weight"}
    assert _split_optim_key("model.layers.0.mlp.up_proj.weight.exp_avg", names) == (
        "model.layers.0.mlp.up_proj.weight",
        "exp_avg",
    )
    assert _split_optim_key("model.norm.weight.step", names) == ("model.norm.weight", "step")


def test_qlora_under_fsdp2_is_refused_where_torch_cannot_shard_integer_parameters(monkeypatch):
    import dataclasses

    from tunelab.config import RunConfig
    from tunelab.errors import ConfigError
    from tunelab.training import distributed

    cfg = RunConfig()
    cfg = dataclasses.replace(
        cfg,
        method=dataclasses.replace(cfg.method, quantize_base="nf4"),
        train=dataclasses.replace(cfg.train, sharding="fsdp2"),
    )
    monkeypatch.setattr(distributed.torch, "__version__", "2.11.0+cu130")
    with pytest.raises(ConfigError, match=r"fsdp2 with QLoRA, which needs torch 2.13 or newer \(this is 2.11.0"):
        distributed.pick_sharding(cfg)
    monkeypatch.setattr(distributed.torch, "__version__", "2.13.0+cpu")
    assert distributed.pick_sharding(cfg) == "fsdp2"


@pytest.mark.slow
def test_an_fsdp2_run_resumes_under_ddp(runs, tmp_path):
    """A checkpoint loads under either sharding, as on another rank count, but --resume refused the change. The
    FSDP2 run is the straight one of test_two_ranks_train_what_one_process_trains (sharding auto: fsdp2)."""
    fsdp2 = runs("two", "full")
    resumed = _cut_after_step_2(fsdp2, tmp_path / "resumed")
    done = _launch_here(runs.configs["full"], resumed, "--train.sharding", "ddp", "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resume: train.sharding: 'auto' -> 'ddp' (allowed" in done.stdout
    assert "ranks: 2 (gloo, ddp)" in done.stdout
    _assert_same_curve(fsdp2, resumed)


@pytest.mark.parametrize("fails", [False, True])
def test_the_run_lets_go_of_its_model_before_the_process_group_goes(monkeypatch, fails):
    """A wrapped model sits in a reference cycle (FSDP2's hooks refer back to their module) and holds the process
    group: it is collected before the group is destroyed, not at interpreter exit, where gloo's threads abort the
    finished process. A finished run waits for every rank first; a failed one does not (the others may never come)."""
    from tunelab.training import distributed

    calls = []
    model = weakref.ref(torch.nn.Linear(1, 1))  # nothing holds it: gone at once

    def destroy():
        calls.append(("destroy", model() is None))

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda kind: calls.append(("init", kind)))
    monkeypatch.setattr(distributed.dist, "barrier", lambda: calls.append(("barrier", model() is None)))
    monkeypatch.setattr(distributed.dist, "destroy_process_group", destroy)
    cfg = load_config(None, {"model.device": "cpu"}).config
    with contextlib.suppress(RuntimeError), distributed.session(cfg):
        wrapped = torch.nn.Linear(1, 1)
        wrapped.register_forward_hook(functools.partial(print, wrapped))  # a cycle, as FSDP2's units make
        model = weakref.ref(wrapped)
        del wrapped  # what the run's return does: only the garbage collector can free it now
        assert model() is not None
        if fails:
            raise RuntimeError("a step failed")
    assert calls == [("init", "gloo")] + ([] if fails else [("barrier", True)]) + [("destroy", True)]


def test_a_failed_run_lets_go_of_the_model_its_traceback_holds(monkeypatch):
    """A step that raised left the run's frames in its traceback, and with them the model (FSDP2's units, DDP's
    reducer, their memory): the collection before the group is destroyed could not free it, so it stayed until the
    error was dropped, after the group had gone, where gloo's threads abort the process. The frames are cleared first
    now; the error and its traceback's lines reach the caller as raised."""
    from tunelab.training import distributed

    calls, model = [], []

    def train():
        wrapped = torch.nn.Linear(1, 1)
        wrapped.register_forward_hook(functools.partial(print, wrapped))  # a cycle, as FSDP2's units make
        model.append(weakref.ref(wrapped))
        raise RuntimeError("a step failed")

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda kind: calls.append(("init", kind)))
    monkeypatch.setattr(
        distributed.dist, "destroy_process_group", lambda: calls.append(("destroy", model[0]() is None))
    )
    cfg = load_config(None, {"model.device": "cpu"}).config
    with pytest.raises(RuntimeError, match="a step failed") as error, distributed.session(cfg):
        train()
    assert calls == [("init", "gloo"), ("destroy", True)]
    printed = "".join(traceback.format_exception(error.value))
    assert ", in train\n" in printed and 'raise RuntimeError("a step failed")' in printed


@pytest.mark.slow
def test_predict_and_eval_read_a_checkpoint_two_ranks_wrote(runs, tmp_path, capsys):
    """predict and eval of an unfinished classify run whose checkpoint several ranks wrote (sharded) were refused
    (the run did not finish), though one process resumes such a checkpoint. They put its slices together as that
    resume does: the newest checkpoint of the two-rank run scores as its result does."""
    from tunelab.infer.predict import head_outputs, open_head_run, text_input

    run_dir = tmp_path / "stopped"
    shutil.copytree(runs("two", "classify"), run_dir)
    texts = ["Box 3 is very very full.", "Box 4 is full."]
    result = open_head_run(run_dir, device="cpu")
    expected, _ = head_outputs(result.model, result, [text_input(result, t) for t in texts])
    info = json.loads((run_dir / "run.json").read_text())  # stopped after its last checkpoint, as a kill leaves it
    (run_dir / "run.json").write_text(json.dumps(info | {"finished": False, "end": {"reason": "interrupted"}}))
    assert (run_dir / "checkpoints" / "step-0000004" / "shards").is_dir()
    capsys.readouterr()
    run = open_head_run(run_dir, device="cpu", from_checkpoint=True)
    assert "scoring its newest checkpoint, step 4" in capsys.readouterr().err
    got, _ = head_outputs(run.model, run, [text_input(run, t) for t in texts])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert main(["eval", str(run_dir), "--data", str(runs.folder / "classify.jsonl"), "--no-save"]) == 0
