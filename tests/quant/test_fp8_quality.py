"""benchmarks/fp8_quality.py on the tiny model: both QLoRA runs train through `tunelab.train`, the second with its
base products in FP8 by `quant.fp8`'s CPU reference (which `tunelab train` refuses on a CPU), and differ."""

import importlib.util
import math
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fp8_quality.py"


def _script():
    spec = importlib.util.spec_from_file_location("fp8_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_fp8_run_multiplies_in_fp8_on_the_cpu_and_its_curve_differs(tiny_overrides, tmp_path, capsys):
    bench = _script()
    overrides = tiny_overrides | {"model.device": "cpu", "train.max_steps": 2, "data.eval_fraction": 0.25}
    result = bench.compare_runs(None, overrides, tmp_path)
    out = capsys.readouterr().out
    assert out.count("multiplied in FP8 (train.fp8)") == 1  # the second run's model line only
    base, fp8 = result["runs"]["fp32"], result["runs"]["fp8"]
    assert len(base["loss"]) == len(fp8["loss"]) == 2
    assert all(math.isfinite(x) for x in base["loss"] + fp8["loss"] + [base["eval_loss"], fp8["eval_loss"]])
    assert fp8["loss"][0] != base["loss"][0]  # the first forward already rounds the base's operands to e4m3
    assert 0 < result["gap"] < 0.1 and result["gap_step"] in (1, 2)  # e4m3 operands: a few percent per product


def test_the_largest_gap_is_relative_to_the_reference_curve():
    assert _script().largest_gap([2.0, 4.0, 1.0], [2.0, 3.0, 1.1]) == (0.25, 2)
