"""The fused head's chunk of tokens follows the vocabulary, and the default chunk gives the loss of any other."""

import pytest
import torch

from tunelab.kernels import reference
from tunelab.kernels.head_chunk import head_chunk_tokens


@pytest.mark.parametrize(
    "vocab, tokens",
    [(200, 4096), (32000, 4096), (32768, 4096), (32769, 2048), (49152, 2048), (128256, 1024), (151936, 512),
     (10**7, 256)],
)  # fmt: skip
def test_chunk_keeps_a_logits_block_within_2_27(vocab, tokens):
    assert head_chunk_tokens(vocab) == tokens
    assert tokens * vocab <= 2**27 or tokens == 256


def test_reference_default_chunk_matches_an_explicit_one():
    torch.manual_seed(0)
    hidden, weight = torch.randn(300, 16, dtype=torch.float64), torch.randn(40000, 16, dtype=torch.float64)
    labels = torch.randint(0, 40000, (300,))
    labels[::7] = -100
    assert head_chunk_tokens(40000) == 2048
    default = reference.linear_cross_entropy(hidden, weight, labels)
    assert torch.allclose(default, reference.linear_cross_entropy(hidden, weight, labels, chunk_size=64))
    logp = reference.linear_log_probs(hidden, weight, labels)
    assert torch.allclose(logp, reference.linear_log_probs(hidden, weight, labels, chunk_size=64))
