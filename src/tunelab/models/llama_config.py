"""The configuration of tunelab's Llama-family decoder (`models.llama`), read from a Hugging Face config.

`LlamaConfig.from_hf` takes a `transformers.PretrainedConfig` or a config.json dict; `unsupported_reason` names the
one field that rules our implementation out (the loader then takes the generic transformers path).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tunelab.errors import ModelError

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
ROPE_KINDS = ("default", "linear", "llama3")
_REQUIRED_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
_MOE_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size", "num_experts_per_tok")


# --------------------------------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding frequencies: theta^(-2i/D), optionally rescaled for a longer context."""

    theta: float = 10000.0
    """Base wavelength (`rope_theta`)."""
    kind: str = "default"
    """"default" (plain), "linear" (all frequencies / factor) or "llama3" (Llama 3.1 band-wise rescaling)."""
    factor: float = 1.0
    """Context extension factor of "linear" and "llama3"."""
    low_freq_factor: float = 1.0
    """"llama3": wavelengths above original_max_position_embeddings / low_freq_factor are divided by factor."""
    high_freq_factor: float = 4.0
    """"llama3": wavelengths below original_max_position_embeddings / high_freq_factor are kept."""
    original_max_position_embeddings: int = 8192
    """"llama3": the context length of pretraining."""


@dataclass(frozen=True)
class LlamaConfig:
    """Everything the decoder needs, read from a Hugging Face config by `from_hf`."""

    family: str
    """Hugging Face model_type: one of SUPPORTED_FAMILIES."""
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    """Grouped-query attention: each key/value head serves num_heads // num_kv_heads query heads."""
    head_dim: int
    """May differ from hidden_size // num_heads (Qwen3, some Llama variants)."""
    rms_norm_eps: float = 1e-6
    rope: RopeConfig = field(default_factory=RopeConfig)
    qkv_bias: bool = False
    """Bias on q_proj/k_proj/v_proj (always on for Qwen2; `attention_bias` for Llama and Qwen3)."""
    o_bias: bool = False
    """Bias on o_proj (`attention_bias` for Llama and Qwen3; never for Qwen2)."""
    mlp_bias: bool = False
    """Bias on gate_proj/up_proj/down_proj (Llama's `mlp_bias`)."""
    qk_norm: bool = False
    """RMSNorm over head_dim of each query and key head before rope (Qwen3)."""
    tie_word_embeddings: bool = False
    """lm_head shares its weight with model.embed_tokens."""
    max_position_embeddings: int = 2048
    """Informational: the context length the checkpoint was trained for."""

    @classmethod
    def from_hf(cls, hf_config: Any) -> LlamaConfig:
        """Read a `transformers.PretrainedConfig` or a config.json dict; `ModelError` names the field we cannot run."""
        cfg = _config_dict(hf_config)
        reason = _unsupported_reason(cfg)
        if reason is not None:
            raise ModelError(
                f"tunelab's llama-family model cannot run this config: {reason}. "
                "Load the model through the generic transformers path instead."
            )
        family = cfg["model_type"]
        hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        head_dim = _head_dim(cfg)
        attention_bias = bool(cfg.get("attention_bias", False))
        return cls(
            family=family,
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope=_rope_config(cfg),
            qkv_bias=True if family == "qwen2" else attention_bias and family in ("llama", "qwen3"),
            o_bias=attention_bias and family in ("llama", "qwen3"),
            mlp_bias=bool(cfg.get("mlp_bias", False)) and family == "llama",
            qk_norm=family == "qwen3",
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            max_position_embeddings=int(cfg.get("max_position_embeddings") or 2048),
        )


def supports(hf_config: Any) -> bool:
    """True when `LlamaConfig.from_hf` accepts this config; otherwise the loader takes the generic transformers path."""
    return unsupported_reason(hf_config) is None


def unsupported_reason(hf_config: Any) -> str | None:
    """None if supported, else one sentence naming the config field that rules our implementation out."""
    try:
        return _unsupported_reason(_config_dict(hf_config))
    except ModelError as err:
        return str(err)


def _config_dict(hf_config: Any) -> dict[str, Any]:
    if isinstance(hf_config, Mapping):
        return dict(hf_config)
    to_dict = getattr(hf_config, "to_dict", None)
    if to_dict is None:
        raise ModelError(f"expected a transformers config or a dict, got {type(hf_config).__name__}")
    return to_dict()


def _head_dim(cfg: Mapping[str, Any]) -> int:
    if cfg.get("head_dim"):
        return int(cfg["head_dim"])
    if cfg["model_type"] == "qwen3":
        return 128  # Qwen3Config's default; its head_dim is independent of hidden_size
    return int(cfg["hidden_size"]) // int(cfg["num_attention_heads"])


def _unsupported_reason(cfg: Mapping[str, Any]) -> str | None:
    family = cfg.get("model_type")
    if family not in SUPPORTED_FAMILIES:
        return f"`model_type` is {family!r}; supported: {', '.join(SUPPORTED_FAMILIES)}"
    for name in _REQUIRED_FIELDS:
        if cfg.get(name) is None:
            return f"config field `{name}` is missing (model_type {family!r})"
    for name in _MOE_FIELDS:
        if cfg.get(name):
            return f"`{name}` = {cfg[name]!r}: mixture-of-experts layers are not implemented"
    act = cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        return f"`hidden_act` is {act!r}; only silu (SwiGLU) is implemented"
    quantization = cfg.get("quantization_config")
    if quantization:
        method = quantization.get("quant_method", "?") if isinstance(quantization, Mapping) else "?"
        return f"`quantization_config` ({method}): pre-quantized checkpoints are not read by our modules"
    if float(cfg.get("attention_dropout") or 0.0) > 0.0:
        return f"`attention_dropout` = {cfg['attention_dropout']}: our attention has no dropout"
    sliding = _active_sliding_window(cfg)
    if sliding is not None:
        return sliding
    heads, kv_heads = cfg.get("num_attention_heads"), cfg.get("num_key_value_heads") or cfg.get("num_attention_heads")
    if heads and kv_heads and heads % kv_heads:
        return f"`num_attention_heads` {heads} is not a multiple of `num_key_value_heads` {kv_heads}"
    head_dim = _head_dim(cfg)
    if head_dim % 2:
        return f"head_dim {head_dim} is odd; rotary embedding needs pairs"
    try:
        _rope_config(cfg)
    except ModelError as err:
        return str(err)
    return None


def _active_sliding_window(cfg: Mapping[str, Any]) -> str | None:
    """A reason if some layer attends through a window shorter than the model's context, else None."""
    family = cfg["model_type"]
    layer_types = cfg.get("layer_types") or []
    if any(t != "full_attention" for t in layer_types):
        other = sorted(set(layer_types) - {"full_attention"})
        return f"`layer_types` contains {other}: only full attention is implemented"
    if family in ("qwen2", "qwen3"):
        # Qwen keeps a `sliding_window` value around but uses it only when `use_sliding_window` is true.
        if cfg.get("use_sliding_window") and cfg.get("sliding_window") is not None:
            window = cfg["sliding_window"]
            return f"`use_sliding_window` is true (window {window}): sliding-window attention is not implemented"
    elif family == "mistral":
        window = cfg.get("sliding_window", 4096)  # transformers' MistralConfig default
        context = cfg.get("max_position_embeddings") or 0
        if window is not None and window < context:
            return (
                f"`sliding_window` = {window} is shorter than `max_position_embeddings` = {context}: "
                "sliding-window attention is not implemented"
            )
    return None


def _rope_config(cfg: Mapping[str, Any]) -> RopeConfig:
    """Rope settings from transformers 5's `rope_parameters` or the older `rope_theta` + `rope_scaling` fields."""
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    source = "rope_parameters" if cfg.get("rope_parameters") else "rope_scaling"
    if params and all(isinstance(v, Mapping) for v in params.values()):
        # Nested per layer type (transformers 5): usable only if every layer type has the same rope.
        nested = list(params.values())
        if any(p != nested[0] for p in nested):
            raise ModelError(f"`{source}` differs per layer type ({', '.join(params)}); only one rope is implemented")
        params = nested[0]
    theta = float(params.get("rope_theta") or cfg.get("rope_theta") or 10000.0)
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind not in ROPE_KINDS:
        raise ModelError(f"`{source}.rope_type` is {kind!r}; supported: {', '.join(ROPE_KINDS)}")
    partial = params.get("partial_rotary_factor", cfg.get("partial_rotary_factor"))
    if partial is not None and float(partial) != 1.0:
        raise ModelError(f"`partial_rotary_factor` is {partial}; only full-width rope is implemented")
    if kind == "default":
        return RopeConfig(theta=theta)
    factor = params.get("factor")
    if factor is None:
        raise ModelError(f"`{source}.factor` is missing for rope_type {kind!r}")
    if kind == "linear":
        return RopeConfig(theta=theta, kind=kind, factor=float(factor))
    for name in ("low_freq_factor", "high_freq_factor"):
        if params.get(name) is None:
            raise ModelError(f"`{source}.{name}` is missing for rope_type 'llama3'")
    original = params.get("original_max_position_embeddings") or cfg.get("max_position_embeddings")
    if original is None:
        raise ModelError(f"`{source}.original_max_position_embeddings` is missing for rope_type 'llama3'")
    return RopeConfig(
        theta=theta,
        kind=kind,
        factor=float(factor),
        low_freq_factor=float(params["low_freq_factor"]),
        high_freq_factor=float(params["high_freq_factor"]),
        original_max_position_embeddings=int(original),
    )
