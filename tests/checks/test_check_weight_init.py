"""`tunelab check` with method.init pissa (olora alike) refuses what `tunelab train` refuses, with train's words and
exit 2: FSDP2, a continued adapter, alpha 0, a staged run, a federation, and (once the model is built) an r
above a targeted weight's smaller side; and accepts what train accepts, an NF4 base (QPiSSA)."""

import json
from pathlib import Path

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


def test_check_resume_builds_from_the_kept_factors_and_refuses_as_train_does(
    tiny_overrides, cli_flags, crash_at, capsys, monkeypatch
):
    """check --resume of a pissa run factorised the base again, where train --resume rebuilds it from the factors
    the run kept: on another machine check tried a base the resume never trains over. It reads the kept file now (a
    factorisation would raise here), refuses a missing or damaged one with train's words and exit 2, and says for a
    run older than the file what train says."""
    from tunelab.peft import weight_init
    from tunelab.training import recipe

    common = tiny_overrides | {"train.max_steps": 4, "train.save_every": 2, "method.init": "pissa"}
    with crash_at(3):
        recipe.train(None, common)
    run_dir = Path(common["output_dir"])
    kept, run_json = run_dir / "checkpoints" / "initial_factors.safetensors", run_dir / "run.json"
    args = [*cli_flags(common), "--resume"]

    def factorised(*args):
        raise AssertionError("factorised again")

    with monkeypatch.context() as patched:
        patched.setattr(weight_init, "_factors", factorised)
        assert main(["check", *args]) == 0, capsys.readouterr().err

    capsys.readouterr()
    good = kept.read_bytes()
    for damage, says in [(lambda: kept.write_bytes(good[:-4] + bytes(4)), "damaged"), (kept.unlink, "missing.")]:
        damage()
        errors = []
        for command in ("check", "train"):
            assert main([command, *args]) == 2, command
            errors.append(capsys.readouterr().err)
        assert f"{kept}: {says}" in errors[0], errors[0]
        assert errors[0].removeprefix("tunelab check") == errors[1].removeprefix("tunelab train")

    info = json.loads(run_json.read_text())  # a run written before the factors were kept: factorised, said so
    del info["extra"]["initial_factors_sha256"]
    run_json.write_text(json.dumps(info))
    assert main(["check", *args]) == 0
    assert "resume: the run kept no starting factors of its adapters" in capsys.readouterr().out
    assert not kept.exists()  # check writes nothing into the run
