"""A device a run cannot be opened on is named as its caller gave it: argument 'device' to a Python call of generate,
chat, compare, evaluate, predict or load_reward_model, option '--device' to the command line."""

import json
import shutil

import pytest
import torch

import tunelab
from tunelab.cli import main
from tunelab.errors import ConfigError


@pytest.fixture
def one_gpu(monkeypatch):
    """A machine with one CUDA device, as the device checks see it (the run itself is never loaded on it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


@pytest.fixture
def head_run(tiny_run_dir, tmp_path):
    """The tiny run, said to be a classify run: predict opens it as one, and picks the device before the weights."""
    run = shutil.copytree(tiny_run_dir, tmp_path / "run-classify")
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info | {"task": "classify"}))
    return run


def _said_to_be(run, task):
    """A copy of the run, said to be a `task` run (load_reward_model refuses another task before it opens one)."""
    copy = shutil.copytree(run, run.parent / f"run-{task}", dirs_exist_ok=True)
    info = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps(info | {"task": task}))
    return copy


def _python_calls(run, head, data):
    return {
        "generate": lambda device: tunelab.generate(run, "hi", device=device),
        "chat": lambda device: tunelab.chat(run, device=device),
        "compare": lambda device: tunelab.compare(run, question="hi", save=False, device=device),
        "evaluate": lambda device: tunelab.evaluate(run, data, save=False, device=device),
        "predict": lambda device: tunelab.predict(head, texts=["hi"], device=device),
        "load_reward_model": lambda device: tunelab.load_reward_model(_said_to_be(head, "reward"), device=device),
    }


def _questions(tmp_path) -> str:
    path = tmp_path / "held.jsonl"
    path.write_text(json.dumps({"question": "Code of box 1?", "answer": "Box 1: 1037."}) + "\n")
    return str(path)


def test_a_python_call_names_its_argument_device(tiny_run_dir, head_run, tmp_path, one_gpu):
    """Each was refused as "option '--device' is 'gpu'" (open_run's and the head model's words for the command
    line), a flag a Python caller never typed."""
    for name, call in _python_calls(tiny_run_dir, head_run, _questions(tmp_path)).items():
        for device, said in (
            ("gpu", "argument 'device' is 'gpu'; allowed values: auto, cpu, cuda, cuda:N"),
            ("cuda:3", "argument 'device' is cuda:3, but this machine has 1 CUDA device: cuda:0 to cuda:0"),
        ):
            with pytest.raises(ConfigError) as caught:
                call(device)
            assert said in str(caught.value) and "--device" not in str(caught.value), name


def test_the_command_line_still_names_its_flag(tiny_run_dir, head_run, tmp_path, one_gpu, capsys):
    """The commands are refused by their flag, before the run is opened (the API then names its argument)."""
    data = _questions(tmp_path)
    run = str(tiny_run_dir)
    for command in (
        ["generate", run, "--prompt", "hi"],
        ["chat", run],
        ["compare", run, "--question", "hi", "--no-save"],
        ["eval", run, "--data", data, "--no-save"],
        ["predict", str(head_run), "--text", "hi"],
    ):
        assert main([*command, "--device", "cuda:3"]) == 2
        err = capsys.readouterr().err
        assert "option '--device' is cuda:3, but this machine has 1 CUDA device" in err, command
        assert "argument 'device'" not in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without a GPU")
def test_a_missing_gpu_is_named_as_the_caller_gave_the_device(tiny_run_dir, capsys):
    with pytest.raises(tunelab.errors.ModelError, match="argument 'device' is cuda, but no CUDA device is available"):
        tunelab.generate(tiny_run_dir, "hi", device="cuda")
    assert main(["generate", str(tiny_run_dir), "--prompt", "hi", "--device", "cuda"]) == 2
    assert "option '--device' is cuda, but no CUDA device is available" in capsys.readouterr().err
