"""What travels between the server and a client, and nothing else: adapter tensors, a recipe, a few numbers.

    server -> client (a TRAIN message)
      arrays   ArrayRecord   the global adapter: PEFT keys base_model.model.<module>.lora_{A,B}.weight, fp32
      config   ConfigRecord  tunelab-round, tunelab-rounds, tunelab-warmup (the warmup steps the federation
                             started with, kept when a resume adds rounds), tunelab-recipe (the run config as YAML
                             with the server's data paths removed: hostpaths.py), and what Flower's strategies add (server-round,
                             proximal-mu for FedProx, clipping_norm for DP)
    client -> server (the reply)
      arrays   ArrayRecord   the client's adapter after its local steps, same keys in the same order
      metrics  MetricRecord  num-examples (FedAvg's weight: the client's training rows), uniform-weight (1: DP
                             weighs clients equally), train-loss, local-steps, loss-tokens (the tokens its loss is
                             averaged over), tokens (the real, non-pad tokens it trained on, prompts included:
                             run.json's tokens), train-seconds
      client   ConfigRecord  name, dtype (what it trained in), lr, lr-B (with LoRA+ only; both the rates the round's
                             first local step ran at: not metrics, which Flower aggregates only when every reply has
                             the same keys)

    server -> client (a QUERY message, once per node before it first trains)
      config   ConfigRecord  tunelab-ask: name
    client -> server (the reply)
      client   ConfigRecord  name (a client that then fails, or never replies, is reported by it, not by node id)

No record holds text from a client's data: the only strings a client sends are its name and, when its round
fails, the error's message (client.py). Sizes are Flower's own measure (`count_bytes`: tensor bytes plus key names),
the one its message_size_mod logs.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import yaml
from flwr.app import ArrayRecord, RecordDict

from tunelab.config import RunConfig, dump_yaml
from tunelab.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where a tensor is handled: a ClientApp process that only names its client
    import torch  # (client.py) loads none of it
    from torch import nn

ARRAYS, CONFIG, METRICS, CLIENT = "arrays", "config", "metrics", "client"
ROUND, ROUNDS, RECIPE, WARMUP = "tunelab-round", "tunelab-rounds", "tunelab-recipe", "tunelab-warmup"
RATE_KEYS = {"lr": "lr", "lr_B": "lr-B"}  # a client's rates: metrics.jsonl's key -> the reply's metric
WEIGHT, UNIFORM_WEIGHT = "num-examples", "uniform-weight"
ASK = "tunelab-ask"


def to_record(state: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord.from_torch_state_dict({k: v.detach().float().cpu() for k, v in state.items()})


def from_record(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return dict(record.to_torch_state_dict())


def mismatch(record: ArrayRecord, expected: dict[str, tuple[tuple[int, ...], str]]) -> str | None:
    """Why `record` cannot be averaged with the global adapter (keys, shapes and dtypes of `expected`), or None."""
    keys = list(record.keys())
    missing = sorted(set(expected) - set(keys))
    unexpected = sorted(set(keys) - set(expected))
    if missing or unexpected:
        return f"adapter keys differ (missing {missing[:2]}, unexpected {unexpected[:2]})"
    for key in keys:
        array = record[key]
        shape, dtype = tuple(array.shape), str(array.dtype)
        if (shape, dtype) != expected[key]:
            return f"{key} is {dtype}{list(shape)}, the global adapter's is {expected[key][1]}{list(expected[key][0])}"
    return None


def layout(record: ArrayRecord) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(a.shape), str(a.dtype)) for k, a in record.items()}


def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy PEFT-keyed LoRA weights into the model's LoRA layers; every key must match, with its shape."""
    import torch

    from tunelab.peft.lora import lora_modules
    from tunelab.peft.save import PREFIX, adapter_state_dict

    own = adapter_state_dict(model)
    if set(own) != set(state):
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        raise ConfigError(
            f"the received adapter does not fit this model (missing {missing[:2]}, unexpected {unexpected[:2]}); "
            "server and client must use the same model.name and method options."
        )
    with torch.no_grad():
        for name, m in lora_modules(model):
            for part in ("lora_A", "lora_B"):
                value = state[f"{PREFIX}{name}.{part}.weight"]
                weight = getattr(m, part).weight
                if value.shape != weight.shape:
                    raise ConfigError(
                        f"the received adapter's {name}.{part} is {list(value.shape)}, this model's is "
                        f"{list(weight.shape)}: server and client must use the same method.r and model."
                    )
                weight.copy_(value)


def payload_bytes(content: RecordDict) -> int:
    return sum(record.count_bytes() for record in content.values())


def recipe_text(config: RunConfig) -> str:
    """The run config as sent to clients: everything that says how to train, none of the server's data paths (the
    base model and a data.transform's file it names at the server's paths: hostpaths.py)."""
    recipe = dataclasses.replace(
        config,
        output_dir="",
        data=dataclasses.replace(config.data, train=[], eval=None),
        eval=dataclasses.replace(config.eval, questions=None),
        federated=dataclasses.replace(config.federated, clients=[], split_file=None),
    )
    return dump_yaml(recipe)


def recipe_config(text: str) -> RunConfig:
    """The inverse of recipe_text: a RunConfig from the YAML the server sent."""
    raw = yaml.safe_load(text)
    config = RunConfig()
    for section, values in raw.items():
        target = getattr(config, section, None)
        if dataclasses.is_dataclass(target):
            for key, value in values.items():
                if not hasattr(target, key):
                    raise ConfigError(f"the server's recipe has an unknown option '{section}.{key}': update tunelab.")
                setattr(target, key, value)
        elif hasattr(config, section):
            setattr(config, section, values)
        else:
            raise ConfigError(f"the server's recipe has an unknown option '{section}': update tunelab.")
    return config
