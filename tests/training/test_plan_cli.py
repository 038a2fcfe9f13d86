"""`tunelab plan` through the CLI on the tiny model: the table and the choice, exit 2 with the minimum named when
the budget is too small, a staged config stage by stage, and a federated config sent where it belongs (plan and
train refuse it, naming federate and check)."""

import shlex
import shutil

import pytest
import yaml

from tunelab.cli import main


def _config(tmp_path, tiny_overrides):
    path = tmp_path / "plan.yaml"
    sections: dict = {}
    for key, value in tiny_overrides.items():
        section, _, name = key.rpartition(".")
        if section:
            sections.setdefault(section, {})[name] = value
        else:
            sections[name] = value
    path.write_text(yaml.safe_dump(sections))
    return str(path)


def test_plan_prints_the_candidates_and_the_choice(tiny_overrides, tmp_path, capsys):
    code = main(["plan", _config(tmp_path, tiny_overrides), "--gpu-memory", "1GiB"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "->" in out and "predicted peak" in out and "tokens/s" in out
    assert "no checkpointing" in out  # a tiny model keeps every activation in 1 GiB


def test_a_small_models_plan_reads_in_mib_not_zeros_of_gib(tiny_overrides, tmp_path, capsys):
    """The table's peaks and the breakdown's parts were in GiB whatever their size, so the tiny model's plan showed
    0.00 GiB on every row (marked fits yes or no) and 0.000 GiB for every part; under a tenth of a GiB they are MiB."""
    # on the CPU: a GPU's cuBLAS workspaces (32 MiB each) alone would lift its peaks past a tenth of a GiB
    code = main(["plan", _config(tmp_path, tiny_overrides), "--gpu-memory", "1GiB", "--model.device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "0.00 GiB" not in out and "0.000 GiB" not in out, out
    rows = [line for line in out.splitlines() if "micro_batch" in line and line.rstrip().endswith("yes")]
    assert rows and all(" MiB" in row for row in rows), out
    total = next(line for line in out.splitlines() if line.strip().startswith("total"))
    assert total.endswith(" MiB") and float(total.split()[-2]) > 0.1, total


def test_a_count_of_one_is_singular(tiny_overrides, tmp_path, capsys):
    """The plan's first line said "1 rows per optimizer step" for micro_batch 1 x grad_accum 1."""
    config = _config(tmp_path, tiny_overrides | {"train.micro_batch": 1, "train.grad_accum": 1})
    assert main(["plan", config, "--gpu-memory", "1GiB"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.endswith("; 1 row per optimizer step") and first.startswith("model: 2 layers,"), first


def test_a_model_folder_without_its_weights_yet_is_planned(tiny_overrides, tiny_model_dir, tmp_path, capsys):
    """Plan reads a local model's config.json and tokenizer, never its weights, yet refused a folder without
    *.safetensors: a 70B run could not be planned before its weights were downloaded. Train still needs them."""
    folder = tmp_path / "no-weights"
    shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    config = _config(tmp_path, tiny_overrides | {"model.name": str(folder)})
    assert main(["plan", config, "--gpu-memory", "1GiB"]) == 0
    assert "model: 2 layers" in capsys.readouterr().out
    assert main(["train", config]) == 2
    assert "no weights as *.safetensors" in capsys.readouterr().err


def test_plan_below_the_minimum_exits_2_naming_it(tiny_overrides, tmp_path, capsys):
    code = main(["plan", _config(tmp_path, tiny_overrides), "--gpu-memory", "100KiB"])
    err = capsys.readouterr().err
    assert code == 2
    assert "no configuration fits" in err and "the smallest needs" in err and "largest part is" in err
    assert "Traceback" not in err


def test_plan_refuses_a_malformed_budget(tiny_overrides, tmp_path, capsys):
    code = main(["plan", _config(tmp_path, tiny_overrides), "--gpu-memory", "lots"])
    assert code == 2 and "gpu_memory" in capsys.readouterr().err


def test_a_staged_config_is_planned_stage_by_stage(tiny_overrides, tmp_path, capsys):
    path = _config(tmp_path, tiny_overrides)
    config = yaml.safe_load(open(path))
    train = config["data"].pop("train")
    config["stages"] = [
        {"name": "first", "data": {"train": train}},
        {"name": "second", "data": {"train": train, "max_length": 48}, "train": {"micro_batch": 2}},
    ]
    open(path, "w").write(yaml.safe_dump(config))
    code = main(["plan", path, "--gpu-memory", "1GiB"])
    out, err = capsys.readouterr()
    assert code == 0, err
    first, second = out.split("=== stage 2: second")
    assert first.startswith("=== stage 1: first") and "8 rows per optimizer step" in first  # 4 x 2
    assert "4 rows per optimizer step" in second  # the stage's micro-batch 2 x 2
    assert "longest row" in second and "->" in second
    config["stages"][1]["data"]["max_length"] = 8  # every row of stage 2 is longer: bad input, named by its stage
    open(path, "w").write(yaml.safe_dump(config))
    assert main(["plan", path, "--gpu-memory", "1GiB"]) == 2
    assert "stage 2: " in capsys.readouterr().err


@pytest.mark.parametrize(
    "command, message",
    [
        (["plan", "--gpu-memory", "1GiB"], "tunelab check {} shows them, client by client"),
        (["train"], "Run it with `tunelab federate {}`"),
    ],
)
def test_plan_and_train_send_a_federated_config_to_federate(tiny_overrides, tmp_path, capsys, command, message):
    """Each names the config file it was given, not a placeholder (CONFIG)."""
    (tmp_path / "my configs").mkdir()
    path = _config(tmp_path / "my configs", tiny_overrides)
    config = yaml.safe_load(open(path))
    config["federated"] = {"split_file": config["data"].pop("train")[0]}
    config["output_dir"] = str(tmp_path / "run")
    open(path, "w").write(yaml.safe_dump(config))
    assert main([command[0], path, *command[1:]]) == 2
    assert message.format(shlex.quote(str(path))) in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("budget", ["", " "])
def test_an_empty_budget_is_refused_not_read_as_none_given(tiny_overrides, tmp_path, capsys, budget):
    """`--gpu-memory ""` (an unset shell variable) was taken as no budget given: on a GPU the plan used the GPU's
    memory without a word, on the CPU it asked for --gpu-memory, the flag it was given."""
    import tunelab
    from tunelab.errors import ConfigError

    path = _config(tmp_path, tiny_overrides | {"train.gpu_memory": "1GiB"})
    code = main(["plan", path, "--gpu-memory", budget])
    err = capsys.readouterr().err
    assert code == 2 and f"(--gpu-memory): {budget!r} is not a size like 24GiB" in err
    with pytest.raises(ConfigError, match="is not a size like 24GiB"):
        tunelab.plan(None, tiny_overrides, gpu_memory=budget)


def test_a_cpu_config_is_planned_as_train_plans_it(tiny_overrides, tmp_path, capsys, monkeypatch):
    """With model.device cpu, train plans without offload (and without the GPU's memory as the budget), but plan
    offered offload candidates and, on a GPU machine, took that GPU's memory for a run that never uses it."""
    import torch

    path = _config(tmp_path, tiny_overrides)
    assert main(["plan", path, "--gpu-memory", "200MiB"]) == 0
    assert ", offload" in capsys.readouterr().out  # on CUDA, offload is a candidate at this budget
    assert main(["plan", path, "--gpu-memory", "40MiB", "--model.device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "->" in out and ", offload" not in out
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU here: its memory is no budget for the CPU
    assert main(["plan", path, "--model.device", "cpu"]) == 2
    assert "model.device is cpu, which has no GPU memory: give --gpu-memory SIZE" in capsys.readouterr().err


def test_both_budget_flags_on_one_command_line_are_refused_naming_both(tiny_overrides, tmp_path, capsys):
    path = _config(tmp_path, tiny_overrides)
    code = main(["plan", path, "--gpu-memory", "1GiB", "--train.gpu_memory", "100KiB"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--gpu-memory '1GiB'" in err and "--train.gpu_memory '100KiB'" in err and "Traceback" not in err


def test_gpu_memory_overrides_the_config_files_budget(tiny_overrides, tmp_path, capsys):
    path = _config(tmp_path, tiny_overrides | {"train.gpu_memory": "100KiB"})
    code = main(["plan", path, "--gpu-memory", "1GiB"])  # 100KiB alone fits nothing
    assert code == 0, capsys.readouterr().err


@pytest.mark.parametrize("sharding", ["ddp", "fsdp2", "auto"])
def test_several_processes_are_planned_as_train_runs_them(tiny_overrides, tmp_path, capsys, sharding):
    """Under fsdp2 train turns auto checkpointing and offload off, but plan offered and chose them; it planned every
    rank's GPU as holding the whole model, and sharding auto (fsdp2 for method full) as one process, without saying
    for how many processes it planned."""
    path = _config(tmp_path, tiny_overrides | {"train.sharding": sharding, "method.name": "full"})
    code = main(["plan", path, "--gpu-memory", "1GiB", "--nproc", "2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    table = out.split("\n\n")[0]
    fsdp2 = sharding != "ddp"  # auto: fsdp2 for method full
    assert ("checkpointing 1/2 layers" in table) == (not fsdp2)
    assert ("train.sharding fsdp2: no checkpointing or offload" in out) == fsdp2
    said = f"processes: 2, train.sharding {'fsdp2' if fsdp2 else 'ddp'}" + (" (auto)" if sharding == "auto" else "")
    assert said in out
    assert ("each GPU holds 1/2 of the weights" in out) == fsdp2
    assert ("1/2 (fsdp2)" in out and "fsdp2: gathered weights (root, two layers)" in out) == fsdp2  # the breakdown
    assert ("ddp: gradient buckets" in out) == (not fsdp2)
    assert main(["plan", path, "--gpu-memory", "1GiB"]) == 0  # one process: as train without --nproc
    out = capsys.readouterr().out
    assert "processes: 1 (as tunelab train without --nproc" in out and "(fsdp2)" not in out


def test_several_processes_refuse_what_train_refuses(tiny_overrides, tmp_path, capsys):
    path = _config(tmp_path, tiny_overrides | {"train.sharding": "fsdp2"})  # LoRA over a 16-bit base
    assert main(["plan", path, "--gpu-memory", "1GiB", "--nproc", "2"]) == 2
    assert (
        "option 'train.sharding' is fsdp2, which is not supported for LoRA over a 16-bit base"
        in capsys.readouterr().err
    )
    assert main(["plan", path, "--gpu-memory", "1GiB", "--nproc", "0"]) == 2
    assert "option '--nproc' is 0; give a whole number, 1 or more." in capsys.readouterr().err


def test_a_budget_above_the_gpus_memory_is_refused_naming_it(tiny_overrides, tmp_path, capsys, monkeypatch):
    """A --gpu-memory above the GPU's memory was taken as given: plan (and train) chose for memory the device lacks,
    and the run ran out of it."""
    import types

    import torch

    from tunelab.config import TrainConfig
    from tunelab.errors import ConfigError
    from tunelab.training.plan import device_budget

    gpu = types.SimpleNamespace(total_memory=24 * 2**30, name="Test GPU 24G", major=9, minor=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: gpu)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (gpu.total_memory, gpu.total_memory))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    path = _config(tmp_path, tiny_overrides)
    code = main(["plan", path, "--gpu-memory", "80GiB"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "(--gpu-memory) is 80GiB, more than the 24.00 GiB of this GPU (Test GPU 24G)" in err
    assert main(["plan", path, "--gpu-memory", "1GiB"]) == 0  # within the GPU's memory: planned
    with pytest.raises(ConfigError, match="option 'train.gpu_memory'.*more than the 24.00 GiB"):  # as train reads it
        device_budget(TrainConfig(gpu_memory="25GiB"), torch.device("cuda", 0))
    assert device_budget(TrainConfig(gpu_memory="24GiB"), torch.device("cuda", 0)) == 24 * 2**30
    assert device_budget(TrainConfig(gpu_memory="80GiB"), torch.device("cpu")) == 80 * 2**30  # no GPU to compare


def test_a_gpu_shared_with_other_processes_is_noted(tiny_overrides, tmp_path, capsys, monkeypatch):
    """With other processes holding most of the GPU, plan (and train) chose for the whole budget without a word, and
    the run ran out of memory; the budget stands (they may end), with a note of what this process can have now."""
    import types

    import torch

    from tunelab.training.plan import free_memory_note

    gib = 2**30
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: types.SimpleNamespace(
        total_memory=24 * gib, name="Test GPU 24G", major=9, minor=0))  # fmt: skip
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * gib, 24 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    path = _config(tmp_path, tiny_overrides)
    assert main(["plan", path, "--gpu-memory", "20GiB"]) == 0
    out = capsys.readouterr().out
    assert "note: the budget 20.00 GiB is more than the 10.00 GiB of GPU memory this process can have now" in out
    assert "other processes hold 14.00 GiB of its 24.00 GiB" in out
    assert main(["plan", path, "--gpu-memory", "8GiB"]) == 0 and "note: the budget" not in capsys.readouterr().out
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 4 * gib)  # a loaded model: its own memory
    assert free_memory_note(14 * gib, torch.device("cuda", 0)) is None
    assert free_memory_note(14 * gib, torch.device("cpu")) is None


def test_a_dpo_pair_is_planned_as_its_two_rows(tiny_overrides, tmp_path, capsys):
    """dpo's micro-batch of P pairs puts 2P rows through the model, each as wide as a pair's longer side; plan
    counted P rows as long as both sides together, and called the pairs rows."""
    import dataclasses
    import json

    from tunelab.api import plan
    from tunelab.config import RunConfig
    from tunelab.training.plan_setup import config_setup

    def pairs(rejected: str) -> str:
        path = tmp_path / f"pairs-{len(rejected)}.jsonl"
        rows = [
            {"prompt": f"Say something kind {i}", "chosen": "You are great " * 3, "rejected": rejected}
            for i in range(8)
        ]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        overrides = tiny_overrides | {"task": "dpo", "data.train": [str(path)], "data.system_prompt": None}
        return _config(tmp_path, overrides)

    assert main(["plan", pairs("No"), "--gpu-memory", "1GiB"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "8 pairs (a chosen and a rejected row each) per optimizer step" in first, first
    # the width is the longer side's: a short rejected answer or one as long as the chosen, the same rows
    assert plan(pairs("No"), gpu_memory="1GiB").seq == plan(pairs("You are rude " * 3), gpu_memory="1GiB").seq
    dpo = RunConfig(task="dpo")
    assert config_setup(dpo, 10).rows == 2 and dataclasses.replace(config_setup(dpo, 10), micro_batch=4).tokens == 80
    assert config_setup(RunConfig(), 10).rows == 1


def test_both_budgets_given_in_python_are_refused_naming_what_was_written(tiny_overrides):
    """plan(gpu_memory=...) beside an override of train.gpu_memory was refused naming --gpu-memory and
    --train.gpu_memory, flags a Python caller never typed."""
    import tunelab
    from tunelab.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        tunelab.plan(None, tiny_overrides | {"train.gpu_memory": "100KiB"}, gpu_memory="1GiB")
    assert "gpu_memory='1GiB' and overrides['train.gpu_memory'] = '100KiB' both give" in str(error.value)
    assert "--" not in str(error.value)


def test_a_python_budget_is_named_by_its_keyword(tiny_overrides):
    """plan(gpu_memory='') was refused as '(--gpu-memory): '' is not a size', and a CPU config without a budget was
    told to 'give --gpu-memory SIZE': flags a Python caller never typed. The CLI keeps them (tests above)."""
    import tunelab
    from tunelab.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        tunelab.plan(None, tiny_overrides, gpu_memory="")
    assert "option 'train.gpu_memory' (gpu_memory=): '' is not a size" in str(error.value)
    with pytest.raises(ConfigError) as error:
        tunelab.plan(None, tiny_overrides | {"model.device": "cpu"})
    assert "which has no GPU memory: give gpu_memory=SIZE (like 24GiB)" in str(error.value)
    assert "--gpu-memory" not in str(error.value)


@pytest.mark.parametrize(("dropout", "width"), [(0.0, "bucket"), (0.1, "longest")])
def test_a_micro_batch_is_planned_as_the_rows_the_data_has_at_the_width_it_runs(
    tiny_overrides, tmp_path, dropout, width
):
    """The planner put micro_batch rows of the longest row's width through the model; a step has no more rows than
    the epoch (8 of 205 tokens planned, 3 run, on the H100: benchmarks/results/2026-12-05-h100-first-step-memory.txt),
    and a graphed micro-batch is padded to its width bucket (205 -> 256 there). LoRA dropout runs eagerly."""
    import json

    from tunelab.api import plan
    from tunelab.training.graphs import bucket_width

    data = tmp_path / "three.jsonl"
    data.write_text("".join(json.dumps({"question": f"Box {i}?", "answer": f"Code {i}."}) + "\n" for i in range(3)))
    overrides = tiny_overrides | {"data.train": [str(data)], "method.dropout": dropout, "train.micro_batch": 8}
    report = plan(_config(tmp_path, overrides), gpu_memory="1GiB")
    setup = report.memory.setup
    assert setup.epoch_rows == 3 and setup.graph_bucket == bucket_width(64) == 64 and setup.graphs == (dropout == 0)
    wide = 64 if width == "bucket" else report.seq
    assert report.seq < 64
    head_dim = 16  # the tiny model: hidden 64 over 4 heads
    rope = report.memory.chosen.estimate.static["rope tables"]
    assert rope == 2 * (3 * wide) * head_dim * 2  # cos and sin, (N, head_dim) bf16, N = 3 rows x the width


def test_train_plans_with_the_rows_of_its_first_epoch(tiny_overrides, tmp_path, monkeypatch):
    """`tunelab train` gives its planner the epoch's rows, as `tunelab plan` does."""
    import json

    import tunelab.training.recipe as recipe
    from tunelab.api import train

    class Planned(Exception):
        pass

    def plan_memory(*args, **kwargs):
        raise Planned(args[7] if len(args) > 7 else kwargs.get("rows"))

    data = tmp_path / "three.jsonl"
    data.write_text("".join(json.dumps({"question": f"Box {i}?", "answer": f"Code {i}."}) + "\n" for i in range(3)))
    monkeypatch.setattr(recipe, "plan_memory", plan_memory)
    with pytest.raises(Planned) as planned:
        train(None, tiny_overrides | {"data.train": [str(data)], "train.micro_batch": 8}, check=False)
    assert planned.value.args == (3,)


@pytest.mark.parametrize(("micro_batch", "grad_accum"), [(8, 1), (2, 4)])
def test_the_first_line_says_the_rows_a_step_is_planned_with(tiny_overrides, tmp_path, capsys, micro_batch, grad_accum):
    """The planner plans the 3 rows the data holds, not micro_batch x grad_accum = 8; the first line said "8 rows
    per optimizer step". It says the 3, and why they differ from the config."""
    import json

    data = tmp_path / "three.jsonl"
    data.write_text("".join(json.dumps({"question": f"Box {i}?", "answer": f"Code {i}."}) + "\n" for i in range(3)))
    overrides = tiny_overrides | {"data.train": [str(data)], "train.micro_batch": micro_batch}
    overrides["train.grad_accum"] = grad_accum
    assert main(["plan", _config(tmp_path, overrides), "--gpu-memory", "1GiB"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.endswith(
        "; 3 rows per optimizer step (all the data holds: an epoch has 3 rows, fewer than train.micro_batch "
        f"{micro_batch} x train.grad_accum {grad_accum} = 8)"
    ), first
