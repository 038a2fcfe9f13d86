"""Step-1 gradients of a small bf16 QLoRA model on CUDA, groups on vs off, per parameter (diagnostic)."""

import torch

from tunelab.kernels import select
from tunelab.models.llama import LlamaConfig, LlamaForCausalLM
from tunelab.peft.group import set_grouping
from tunelab.peft.lora import attach_lora
from tunelab.quant.linear import materialize_quantized_

cfg = dict(
    model_type="llama",
    hidden_size=1024,
    intermediate_size=2752,
    num_hidden_layers=2,
    num_attention_heads=8,
    num_key_value_heads=8,
    vocab_size=3000,
    rms_norm_eps=1e-5,
    max_position_embeddings=512,
)
ids = torch.randint(0, 3000, (4, 256), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
grads = {}
for group in (False, None):
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig.from_hf(cfg), select("auto"))
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    materialize_quantized_(model, "cuda", init_std=0.02)
    attach_lora(model, ["all-linear"], r=16, alpha=16)
    model.gradient_checkpointing = "offload"
    set_grouping(model, group)
    loss_sum, count = model.train()(ids, labels=ids)
    (loss_sum / count).backward()
    grads[group] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
for name, g in grads[False].items():
    h = grads[None][name]
    print(
        f"{name:55s} nonzero {int((g != 0).sum()):8d} vs {int((h != 0).sum()):8d}  |g| {g.abs().max().item():.3e} "
        f"|h| {h.abs().max().item():.3e}  maxdiff {(g - h).abs().max().item():.3e}"
    )
