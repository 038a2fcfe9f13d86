"""`tunelab check` with method.init pissa (olora alike) refuses what `tunelab train` refuses, with train's words and
exit 2: FSDP2, a continued adapter, alpha 0, a staged run, a federation, and (once the model is built) an r
above a targeted weight's smaller side; and accepts what train accepts, an NF4 base (QPiSSA)."""

import json

import pytest

from tunelab.cli import main


def _stages():
    return json.dumps([{"train.max_steps": 1}, {"train.max_steps": 1, "method.init": "pissa"}])


def _clients(qa_file):
    return json.dumps([str(qa_file), str(qa_file)])


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (lambda qa: ["--train.sharding", "fsdp2"], "train.sharding fsdp2 shards A and B"),
        (lambda qa: ["--model.adapter", "somewhere"], "model.adapter continues a saved adapter"),
        (lambda qa: ["--method.alpha", "0"], "method.alpha 0"),
        (lambda qa: ["--stages", _stages()], "a staged run (stages)"),
        (lambda qa: ["--federated.clients", _clients(qa)], "a federation averages"),
    ],
    ids=["fsdp2", "adapter", "alpha0", "stages", "federated"],
)
def test_check_refuses_what_train_refuses(tiny_overrides, cli_flags, capsys, qa_file, flags, says):
    args = [*cli_flags(tiny_overrides | {"method.init": "pissa", "train.max_steps": 1}), *flags(qa_file)]
    errors = []
    for command in ("check", "train"):
        assert main([command, *args]) == 2, command
        errors.append(capsys.readouterr().err)
    assert all("option 'method.init' is pissa" in e and says in e for e in errors), errors
    assert errors[0].removeprefix("tunelab check") == errors[1].removeprefix("tunelab train")


def test_check_refuses_a_rank_above_a_weights_smaller_side(tiny_overrides, cli_flags, capsys):
    # the tiny model's k_proj and v_proj are 32 x 64: olora cannot take 40 directions of them
    args = cli_flags(tiny_overrides | {"method.init": "olora", "method.r": 40, "train.max_steps": 1})
    assert main(["check", *args]) == 2
    assert "option 'method.r' is 40, but method.init olora takes r directions" in capsys.readouterr().err


def test_check_accepts_pissa_over_an_nf4_base_as_train_does(tiny_overrides, cli_flags, capsys):
    args = cli_flags(tiny_overrides | {"method.init": "pissa", "method.quantize_base": "nf4", "train.max_steps": 1})
    assert main(["check", *args]) == 0, capsys.readouterr().err
    assert main(["train", *args]) == 0, capsys.readouterr().err
