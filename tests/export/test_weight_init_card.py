"""The cards of a run whose adapter started from its weight (method.init pissa or olora): how it started and what it
is saved as, and over an NF4 base (QPiSSA) that it trained over the quantized residual and belongs over the 16-bit
base, which loading it needs to know."""

from pathlib import Path

import pytest

from tunelab.export.card import adapter_card, gguf_card, model_card
from tunelab.run_info import RunInfo


def _cards(info: RunInfo) -> dict[str, str]:
    gguf = Path("out/tiny.gguf")
    return {
        "push": adapter_card(info, "me/tiny", rank=16),
        "merge": model_card(info, "tiny", None, None),
        "gguf": gguf_card(info, gguf, "q8_0", gguf.with_suffix(".Modelfile"), None, None),
    }


@pytest.mark.parametrize(("init", "how"), [("pissa", "top-r singular vectors"), ("olora", "QR decomposition")])
def test_qpissa_cards_say_nf4_residual_and_the_16_bit_base(init, how):
    """Over an NF4 base the cards said nothing of the quantized residual: a user would load the rank-2r adapter over
    a 4-bit base, as QLoRA's is, or not know why it answers off what tunelab evaluated."""
    cards = _cards(RunInfo("tiny", "lora", quantize_base="nf4", init=init))
    for where, card in cards.items():
        flat = " ".join(card.split())
        assert how in flat and f"method.init {init}" in flat, where
        assert "quantized to NF4 (QPiSSA: method.quantize_base nf4" in flat, where
        assert "16-bit base" in flat and "NF4 rounding error" in flat, where
    push = " ".join(cards["push"].split())
    assert "plain LoRA of rank 16 (`r` in `adapter_config.json`) over the original 16-bit base" in push
    assert "load that base unquantized (not in 4 bits)" in push
    merged = " ".join(cards["merge"].split())
    assert "folded the plain LoRA of rank 2r it is saved as into the original 16-bit base, not an NF4 one" in merged


def test_pissa_cards_name_the_start_and_no_nf4():
    cards = _cards(RunInfo("tiny", "lora", init="pissa"))
    for where, card in cards.items():
        flat = " ".join(card.split())
        assert "principal components (PiSSA, method.init pissa)" in flat and "the base keeping the rest" in flat, where
        assert "NF4" not in flat and "QPiSSA" not in flat, where
    assert "plain LoRA of rank 16 (`r` in `adapter_config.json`) over the original base" in cards["push"].replace(
        "\n", " "
    )


def test_default_start_cards_say_nothing_of_it():
    for info in (RunInfo("tiny", "lora"), RunInfo("tiny", "lora", quantize_base="nf4")):
        for where, card in _cards(info).items():
            assert "method.init" not in card and "QPiSSA" not in card and "rank 2r" not in card, where
