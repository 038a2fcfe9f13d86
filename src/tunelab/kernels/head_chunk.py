"""How many tokens the fused LM head + loss takes at a time, from the vocabulary size."""

# The fused LM head + loss works through the tokens in chunks, holding one (chunk, V) block of bf16 logits at a time.
# A fixed chunk of tokens made that block grow with the vocabulary: 4096 tokens x 128,256 (Llama 3) are 1 GiB, the
# largest buffer of an 8B QLoRA step. The chunk is sized instead so that a block stays within 2^27 logits (256 MiB
# in bf16): 4096 tokens at V 32,000 (Llama 2, as before), 2048 at 49,152, 1024 at 128,256, 512 at 151,936.
HEAD_BLOCK_LOGITS = 2**27
HEAD_CHUNK_RANGE = (256, 4096)


def head_chunk_tokens(vocab_size: int) -> int:
    """Tokens per chunk of the fused LM head + loss for a vocabulary of `vocab_size`: the largest power of two whose
    (chunk, V) logits block stays within HEAD_BLOCK_LOGITS, kept within HEAD_CHUNK_RANGE."""
    low, high = HEAD_CHUNK_RANGE
    fits = max(1, HEAD_BLOCK_LOGITS // max(1, vocab_size))
    return max(low, min(high, 1 << (fits.bit_length() - 1)))
