"""A linear head on each row's last real token: the model side of the classify and reward tasks.

    hidden = body(input_ids, attention_mask)                  # (B, T, d) after the final norm; no LM head at all
    pooled = hidden[b, last real token of row b]              # (B, d)
    logits = pooled @ score.weight^T                          # (B, K); K = 1 for a reward model

`SequenceClassifier` holds the body of a causal LM (our fast `LlamaModel`, or the transformers base model) under
the name transformers gives it (`model` for the Llama family) and the head as `score`, so its parameter names are
those of transformers' `*ForSequenceClassification`: checkpoints, the saved full weights and the PEFT adapter keys
(`base_model.model.model.layers...`, the head as `modules_to_save`) are what transformers and PEFT expect.

The last real token is found from the attention mask (the rightmost position whose mask is 1), so right padding (our
batches) and left padding both work. transformers finds it as the rightmost token that is not the pad token; the two
agree whenever a row does not end with the pad token itself. Chat rows end with the template's generation prompt or
an answer's end of turn, which may be the EOS token (llama2's `</s>`), and the EOS often pads: the run is saved with
another pad token then (`pooling_pad`). Text rows end with the text's last token (no EOS is appended).
The head is fp32 (master weights, like the LoRA adapters) and reads the hidden state cast to fp32. Its initial
weights come from a generator seeded with the run's seed, so the untrained head can be rebuilt for comparison.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn

from tunelab.config import RunConfig
from tunelab.errors import ConfigError, ModelError, RunDirError
from tunelab.models.llama import LlamaForCausalLM, LlamaModel
from tunelab.models.load import ModelSource, damaged_weights, pick_device
from tunelab.models.quiet import quiet_progress
from tunelab.peft.lora_linear import float_weight
from tunelab.peft.save import load_adapter, save_adapter, saved_module
from tunelab.run_info import RunInfo
from tunelab.rundir import read_json_object
from tunelab.tasks.task import save_tokenizer
from tunelab.training.build import BuiltModel, run_dtype, trained_base

HEAD = "score"  # transformers' name for the head of *ForSequenceClassification (Llama, Mistral, Qwen, Gemma, GPT-2)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of each row's last real token: the largest t with attention_mask[b, t] == 1 (0 for an empty row)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(dim=1)


class SequenceClassifier(nn.Module):
    """body + score: logits (B, K) fp32 from the hidden state of each row's last real token."""

    def __init__(self, body: nn.Module, score: nn.Linear, prefix: str = "model"):
        super().__init__()
        self.prefix = prefix
        self.add_module(prefix, body)  # the name transformers uses, so parameter names match its classifier's
        self.score = score

    @property
    def body(self) -> nn.Module:
        return self.get_submodule(self.prefix)

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, T, d) after the body's final norm."""
        body = self.body
        if isinstance(body, LlamaModel):  # our fast decoder
            return body(input_ids, position_ids, attention_mask)
        return body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        hidden = self.hidden_states(input_ids, attention_mask, position_ids)  # (B, T, d)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        pooled = hidden[rows, last_token_index(attention_mask)]  # (B, d)
        return self.score(pooled.float())  # (B, K)


def head_learning_rates(cfg) -> dict[str, float]:
    """The head's own learning rate (classify.head_lr) for the optimizer, when one is set."""
    return {HEAD: cfg.classify.head_lr} if cfg.classify.head_lr is not None else {}


def new_score(hidden_size: int, num_labels: int, seed: int, std: float, device: torch.device) -> nn.Linear:
    """An fp32 head N(0, std) drawn from its own generator seeded with `seed`: the same head for the same seed, whatever
    else consumed random numbers before it (LoRA's initialisation does)."""
    score = nn.Linear(hidden_size, num_labels, bias=False, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        score.weight.copy_(torch.randn(score.weight.shape, generator=generator) * std)
    return score.to(device)


def _text_config(hf_config):
    return hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config


def attach_head(built: BuiltModel, num_labels: int, seed: int, label_tokens: list[list[int]] | None = None) -> None:
    """Replace the causal LM of `built` by its body plus a trainable head of `num_labels` outputs, in place. The LM
    head is dropped (its weight stays only where it is tied to the embedding). `label_tokens` (classify.head_init
    label_words): per output, token ids whose LM-head rows it starts from, averaged:

        score.weight[k] = mean_t W_lm[label_tokens[k][t]]       # (d,): logit_k = mean_t (h . W_lm[t])

    so the untrained head gives each label the mean of the LM's next-token logits of its words, at the pooled token
    (with a prompt ending in a cue, the model's own guess of the label; prompt-based fine-tuning, Gao et al. 2021)."""
    lm = built.model
    if isinstance(lm, LlamaForCausalLM):
        body, prefix, lm_head = lm.model, "model", lm.lm_head
    else:
        body, prefix, lm_head = lm.base_model, lm.base_model_prefix, lm.get_output_embeddings()
    config = _text_config(built.hf_config)
    score = new_score(config.hidden_size, num_labels, seed, getattr(config, "initializer_range", 0.02), built.device)
    if label_tokens is not None:
        if lm_head is None:
            raise ConfigError(
                "option 'classify.head_init' is label_words, which starts the head from the model's LM head; this "
                "model has none. Use classify.head_init random."
            )
        weight = float_weight(lm_head)  # (V, d) fp32; an NF4 head dequantized
        with torch.no_grad():
            for k, ids in enumerate(label_tokens):
                score.weight[k].copy_(weight[ids].mean(dim=0))
    kept = {id(p) for p in body.parameters()}
    dropped = [p for p in (lm_head.parameters() if lm_head is not None else []) if id(p) not in kept]
    built.model = SequenceClassifier(body, score, prefix)
    built.total += score.weight.numel() - sum(p.numel() for p in dropped)
    built.trainable += score.weight.numel() - sum(p.numel() for p in dropped if p.requires_grad)


def continue_head(built: BuiltModel, adapter: str | None, labels: list[str]) -> bool:
    """Load the head saved with `adapter` (model.adapter: a classify or reward run, or PEFT's adapter of a sequence
    classifier) into the head `attach_head` made, to train on from there, as the adapter's layers go on training;
    False when the adapter holds no head (an sft run's: the head is new). ConfigError when the saved head has other
    labels (config.json's id2label, where the folder has it) or another number of outputs."""
    if not adapter:
        return False
    folder = Path(adapter).expanduser()
    saved = saved_module(folder, HEAD)
    if saved is None:
        return False
    theirs = run_labels(folder) if (folder / "config.json").is_file() else []
    if theirs and theirs != labels:
        raise ConfigError(
            f"option 'model.adapter': the head saved in {folder} has the labels {theirs}, but this run's head has "
            f"{labels} (a reward model's: ['reward']); a continued head keeps its labels. Give the training rows the "
            "same labels (and the run the same task), or start a new adapter."
        )
    score = built.model.score
    if saved.keys() != {"weight"} or saved["weight"].shape != score.weight.shape:
        shapes = {k: tuple(v.shape) for k, v in saved.items()}
        raise ConfigError(
            f"option 'model.adapter': the head saved in {folder} ({shapes}) does not fit this run's head of "
            f"{score.weight.shape[0]} outputs over {score.weight.shape[1]} features. Start a new adapter."
        )
    with torch.no_grad():
        score.weight.copy_(saved["weight"])
    return True


def head_config(hf_config, labels: list[str], pad_token_id: int | None, prompt_format: str | None = None):
    """The transformers config of the classifier: the causal LM's, with the labels and the sequence-classification
    architecture (what AutoModelForSequenceClassification reads), and the run's classify.prompt_format when it has
    one (`prompt_format`: transformers keeps the extra key; a user formats texts with it before tokenizing)."""
    config = copy.deepcopy(hf_config)
    config.architectures = [
        a.replace("ForCausalLM", "ForSequenceClassification") for a in hf_config.architectures or []
    ]
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.pad_token_id = pad_token_id
    config.use_cache = True  # training switched it off; inference wants it back
    if prompt_format is not None:
        config.prompt_format = prompt_format
    return config


def save_head_run(folder: Path, built: BuiltModel, tokenizer, cfg: RunConfig, data, labels: list[str]) -> None:
    """The run's result, written into `folder`, loadable by transformers + PEFT:
    lora, dora: adapter_model.safetensors + adapter_config.json (task SEQ_CLS, the head as modules_to_save) and
          config.json (the classifier's config, for id2label / label2id);
    full, layers: model.safetensors + config.json of a *ForSequenceClassification model;
    and the tokenizer with the chat template the rows were written with (`save_tokenizer`)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = pooling_pad(tokenizer)
    model, base_model, method, prompt_format = built.model, cfg.model.name, cfg.method.name, cfg.classify.prompt_format
    if method in ("lora", "dora"):  # method.name dora (not only lora with use_dora) trains an adapter too
        save_adapter(model, folder, base_model=base_model, task_type="SEQ_CLS", modules_to_save=[HEAD])
    else:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    head_config(built.hf_config, labels, tokenizer.pad_token_id, prompt_format).save_pretrained(folder)
    save_tokenizer(tokenizer, folder, cfg, data)


def pooling_pad(tokenizer):
    """The tokenizer a head run saves: its pad token, unless that is the EOS token, which ends the rows of a template
    that closes answers with EOS (llama2, Mistral's `</s>`, Llama 3's `<|eot_id|>` where that is the EOS) and which
    the loader made the pad token where the tokenizer had none. transformers pools at the rightmost token that is not
    the config's pad token, so on such a row it read the token before the EOS, and a reward model loaded there scored
    otherwise than here. Then the UNK or else the BOS token pads (a copy of the tokenizer; no row ends with either);
    the head itself reads the attention mask and is unchanged."""
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id != tokenizer.eos_token_id:
        return tokenizer
    for token in (tokenizer.unk_token, tokenizer.bos_token):
        if token is not None and token != tokenizer.eos_token:
            saved = copy.deepcopy(tokenizer)
            saved.pad_token = token
            return saved
    return tokenizer


def load_head_model(run_dir: Path, info: RunInfo, device: str = "auto", dtype: str = "auto") -> SequenceClassifier:
    """The classifier of a finished classify or reward run, in eval mode, on the generic path (the transformers body):
    the base model with the adapter and head of a LoRA run (a QLoRA run's base quantized to NF4 again, as it was
    trained), or the saved weights of a full or layers run."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    dev = pick_device(device, "argument 'device'")  # the CLI checked its --device first
    quantize = info.nf4_again
    dt = run_dtype(info, dtype, dev, quantize)
    try:
        config = AutoConfig.from_pretrained(run_dir, trust_remote_code=info.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{run_dir}: the classifier's config.json cannot be read ({exc}).") from None
    if info.is_adapter:
        lm = trained_base(info, dt, dev, quantize)
        body, prefix = lm.base_model, lm.base_model_prefix
        score = nn.Linear(_text_config(config).hidden_size, config.num_labels, bias=False, dtype=torch.float32)
        model = SequenceClassifier(body, score, prefix)
        load_adapter(model, run_dir)
    else:
        try:
            with quiet_progress():
                hf = AutoModelForSequenceClassification.from_pretrained(
                    run_dir, dtype=dt, use_safetensors=True, trust_remote_code=info.trust_remote_code
                )
        except (OSError, ValueError) as exc:
            raise ModelError(f"{run_dir}: the classifier's weights cannot be loaded ({exc}).") from None
        except SafetensorError as exc:
            source = ModelSource(str(run_dir), str(run_dir))
            raise damaged_weights(source, exc, "Train the run again (overwriting it), or copy it again.") from None
        model = SequenceClassifier(hf.base_model, hf.score.float(), hf.base_model_prefix)
    return model.to(dev).eval()


def run_labels(run_dir: Path) -> list[str]:
    """The labels of a head run, in the order of the head's outputs (config.json's id2label), read as JSON: through
    AutoConfig, a model with its own code would need that code just to name its labels."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise RunDirError(f"{run_dir}: a head run without its config.json, which names the labels.")
    config = read_json_object(path, "the head run cannot be opened")
    id2label = config.get("id2label") or {}
    return [id2label[str(i)] for i in range(len(id2label))]
