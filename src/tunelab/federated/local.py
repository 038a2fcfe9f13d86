"""A client's local training for one round: tunelab's model build, data pipeline and train step, on its own data.

The client starts from the global adapter, trains `federated.local_steps` optimizer steps and returns its adapter.
Everything that decides a step is a pure function of (seed, client name, round), so a round can be re-run, and a
resumed federation trains exactly as an uninterrupted one would:

- data: the client's micro-batches form one endless stream, epoch after epoch, each epoch shuffled by
  (train.seed, epoch) as in `tunelab train` (train.group_by_length too); round r's step g
  (g = (r-1) * local_steps + i) takes micro-batches [g * grad_accum, (g+1) * grad_accum) of that stream, so every
  step holds grad_accum micro-batches;
- learning rate: the run's schedule over rounds * local_steps steps, at step g, its warmup the steps the server
  sends (those the federation started with, which a resume with more rounds keeps);
- `auto` training options: the same on every client (`federation_plan`): the rate from the model's width, the
  micro-batch MICRO_BATCH, the warmup from rounds * local_steps, never from a client's own rows;
- optimizer: a fresh AdamW each round (its moments are the client's, and would mix data across rounds unseen by
  the server's average);
- NEFTune (train.neftune_alpha): noise on the input embeddings of the client's training forwards, drawn from the
  round's seed;
- FedProx: the proximal term (mu/2) ||w - w_global||^2 over the adapter weights enters through the gradients
  (see `proximal_term`), so `train_step` itself is the one every tunelab run uses;
- model.fix_untrained_tokens: the base's untrained embedding rows are repaired before the global adapter is loaded,
  the same rows as on the server and every other client (`untrained_rows`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from tunelab.config import AUTO, DataConfig, MethodConfig, RunConfig, TrainConfig
from tunelab.data.batches import make_batches
from tunelab.data.formats import PREFERENCE_ADVICE
from tunelab.data.loader import Datasets, build_datasets
from tunelab.data.packing import Packed
from tunelab.data.sources import Record
from tunelab.errors import DataError, TunelabError
from tunelab.federated.hostpaths import check_on_this_host
from tunelab.federated.payload import load_adapter_state
from tunelab.federated.shards import ClientData
from tunelab.models.load import load_tokenizer, resolve_source
from tunelab.models.untrained import UntrainedReport, every_token, find_untrained, repair_rows
from tunelab.peft.save import adapter_state_dict
from tunelab.training.auto import MICRO_BATCH, AutoPlan, Choice, ModelShape, model_shape, plan_from_data
from tunelab.training.build import build_model, checkpoint_mode
from tunelab.training.loss_scale import LossScale, uses_loss_scale
from tunelab.training.neftune import add_embedding_noise, noise_width
from tunelab.training.optim import build_optimizer, rate_groups
from tunelab.training.schedule import lr_factor
from tunelab.training.step import train_step


@dataclass
class LocalResult:
    adapter: dict[str, torch.Tensor]
    examples: int  # training examples the client holds (FedAvg's weight: `training_examples`)
    loss: float  # mean token loss over the round's steps
    loss_tokens: int
    tokens: int  # the real (non-pad) tokens of the round's batches, as tunelab train counts them in run.json
    steps: int
    seconds: float
    dtype: str = ""  # what the client trained in (model.dtype auto: its own host's choice), as run.json names it
    # the rates the round's first local step ran at, by their metrics.jsonl keys: lr, and lr_B with LoRA+
    rates: dict[str, float] = dataclasses.field(default_factory=dict)


def client_datasets(data_cfg: DataConfig, tokenizer, seed: int, client: ClientData) -> Datasets:
    """The client's rows through tunelab's data pipeline: its files, or its shard of a shared file, read with its
    own format, fields and delimiter where its entry of federated.clients sets them; no eval split (the server
    evaluates)."""
    select = None
    if client.shard is not None:
        shard = client.shard

        def select(records: list[Record]) -> list[Record]:
            kept = shard.select(records)
            if not kept:
                raise DataError(
                    f"{', '.join(client.paths)}: {client.name}'s shard is empty ({len(records)} rows for "
                    f"{shard.count} clients); lower federated.num_clients."
                )
            if shard.column is None or shard.column in data_cfg.fields.values():
                return kept
            # federated.split_column has chosen the shard: it is read, not text the format leaves out of the examples
            # (each client noted it so, and how to train on it); a column data.fields maps stays for its field
            return [dataclasses.replace(r, row={k: v for k, v in r.row.items() if k != shard.column}) for r in kept]

    with sft_advice():
        return build_datasets(client.data_config(data_cfg), tokenizer, seed, select=select, option=client.fields_option)


# What a federation says of preference pairs in place of the data reader's advice (task dpo), which it refuses.
FEDERATED_PREFERENCE = (
    " Rows of chosen and rejected are preference pairs, which tunelab federate cannot train: a federation trains task "
    "sft alone (the answers of chats, prompt/completion pairs or raw text), and refuses task dpo. Give {who} its "
    "preferred answers as sft rows ({{prompt, completion}} with the chosen answer), or train the pairs apart with "
    "tunelab train, task: dpo."
)


@contextmanager
def sft_advice(who: str = "this client") -> Iterator[None]:
    """A DataError of the data reader whose advice is to train preference pairs with task dpo says instead what a
    federation can do with them: it trains sft alone (run.check_config refuses another task)."""
    try:
        yield
    except DataError as exc:
        if PREFERENCE_ADVICE not in str(exc):
            raise
        raise DataError(str(exc).replace(PREFERENCE_ADVICE, FEDERATED_PREFERENCE.format(who=who))) from None


def training_examples(datasets: Datasets) -> int:
    """FedAvg's weight n_k: the rows the client trains on before packing, i.e. its chat examples and its text
    blocks of data.max_length. A text document is one example of the data report but as many rows as its blocks, so
    counting documents weighed a client holding one long document as one example."""
    return sum(len(row.doc_lengths) if isinstance(row, Packed) else 1 for row in datasets.train)


def server_eval_datasets(cfg: RunConfig, tokenizer) -> Datasets:
    """The server's own eval set (data.eval) through the pipeline, as its training rows: no split of it. Its errors
    say it is the server's eval set, whose rows the reader took for training rows ('no usable training examples'
    read as a client's)."""
    data_cfg = dataclasses.replace(cfg.data, train=[cfg.data.eval], eval=None, eval_fraction=0.0)
    try:
        with sft_advice("the server's eval set (data.eval)"):
            data = build_datasets(data_cfg, tokenizer, cfg.train.seed)
    except TunelabError as exc:
        said = str(exc).replace("training examples", "eval examples")
        raise type(exc)(f"the server's eval set (option 'data.eval'): {said}") from None
    data.report.unread.held = data.report.unread.rows  # eval rows only: the data report says they are evaluated
    return data


def untrained_rows(model: nn.Module, tokenizer, fix: bool) -> UntrainedReport:
    """model.fix_untrained_tokens in a federation: the untrained embedding (and untied head) rows of every token the
    tokenizer has, set to the mean of the trained rows when `fix`, as tunelab train repairs those its data uses.

    tunelab train picks the rows its data uses; a federation cannot: the server never sees a client's data, and
    every client must train over the base the others train over and the server evaluates and saves (its rows go to
    run.json, and opening the run repeats them). So the rows come from the base and the tokenizer alone, the same
    on the server and on every client: a superset of the rows any client's data uses (rows past the tokenizer's
    vocabulary, which no data can use, are left as they are, as train leaves them)."""
    report = UntrainedReport(find_untrained(model, every_token(tokenizer, len(tokenizer)), tokenizer))
    if report.tokens and fix:
        repair_rows(model, report.rows())
        report.repaired = True
    return report


def client_seed(seed: int, name: str, round_: int) -> int:
    """A seed per (run seed, client, round) for dropout: stable across processes (no Python hash)."""
    digest = 0
    for ch in f"{seed}:{name}:{round_}":
        digest = (digest * 131 + ord(ch)) % (2**61 - 1)
    return digest


class BatchStream:
    """Micro-batches of one client, epoch after epoch; `step(g)` is the g-th optimizer step's grad_accum of them."""

    def __init__(self, datasets: Datasets, config: RunConfig, pad_id: int):
        self.rows, self.t, self.shuffle, self.pad_id = datasets.train, config.train, config.data.shuffle, pad_id
        self.per_epoch = -(-len(self.rows) // self.t.micro_batch)
        self.epochs: dict[int, list[dict]] = {}

    def _epoch(self, epoch: int) -> list[dict]:
        if epoch not in self.epochs:
            self.epochs = {
                epoch: make_batches(
                    self.rows,
                    self.t.micro_batch,
                    self.pad_id,
                    shuffle=self.shuffle,
                    seed=self.t.seed,
                    epoch=epoch,
                    group_by_length=self.t.group_by_length,
                )
            }
        return self.epochs[epoch]

    def step(self, g: int) -> list[dict]:
        first = g * self.t.grad_accum
        return [self._epoch(i // self.per_epoch)[i % self.per_epoch] for i in range(first, first + self.t.grad_accum)]


@contextmanager
def proximal_term(
    model: nn.Module, mu: float, micro_batches: int, loss_scale: LossScale | None = None
) -> Iterator[None]:
    """FedProx: add the gradient of (mu/2) ||w - w_global||^2, i.e. mu (w - w_global), to each trainable weight.

    w_global is the weight as the block starts (the global adapter just loaded). `train_step` runs backward once
    per micro-batch and the gradients add up, so each backward adds mu (w - w_global) / micro_batches: the step's
    gradient then holds the term once, before clipping and the optimizer, exactly as if it were in the loss. In
    fp16 the backward's gradients are multiplied by the loss scale (training/loss_scale.py), so the term is too: the
    step divides both by it."""
    if mu <= 0:
        yield
        return
    handles = []

    def scale() -> float:  # read at each backward: the step moves it
        return loss_scale.scale if loss_scale is not None else 1.0

    for p in model.parameters():
        if p.requires_grad:
            anchor = p.detach().clone()
            handles.append(
                p.register_hook(
                    lambda g, p=p, anchor=anchor: g + (scale() * mu / micro_batches) * (p.detach() - anchor)
                )
            )
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def federation_plan(train: TrainConfig, method: MethodConfig, shape: ModelShape, total_steps: int) -> AutoPlan:
    """The training options every client trains with, `auto` resolved by the federation's rules, never from a client's
    own data: FedAvg averages updates of one local procedure (the same rate, micro-batch and steps on every client, as
    Flower's strategies send one config to all), and `tunelab train`'s data rule for the micro-batch (a small set's cut
    for ~32 steps an epoch) has no epochs to serve here, where local_steps sets the length. So an `auto` micro-batch is
    MICRO_BATCH on every client, the rate comes from the model's width, and the warmup from rounds x local_steps."""
    return federation_auto(train, total_steps).with_lr(method, shape)


def federation_auto(train: TrainConfig, total_steps: int) -> AutoPlan:
    """`federation_plan` but for the rate, which needs the model (`tunelab check` reads it without one)."""
    fixed = train.micro_batch if train.micro_batch != AUTO else MICRO_BATCH
    federation = dataclasses.replace(train, max_steps=total_steps, micro_batch=fixed)
    plan = plan_from_data(federation, 0, False)  # the examples count is read by no rule left
    if train.micro_batch == AUTO:
        why = "the same on every client (a federation trains local_steps steps a round, not epochs of its data)"
        plan.chosen = {"train.micro_batch": Choice(fixed, why)} | plan.chosen
    plan.chosen.pop("train.eval_every", None)  # the server evaluates after every round
    return plan


def local_train(
    config: RunConfig,
    client: ClientData,
    global_adapter: dict[str, torch.Tensor],
    round_: int,
    rounds: int,
    mu: float,
    warmup: int | None = None,
) -> LocalResult:
    """Round `round_` (1-based) of `rounds` for this client: returns its adapter after local_steps steps. `warmup`:
    the federation's warmup steps as the server sent them (kept as the federation started when a resume adds
    rounds); None: train.warmup_ratio of rounds x local_steps."""
    tic = time.perf_counter()
    check_on_this_host(config, client.label)  # a SuperNode host without the server's model path says so
    steps = config.federated.local_steps
    torch.manual_seed(client_seed(config.train.seed, client.name, round_))
    source = resolve_source(config.model.name, config.model.revision)
    tokenizer = load_tokenizer(source, config.model.trust_remote_code)
    datasets = client_datasets(config.data, tokenizer, config.train.seed, client)
    built = build_model(source, config.model, config.method, checkpoint_mode(config.train))
    untrained_rows(built.model, tokenizer, config.model.fix_untrained_tokens)  # the server's rows: same base, same ids
    load_adapter_state(built.model, global_adapter)
    t = federation_plan(config.train, config.method, model_shape(built.hf_config), rounds * steps).train
    config = dataclasses.replace(config, train=t)

    if t.neftune_alpha:  # on training forwards only; the model is this round's, so the hook is never removed
        add_embedding_noise(built.model, t.neftune_alpha, noise_width(config.data))
    optimizer = build_optimizer(built.model, t.lr, t.weight_decay, t.optimizer, loraplus_ratio=t.loraplus_lr_ratio)
    total, first = rounds * steps, (round_ - 1) * steps
    warmup = int(t.warmup_ratio * total) if warmup is None else warmup
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(first + s, total, warmup, t.scheduler))
    at_start = scheduler.get_last_lr()  # the rates the round's first step runs at, as train logs each step's
    groups = rate_groups(optimizer, built.model, t.lr, t.loraplus_lr_ratio, None)
    rates = {"lr": at_start[0]} | {key: at_start[index] for key, index in groups.items()}
    stream = BatchStream(datasets, config, tokenizer.pad_token_id)
    loss_sum, loss_tokens, tokens = 0.0, 0, 0
    loss_scale = LossScale() if uses_loss_scale(built.dtype) else None  # fp16: a round's own, from the start value
    with proximal_term(built.model, mu, t.grad_accum, loss_scale):
        for g in range(first, first + steps):
            group = [{k: v.to(built.device) if torch.is_tensor(v) else v for k, v in b.items()} for b in stream.step(g)]
            stats = train_step(built.model, group, optimizer, scheduler, t.max_grad_norm, loss_scale=loss_scale)
            loss_sum += stats["loss"] * stats["loss_tokens"]
            loss_tokens += stats["loss_tokens"]
            tokens += sum(int(b["attention_mask"].sum()) for b in group)
    return LocalResult(
        adapter=adapter_state_dict(built.model),
        examples=training_examples(datasets),
        loss=loss_sum / max(loss_tokens, 1),
        loss_tokens=loss_tokens,
        tokens=tokens,
        steps=steps,
        seconds=time.perf_counter() - tic,
        dtype=str(built.dtype).removeprefix("torch."),
        rates=rates,
    )
