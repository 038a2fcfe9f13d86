"""The examples' measure.py scripts answer --help and missing arguments with their usage, not a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SRC = Path(__file__).resolve().parents[2] / "src"


def _run(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.mark.parametrize("example", ["arithmetic_grpo", "concise_dpo"])
def test_measure_help_and_missing_arguments_give_usage(example, tmp_path):
    script = EXAMPLES / example / "measure.py"
    helped = _run(script, "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: measure.py") and "run_dir" in helped.stdout
    bare = _run(script, cwd=tmp_path)  # concise_dpo's default runs/concise_dpo is not in tmp_path
    assert bare.returncode == 2 and "Traceback" not in bare.stderr
    assert bare.stderr.startswith("usage: measure.py")
    expected = "the following arguments are required: config" if example == "arithmetic_grpo" else "compare.json"
    assert expected in bare.stderr
