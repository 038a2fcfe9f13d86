"""The suite's warning filters (pyproject.toml): a deprecation warning raised from tunelab's code fails the test that
meets it, so a call of an API its library deprecated is seen the day the library deprecates it; one a third-party
library raises from its own code does not."""

import warnings

import pytest


def _warn_from(module: str, category: type[Warning]) -> None:
    """warnings.warn called from code of `module`, as the warnings machinery sees the caller."""
    code = compile("import warnings\nwarnings.warn('old way', category)", f"<{module}>", "exec")
    exec(code, {"__name__": module, "category": category})


@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning])
def test_a_deprecation_raised_from_tunelab_fails_the_test(category):
    with pytest.raises(category, match="old way"):
        _warn_from("tunelab.training.step", category)


def test_a_third_party_librarys_own_deprecation_does_not():
    """PEFT's PeftModel reads transformers' is_gradient_checkpointing, which transformers 5.2x deprecates: the
    warning is transformers', raised in its own module, and the tests that open a run with PEFT go on."""
    with warnings.catch_warnings(record=True) as seen:
        _warn_from("transformers.modeling_utils", FutureWarning)
    assert [str(w.message) for w in seen] == ["old way"]
