"""`tunelab eval` of a head run: what its printed summary says of the rows it read."""

from tunelab.eval.heads import HeadEvalResult, format_head_eval, head_eval_html


def _result(task: str, scored: int, truncated: int) -> HeadEvalResult:
    skipped = {"label not among the training labels ('eggs')": {"count": 1, "locations": ["t.jsonl:2"]}}
    scores = {"accuracy": 1.0, "macro_f1": 1.0, "labels": ["ham", "spam"], "per_class": {}, "confusion": {}}
    scores |= {"margin": 0.5, "loss": 0.4}
    return HeadEvalResult(
        task, "runs/c", "t.jsonl", "m", "lora", "cpu", scored, truncated, scores, scores, "majority class", skipped
    )


def test_the_summary_counts_the_rows_scored_in_words_that_fit_the_count():
    """A file of two rows, one skipped, was summed up as "on t.jsonl: 1 rows" above "skipped 1": it read as one row
    read and one skipped, in the plural; one cut input was "1 inputs were longer". The count is said as what it is,
    the rows (or pairs) scored, singular at one."""
    text = format_head_eval(_result("classify", 1, 1))
    assert text.splitlines()[0] == "eval of runs/c (classify) on t.jsonl: 1 row scored", text
    assert "  1 input was longer than the run's max_length: its last tokens were kept" in text, text
    assert "1 rows" not in text and "1 inputs" not in text, text
    assert "on t.jsonl: 12 preference pairs scored" in format_head_eval(_result("reward", 12, 0))
    page = head_eval_html(_result("classify", 1, 0).to_dict())
    assert "<p>1 row scored of <code>t.jsonl</code>.</p>" in page, page
