"""Low-bit storage formats, their pure-PyTorch references and their Triton kernels, side by side.

- NF4 (QLoRA's frozen base): `nf4` (the format and reference), `nf4_triton` (kernels), `nf4_ops` (the switch between
  them by device, and the scratch buffer weights are dequantized into), `linear` (the frozen NF4 linear layer, and
  putting it into a model).
- 8-bit block-wise optimizer moments (AdamW8bit): `codes` (bitsandbytes' dynamic codes, shared with NF4's double
  quantization), `adamw8bit` (the format and the update reference), `adamw8bit_triton` (the kernel).

Nothing here imports Triton at import time but the `*_triton` modules, which the others load only for CUDA tensors.
"""
