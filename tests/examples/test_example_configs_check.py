"""Every shipped example config passes `tunelab check --data-only`: its data is read, rendered and checked as
training reads it (prompt rendering, answer ends, padding, the task's own items), not only its options validated.

The tiny test model stands in for the embedded one: it has SmolLM2's tokenizer, which is all the data checks read.
"""

from pathlib import Path

import pytest

import tunelab
from tunelab.config import load_config

from ..smollm2_vocab import smollm2_tiny_model_dir, smollm2_tiny_tokenizer  # noqa: F401 (SmolLM2's vocabulary)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CONFIGS = sorted(EXAMPLES.glob("*/config*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[f"{p.parent.name}/{p.name}" for p in CONFIGS])
def test_every_example_config_passes_the_data_checks(path, tiny_model_dir, tmp_path):
    missing = [f for f in load_config(path).config.data.train if isinstance(f, str) and not Path(f).exists()]
    if missing and (path.parent / "prepare.py").exists():
        pytest.skip(f"{path.parent.name}: python examples/{path.parent.name}/prepare.py writes {missing} first")
    # output_dir elsewhere: `make demo` (README's first command) leaves a finished runs/company_faq in the checkout
    overrides = {"model.name": str(tiny_model_dir), "output_dir": str(tmp_path / "run")}
    result = tunelab.check(path, overrides, model=False)
    failed = [(item.name, item.summary) for item in result.items if item.status == "fail"]
    assert result.passed and not failed, failed
