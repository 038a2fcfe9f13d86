"""The tiny Llama and LoRA setup the memory model's tests work their sizes out by hand for.

L = 3, d = 64, 4 heads x 16 (q = 64), 2 kv heads (kv = 32), m = 96, V = 200, untied. LoRA r = 4 on the seven
projections, micro_batch 2 x seq 24: N = 48 tokens.
"""

from tunelab.models.llama_config import LlamaConfig
from tunelab.training.memory_setup import Setup

TINY_HF = dict(
    model_type="llama",
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=200,
    rms_norm_eps=1e-5,
    max_position_embeddings=128,
)
TINY = LlamaConfig.from_hf(TINY_HF)
LORA = Setup(method="lora", rank=4, micro_batch=2, seq=24)
