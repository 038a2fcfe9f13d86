"""method.init pissa (olora alike; over an NF4 base too) through a run: a resumed run ends bit for bit where the
uninterrupted one ends; the start printout and the saved config name the init; what pissa cannot serve is refused with exit 2 before the model loads."""

import dataclasses
import json
import re

import pytest
import torch
from safetensors.torch import load_file

from tunelab.cli import main


@pytest.mark.parametrize(
    ("init", "method", "quantize"), [("pissa", "lora", "none"), ("olora", "dora", "none"), ("pissa", "lora", "nf4")]
)
def test_resume_equals_uninterrupted(
    tiny_overrides, straight_and_resumed, logged_losses, capsys, init, method, quantize
):
    # nf4 (QPiSSA): the resumed run factorises the 16-bit base again and quantizes the same residual
    common = tiny_overrides | {"train.max_steps": 4, "train.save_every": 2, "method.init": init, "method.name": method}
    common |= {"method.quantize_base": quantize}
    straight, resumed = straight_and_resumed(common, 3)  # dies during step 3, after the checkpoint of step 2
    assert re.search(rf"method\.init +='{init}' +\(overrides", capsys.readouterr().out.replace("= ", "="))
    assert resumed.steps == straight.steps == 4
    a = load_file(straight.run_dir / "adapter_model.safetensors")
    b = load_file(resumed.run_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert logged_losses(straight.run_dir) == logged_losses(resumed.run_dir)
    assert f"init: {init}" in (straight.run_dir / "config.yaml").read_text()  # the config saved beside the run
    recorded = json.loads((straight.run_dir / "run.json").read_text())
    assert (recorded["init"], recorded["rslora"]) == (init, False)
    config = json.loads((straight.run_dir / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (2 * common["method.r"], 2 * 32.0)


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
