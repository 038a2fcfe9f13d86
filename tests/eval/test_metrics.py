"""Answer scores on hand-made pairs whose values are worked out by hand."""

import dataclasses

import pytest

from tunelab.eval.metrics import (
    NO_LABEL,
    contains,
    correct,
    exact_match,
    label_scores,
    normalize,
    predict_label,
    refused,
    rouge_l,
    text_scores,
)


def test_normalize_case_whitespace_and_trailing_punctuation():
    assert normalize("  The  Office\tis in\nDUNDEE. ") == "the office is in dundee"
    assert normalize("Yes !?") == "yes"
    assert normalize("完了。") == "完了"
    assert normalize("1.5") == "1.5"  # only trailing punctuation goes
    assert normalize('He said "Dundee."') == 'he said "dundee'
    # signs that say something stay: "50%" was contained in "About 50 people", "C#" in "We use C", "B)" in "Option B"
    assert normalize("50%") == "50%" and normalize("C#") == "c#" and normalize("B)") == "b)"
    assert not contains("About 50 people.", "50%") and not contains("We use C.", "C#") and not exact_match("50", "50%")
    assert contains("It rose by 50%.", "50%")
    assert normalize("...") == ""


@pytest.mark.parametrize(
    "answer, expected, exact, within",
    [
        ("Dundee.", "dundee", True, True),
        ("  DUNDEE ", "Dundee.", True, True),
        ("It is in Dundee, Scotland.", "Dundee", False, True),
        ("It is in Dundee, Scotland.", "Dundee.", False, True),  # the expected text's final full stop is not required
        ("Founded in 1997", "1998", False, False),
        ("moss   green and\nslate grey", "Moss green and slate grey", True, True),
        ("anything", "", False, False),  # an empty expected text never scores
    ],
)
def test_exact_match_and_contains(answer, expected, exact, within):
    assert exact_match(answer, expected) is exact
    assert contains(answer, expected) is within


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("The Burrowbot costs £1,649.", "649"),  # a piece of a longer number
        ("The Burrowbot costs £1649.", "649"),
        ("It runs for 17.5 hours on a charge.", "7.5 hours"),
        ("It weighs 111 kg.", "11 kg"),
        ("The warranty is 27.5 months.", "27"),
        ("Phone support opens at 17:30am.", "7:30am"),
        ("Please do your homework.", "home"),  # a piece of a longer word
        ("We use the Rootmapper app.", "Rootmap"),
    ],
)
def test_contains_needs_the_whole_phrase_not_a_piece_of_a_word_or_number(answer, expected):
    """These answers only share a piece of the expected text; a substring test (the scorer `tunelab compare` used)
    counted every one of them as correct."""
    assert expected.lower() in answer.lower()
    assert not contains(answer, expected)


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("The Burrowbot costs £649.", "649"),
        ("It costs 649 pounds", "649"),
        ("Our office is in Dundee's old town.", "Dundee"),
        ("Call 01632 960418, weekdays.", "01632 960418"),
        ("Email help@tallowmere.example.", "help@tallowmere.example"),
        ("It runs for 7.5 hours.", "7.5 hours"),
        ("(Dundee)", "Dundee"),
        ("Price: £649", "£649"),
    ],
)
def test_contains_finds_the_phrase_between_spaces_and_punctuation(answer, expected):
    assert contains(answer, expected)


def test_compare_and_eval_give_one_verdict():
    """`correct` is the verdict of both commands: the final full stop of the expected text is not required (the old
    compare scorer required it), and a label question is judged by the label named."""
    assert correct("It is in Dundee", "Dundee.")
    assert correct("Label: home.", "home", ["home", "work"]) and not correct("homework", "home", ["home", "work"])
    assert not correct("work, not home", "home", ["home", "work"])


def test_refused():
    sentence = "I can only answer questions about Tallowmere Robotics."
    assert refused("Sorry! I can only answer questions about Tallowmere Robotics", sentence)
    assert not refused("Boil it for 7 minutes.", sentence)


def test_rouge_l_values():
    scores = rouge_l(
        ["the cat sat", "the cat sat on the mat", "a b c d", "nothing shared", "Привет, мир!"],
        ["the cat sat on the mat", "The cat sat on the mat.", "d c b a", "at all here", "привет мир"],
    )
    # LCS 3 words: precision 3/3, recall 3/6 -> F1 = 2 * 1 * 0.5 / 1.5
    assert scores[0] == pytest.approx(2 / 3)
    assert scores[1] == pytest.approx(1.0)  # case and punctuation do not count
    assert scores[2] == pytest.approx(0.25)  # reversed order: the LCS is one word of four
    assert scores[3] == 0.0
    assert scores[4] == pytest.approx(1.0)  # non-ASCII words are words (rouge-score's default tokenizer drops them)


def test_text_scores_means():
    s = text_scores(["Dundee.", "It was 1997", "no idea"], ["Dundee", "1997", "Quarrel Lane"], refusal="no idea")
    assert s.n == 3
    assert s.exact_match == pytest.approx(1 / 3)
    assert s.contains == pytest.approx(2 / 3)
    assert s.rouge_l == pytest.approx((1.0 + 2 * 1 * (1 / 3) / (1 + 1 / 3) + 0.0) / 3)
    assert s.refusal_rate == pytest.approx(1 / 3)
    assert text_scores(["a"], ["a"]).refusal_rate is None
    with pytest.raises(ValueError):
        text_scores(["a"], ["a", "b"])


def test_predict_label():
    labels = ["positive", "negative", "very positive"]
    assert predict_label("Negative.", labels) == "negative"
    assert predict_label("I would say negative, not positive", labels) == "negative"  # the earliest named
    assert predict_label("This is very positive!", labels) == "very positive"  # the longest at the same place
    assert predict_label("The sentiment is unclear", labels) == NO_LABEL
    assert predict_label("positively", labels) == NO_LABEL  # whole words only
    assert predict_label("0", ["0", "1"]) == "0"


def test_a_denied_label_is_not_the_label_the_answer_names():
    """The answer "not refund" was scored as naming "refund", a correct answer for a refund row. A mention after a
    negation among the three words before it, in its clause, names no label; another mention may."""
    labels = ["refund", "billing", "spam"]
    assert predict_label("not refund", labels) == NO_LABEL
    assert predict_label("It is not a refund request, it is billing.", labels) == "billing"
    assert predict_label("This isn't billing; refund.", labels) == "refund"
    assert predict_label("Not billing but refund", labels) == "refund"
    assert predict_label("non-spam", labels) == NO_LABEL
    assert predict_label("No doubt, refund", labels) == "refund"  # the negation belongs to another clause
    assert predict_label("no", ["yes", "no"]) == "no" and predict_label("The answer is no.", ["yes", "no"]) == "no"
    assert predict_label("It is not positive", ["positive", "not positive"]) == "not positive"
    assert not correct("not refund", "refund", labels)


def test_label_scores_per_class_on_a_small_confusion():
    expected = ["a", "a", "a", "b", "b", "c"]
    predicted = ["a", "a", "b", "b", NO_LABEL, "c"]
    s = label_scores(expected, predicted, ["a", "b", "c"])
    assert s.n == 6
    assert s.accuracy == pytest.approx(4 / 6)
    a, b, c = s.per_class["a"], s.per_class["b"], s.per_class["c"]
    # a: 2 of 3 found, both predictions right; b: 1 of 2 found, 1 of its 2 predictions right; c: perfect
    assert (a.precision, a.recall, a.f1, a.support, a.predicted) == pytest.approx((1.0, 2 / 3, 0.8, 3, 2))
    assert (b.precision, b.recall, b.f1, b.support, b.predicted) == pytest.approx((0.5, 0.5, 0.5, 2, 2))
    assert (c.precision, c.recall, c.f1) == pytest.approx((1.0, 1.0, 1.0))
    assert s.macro_f1 == pytest.approx((0.8 + 0.5 + 1.0) / 3)
    assert s.confusion == {"a": {"a": 2, "b": 1}, "b": {"b": 1, NO_LABEL: 1}, "c": {"c": 1}}


def test_an_undefined_precision_or_recall_is_none_not_zero():
    """A class no answer predicted has no precision, one no row has no recall: both printed 0.000, as if the
    classifier were always wrong about it. They are None (n/a) now; F1 is 0 where one of them is defined, None where
    neither is, and macro F1 averages the classes with an F1 (scikit-learn's zero_division=0)."""
    s = label_scores(["x", "y"], ["x", "x"], ["x", "y", "z"])
    y, z = s.per_class["y"], s.per_class["z"]
    assert y.precision is None and y.recall == 0.0 and y.f1 == 0.0
    assert z.precision is None and z.recall is None and z.f1 is None
    assert s.per_class["x"].precision == 0.5 and s.per_class["x"].recall == 1.0
    assert s.macro_f1 == pytest.approx((2 / 3 + 0.0) / 2)
    never = label_scores(["x"], ["y"], ["x", "y"]).per_class["y"]  # predicted, but no row has it
    assert never.recall is None and never.precision == 0.0 and never.f1 == 0.0


def test_a_classify_evaluation_prints_n_a_for_an_undefined_score():
    from tunelab.eval.heads import HeadEvalResult, format_head_eval, head_eval_html

    scores = label_scores(["spam", "spam"], ["spam", "spam"], ["spam", "ham"]).to_dict()
    result = HeadEvalResult(
        task="classify", run_dir="run", data_file="t.jsonl", base_model="m", method="lora", device="cpu", created="",
        rows_read=2, truncated=0, tuned=scores, baseline=scores, baseline_name="majority class",
    )  # fmt: skip
    text = format_head_eval(result)
    assert text.startswith("eval of run (classify) on t.jsonl: 2 rows scored\n")
    assert format_head_eval(dataclasses.replace(result, rows_read=1)).splitlines()[0].endswith(": 1 row scored")
    one = format_head_eval(dataclasses.replace(result, truncated=1))
    assert "  1 input was longer than the run's max_length: its last tokens were kept" in one  # not "1 inputs were"
    assert "  ham                            n/a      n/a      n/a        0          0" in text
    assert "n/a: undefined, as no answer predicted the class (precision)" in text and "zero_division=0" in text
    assert '<td class="num">n/a</td>' in head_eval_html(result.to_dict())


def test_the_n_a_note_is_shown_only_under_a_table_with_an_n_a_cell():
    """`tunelab eval` of a classify run, its HTML section and the report's label tables explained n/a under every
    per-class table, also when every class had a precision, a recall and an F1 to show."""
    from tunelab.eval.heads import HeadEvalResult, format_head_eval, head_eval_html
    from tunelab.eval.report_inputs import Input
    from tunelab.eval.report_scores import eval_section

    rule = "n/a: undefined"
    for answers, undefined in ((["spam", "ham"], False), (["spam", "spam"], True)):
        scores = label_scores(answers, ["spam", "ham"], ["spam", "ham"]).to_dict()
        assert any(v is None for c in scores["per_class"].values() for v in c.values()) == undefined
        result = HeadEvalResult(
            task="classify", run_dir="run", data_file="t.jsonl", base_model="m", method="lora", device="cpu",
            created="", rows_read=2, truncated=0, tuned=scores, baseline=scores, baseline_name="majority class",
        )  # fmt: skip
        assert (rule in format_head_eval(result)) == undefined
        assert (rule in head_eval_html(result.to_dict())) == undefined
        saved = {"base": {"label_tasks": {"spam": scores}}, "tuned": {"label_tasks": {"spam": scores}}}
        section = eval_section(Input("eval.json", saved), Input("compare.json"))
        assert "per class" in section and (rule in section) == undefined


def test_macro_f1_leaves_out_a_label_no_row_has_and_no_answer_names():
    """tunelab eval averaged a run's label absent from the eval file as F1 0 (0.667 for a perfect run), where the
    run's own eval reported 1.0; the label stays in the per-class table."""
    s = label_scores(["pos", "neg", "pos"], ["pos", "neg", "pos"], ["neg", "neu", "pos"])
    assert s.macro_f1 == 1.0 and s.per_class["neu"].support == 0
    assert label_scores(["pos", "neg"], ["pos", "neu"], ["neg", "neu", "pos"]).macro_f1 == pytest.approx(1 / 3)
