"""examples/company_faq_stages: the config loads and plans its two stages (stage 2 continues stage 1's adapter and
trains on the company_faq example's data), and the documents of stage 1 hold every fact of facts.md by its key
string, so that stage 1 could teach what the held-out questions ask."""

import re
from pathlib import Path

from tunelab.config import load_config
from tunelab.training.stage_plan import plan_stages

ROOT = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE = ROOT / "company_faq_stages"


def _keys() -> list[str]:
    """The key strings of facts.md's table (the last column, in backticks)."""
    text = (ROOT / "company_faq" / "facts.md").read_text(encoding="utf-8")
    return [m.group(1) for m in re.finditer(r"\| `([^`]+)` \|$", text, flags=re.M)]


def test_the_config_plans_two_chained_stages(tmp_path):
    resolved = load_config(EXAMPLE / "config.yaml")
    documents, questions = (plan.config for plan in plan_stages(resolved, tmp_path / "run"))
    assert documents.data.train == [str(EXAMPLE / "documents")] and documents.data.eval == str(
        EXAMPLE / "press_release.txt"
    )
    assert Path(questions.data.train[0]).resolve() == (ROOT / "company_faq" / "train.jsonl").resolve()
    assert questions.model.adapter == str(tmp_path / "run" / "stage-1")
    faq = load_config(ROOT / "company_faq" / "config.yaml").config
    # company_faq's data and method; its training as that config set it before `auto` (lr 2e-3, 8 x 3 epochs)
    assert (questions.method, questions.data.eval_fraction) == (faq.method, faq.data.eval_fraction)
    assert (questions.train.lr, questions.train.micro_batch, questions.train.epochs) == (2e-3, 8, 3)
    assert resolved.config.eval.questions and Path(resolved.config.eval.questions).is_file()


def test_the_documents_hold_every_fact():
    keys = _keys()
    assert len(keys) == 20
    pages = " ".join(p.read_text(encoding="utf-8") for p in sorted((EXAMPLE / "documents").glob("*.txt")))
    missing = [k for k in keys if k.lower() not in pages.lower()]
    assert not missing, missing
