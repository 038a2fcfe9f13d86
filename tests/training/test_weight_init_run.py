"""method.init pissa (olora alike; over an NF4 base too) through a run: a resumed run ends bit for bit where the
uninterrupted one ends, from the starting factors the run kept, whatever a new factorisation would give; a kept file
missing, damaged or of other shapes is refused with exit 2; the start printout and the saved config name the init; what pissa cannot serve is refused with exit 2 before the model loads."""

import dataclasses
import hashlib
import json
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tunelab.cli import main


@pytest.mark.parametrize(
    ("init", "method", "quantize"), [("pissa", "lora", "none"), ("olora", "dora", "none"), ("pissa", "lora", "nf4")]
)
def test_resume_equals_uninterrupted_from_the_kept_factors(
    tiny_overrides, crash_at, logged_losses, monkeypatch, capsys, tmp_path, init, method, quantize
):
    """Another LAPACK or torch may factorise the same base otherwise: here the resumed run's SVD (QR) would give each
    pair of factors with its signs flipped and A0 moved by one ulp. The run takes A0, B0 from the file it kept instead
    (nf4, QPiSSA: and quantizes the residual rebuilt from them), and ends bit for bit where the uninterrupted one
    ends."""
    from tunelab.peft import weight_init
    from tunelab.training import recipe

    common = tiny_overrides | {"train.max_steps": 4, "train.save_every": 2, "method.init": init, "method.name": method}
    common |= {"method.quantize_base": quantize}
    straight = recipe.train(None, common | {"output_dir": str(tmp_path / "straight")})
    resumed = common | {"output_dir": str(tmp_path / "resumed")}
    with crash_at(3):  # dies during step 3, after the checkpoint of step 2
        recipe.train(None, resumed)
    assert (tmp_path / "resumed" / "checkpoints" / "initial_factors.safetensors").is_file()
    real, calls = weight_init._factors, []

    def elsewhere(w, r, scale, how):
        calls.append(how)
        a0, b0 = real(w, r, scale, how)
        return -torch.nextafter(a0, torch.full_like(a0, math.inf)), -b0

    monkeypatch.setattr(weight_init, "_factors", elsewhere)
    again = recipe.train(None, resumed, resume=True)
    assert re.search(rf"method\.init +='{init}' +\(overrides", capsys.readouterr().out.replace("= ", "="))
    assert again.steps == straight.steps == 4
    a = load_file(straight.run_dir / "adapter_model.safetensors")
    b = load_file(again.run_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert logged_losses(straight.run_dir) == logged_losses(again.run_dir)
    assert calls == []  # nothing was factorised again
    assert f"init: {init}" in (straight.run_dir / "config.yaml").read_text()  # the config saved beside the run
    recorded = json.loads((straight.run_dir / "run.json").read_text())
    assert (recorded["init"], recorded["rslora"]) == (init, False)
    config = json.loads((straight.run_dir / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (2 * common["method.r"], 2 * 32.0)


def test_resume_refuses_kept_factors_missing_damaged_or_of_other_shapes(tiny_overrides, cli_flags, crash_at, capsys):
    """Exit 2 naming the file; a run that recorded none (older than the file) factorises again, saying so, and keeps
    the factors of that resume."""
    from tunelab.training import recipe

    common = tiny_overrides | {"train.max_steps": 4, "train.save_every": 2, "method.init": "pissa"}
    common |= {"train.keep_checkpoints_after_finish": True}  # and with them the kept factors
    run_dir = Path(common["output_dir"])
    with crash_at(3):
        recipe.train(None, common)
    kept, run_json = run_dir / "checkpoints" / "initial_factors.safetensors", run_dir / "run.json"
    good = kept.read_bytes()
    flags = ["train", *cli_flags(common), "--resume"]

    kept.write_bytes(good[:-4] + bytes(4))
    assert main(flags) == 2
    assert f"{kept}: damaged (its sha256 is not the one run.json records)" in capsys.readouterr().err

    tensors = load_file(kept)  # A0 of one layer cut to r - 1 rows, the record made to match
    name = next(k for k in tensors if k.endswith(".A0"))
    tensors[name] = tensors[name][:-1].contiguous()
    save_file(tensors, kept)
    info = json.loads(run_json.read_text())
    info["extra"]["initial_factors_sha256"] = hashlib.sha256(kept.read_bytes()).hexdigest()
    run_json.write_text(json.dumps(info))
    assert main(flags) == 2
    err = capsys.readouterr().err
    assert f"{kept}: {name} is float32 (3, " in err and "but the layer takes fp32 (4, " in err

    kept.unlink()
    assert main(flags) == 2
    err = capsys.readouterr().err
    assert f"{kept}: missing." in err and "method.init pissa" in err

    del info["extra"]["initial_factors_sha256"]  # as a run written before the factors were kept
    run_json.write_text(json.dumps(info))
    assert main(flags) == 0
    assert "the run kept no starting factors of its adapters" in capsys.readouterr().out
    recorded = json.loads(run_json.read_text())["extra"]["initial_factors_sha256"]
    assert recorded == hashlib.sha256(kept.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--train.sharding", "fsdp2"], "train.sharding fsdp2 shards A and B"),
        (["--model.adapter", "somewhere"], "model.adapter continues a saved adapter"),
        (["--method.alpha", "0"], "method.alpha 0"),
    ],
)
def test_pissa_beside_what_it_cannot_serve_exits_2(tiny_overrides, cli_flags, capsys, flags, says):
    assert main(["train", *cli_flags(tiny_overrides), "--method.init", "pissa", *flags]) == 2
    err = capsys.readouterr().err
    assert "option 'method.init' is pissa" in err and says in err


def test_olora_in_a_staged_run_is_refused(tiny_overrides, cli_flags, capsys):
    stages = json.dumps([{"train.max_steps": 1}, {"train.max_steps": 1, "method.init": "olora"}])
    assert main(["train", *cli_flags(tiny_overrides), "--stages", stages]) == 2
    assert "option 'method.init' is olora, but a staged run" in capsys.readouterr().err


def test_pissa_in_a_federation_is_refused(qa_file):
    from tunelab.config import load_config
    from tunelab.errors import ConfigError

    with pytest.raises(ConfigError, match="option 'method.init' is pissa, but a federation averages"):
        load_config(None, {"method.init": "pissa", "federated.clients": [str(qa_file), str(qa_file)]})


def test_run_json_report_and_card_name_the_init_and_the_saved_rank(tiny_overrides):
    """run.json recorded neither method.init nor method.rslora, so the report and the card called a pissa run's
    adapter a plain LoRA of the rank it trained at; saved, it is one of twice that rank."""
    from tunelab.eval.report_inputs import Input
    from tunelab.eval.report_run import run_summary
    from tunelab.export.card import adapter_card, model_card
    from tunelab.rundir import read_info
    from tunelab.training import recipe

    cfg = tiny_overrides | {"train.max_steps": 1, "method.init": "pissa", "method.rslora": True}
    run_dir = recipe.train(None, cfg).run_dir
    raw = json.loads((run_dir / "run.json").read_text())
    assert (raw["init"], raw["rslora"]) == ("pissa", True)
    assert "lora, init pissa, rsLoRA" in run_summary(Input("run.json", raw))
    info = read_info(run_dir)
    saved = json.loads((run_dir / "adapter_config.json").read_text())["r"]
    card = adapter_card(info, "me/tiny", rank=saved)
    assert saved == 2 * cfg["method.r"] and f"plain LoRA of rank {saved} " in card and "method.init pissa" in card
    assert "rsLoRA" in card
    assert "(lora, init pissa, rsLoRA, task sft)" in model_card(info, "tiny", None, None)
    assert "plain LoRA of rank" not in adapter_card(dataclasses.replace(info, init="default"), "me/tiny", rank=saved)
