"""The tiny model of the task device tests: a 2-layer random Llama over a word-level tokenizer of WORDS, so that a few
steps on a phrase task show a loss or a preference moving, on the CPU or a GPU."""

from pathlib import Path

import torch

WORDS = "good great fine happy nice bad awful sad poor ugly the a is it very was movie day food".split()


def save_word_llama(path: Path, tiny_llama_config, chat_template: str | None = None) -> Path:
    """The model (the tiny Llama's shape, from the tiny_llama_config fixture) and its tokenizer ([PAD] 0, [UNK] 1,
    [EOS] 2, then WORDS) saved as a Hugging Face folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[EOS]", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    torch.manual_seed(0)
    config = tiny_llama_config(tokenizer)  # pad 0, eos 2, no bos
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
