"""`tunelab plan` through the CLI on the tiny model: the table and the choice, and exit 2 with the minimum named when
the budget is too small."""

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


def test_plan_below_the_minimum_exits_2_naming_it(tiny_overrides, tmp_path, capsys):
    code = main(["plan", _config(tmp_path, tiny_overrides), "--gpu-memory", "100KiB"])
    err = capsys.readouterr().err
    assert code == 2
    assert "no configuration fits" in err and "the smallest needs" in err and "largest part is" in err
    assert "Traceback" not in err


def test_plan_refuses_a_malformed_budget(tiny_overrides, tmp_path, capsys):
    code = main(["plan", _config(tmp_path, tiny_overrides), "--gpu-memory", "lots"])
    assert code == 2 and "gpu_memory" in capsys.readouterr().err
