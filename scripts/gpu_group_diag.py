"""Loss trajectories of a small bf16 QLoRA model on CUDA with groups on/off and checkpointing modes (diagnostic)."""

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
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=8,
    vocab_size=3000,
    rms_norm_eps=1e-5,
    max_position_embeddings=512,
)
ids = torch.randint(0, 3000, (4, 256), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
for method in ("qlora",):
    for ckpt, chunk in (("offload", 300), ("offload", None), (True, 300)):
        for group in (False, None):
            torch.set_default_dtype(torch.bfloat16)
            with torch.device("meta"):
                model = LlamaForCausalLM(LlamaConfig.from_hf(cfg), select("auto"))
            torch.set_default_dtype(torch.float32)
            torch.manual_seed(0)
            if method == "qlora":
                materialize_quantized_(model, "cuda", init_std=0.02)
            else:
                model = model.to_empty(device="cuda")
                model.init_weights(std=0.02)
            attach_lora(model, ["all-linear"], r=16, alpha=16)
            model.gradient_checkpointing = ckpt
            set_grouping(model, group)
            for layer in model.model.layers:
                layer.mlp_chunk_tokens = chunk
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=2e-4, fused=True)
            losses, norms = [], []
            for _ in range(4):
                loss_sum, count = model.train()(ids, labels=ids)
                (loss_sum / count).backward()
                norms.append(torch.nn.utils.clip_grad_norm_(params, 1.0).item())
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(round((loss_sum / count).item(), 5))
            with torch.no_grad():
                ls, c = model.eval()(ids, labels=ids)
            print(
                method,
                ckpt,
                chunk,
                "group" if group is None else "nogroup",
                losses,
                [round(n, 5) for n in norms],
                "eval",
                round((ls / c).item(), 5),
            )
