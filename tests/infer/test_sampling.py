"""What sampling draws from: the options given, and nothing a library adds unasked."""

import torch

from tunelab.infer.generate import GenerationSettings
from tunelab.infer.run import open_run


def test_sampling_draws_from_the_whole_distribution_top_p_leaves(tiny_run_dir):
    """--temperature 1 (or a server request's "temperature": 1) sampled from the 50 most likely tokens only:
    transformers adds its default top_k 50 (or the one a model's generation_config sets) to a sampling generate
    that does not set it, a filter no option of tunelab (or OpenAI's API) names. With top_p 1 every token can be
    drawn now."""
    run = open_run(tiny_run_dir, device="cpu")
    prompt = torch.tensor([run.tokenizer("Code of box 3?")["input_ids"]] * 40)  # (40, T): 40 draws of one token
    with torch.no_grad():
        top50 = set(run.model(prompt[:1]).logits[0, -1].topk(50).indices.tolist())
    torch.manual_seed(0)
    kwargs = GenerationSettings(max_new_tokens=1, temperature=1.0).kwargs(run.template, run.tokenizer)
    out = run.model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), **kwargs)
    drawn = out[:, -1].tolist()
    # the tiny random model's next-token distribution is near uniform over ~49k tokens: a draw lands in its top 50
    # about once in a thousand
    assert sum(t not in top50 for t in drawn) > 20, drawn
