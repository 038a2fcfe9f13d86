"""The ClientApp: Flower calls it with the global adapter; it trains locally (local.py) and replies with its own.

The same ClientApp runs in the simulation engine (where the SuperNode's `partition-id` picks the client from the
config's list) and on a real SuperNode (where `--node-config "data='...'"` names the node's own files).
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

# The key Flower's DP strategy wrappers put in the train config; importing it keeps the two sides in step.
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from tunelab.errors import TunelabError, counted
from tunelab.federated.payload import (
    ARRAYS,
    CLIENT,
    CONFIG,
    METRICS,
    RATE_KEYS,
    RECIPE,
    ROUND,
    ROUNDS,
    UNIFORM_WEIGHT,
    WARMUP,
    WEIGHT,
    from_record,
    recipe_config,
    to_record,
)
from tunelab.federated.setup import flower_verbose, without_flower_lines_in_this_process
from tunelab.federated.shards import ClientData, from_node_config, node_name


def clip_when_asked(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's fixedclipping_mod (clip the update to the server's clipping_norm) when the server runs DP; a
    plain pass-through otherwise, so one ClientApp serves both."""
    config = msg.content.config_records.get(CONFIG)
    if config is not None and KEY_CLIPPING_NORM in config:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


def train_reply(msg: Message, client: ClientData, echo: bool = True) -> Message:
    """Train this client on the message's global adapter; the reply holds the new adapter and a few numbers. `echo`:
    print the client's own line of the round (its host's log)."""
    # torch and the training stack, imported for a round: Flower's deployment engine starts a ClientApp process for
    # every message, and the one answering the server's name query (`query` below) needs none of it
    from tunelab.federated.local import local_train

    config = msg.content[CONFIG]
    round_ = int(config[ROUND])
    received = msg.content[ARRAYS]
    result = local_train(
        recipe_config(str(config[RECIPE])),
        client,
        from_record(received),
        round_,
        int(config[ROUNDS]),
        float(config.get("proximal-mu", 0.0)),
        int(config[WARMUP]) if WARMUP in config else None,  # a server before it was sent: rounds x ratio
    )
    if echo:
        print(
            f"{client.name}: round {round_}: {result.steps} step{'' if result.steps == 1 else 's'} on "
            f"{counted(result.examples, 'training row')}, "
            f"train loss {result.loss:.4f}, {result.seconds:.0f} s",
            flush=True,
        )
    metrics = MetricRecord(
        {
            WEIGHT: result.examples,
            UNIFORM_WEIGHT: 1,
            "train-loss": result.loss,
            "local-steps": result.steps,
            "loss-tokens": result.loss_tokens,
            "tokens": result.tokens,
            "train-seconds": result.seconds,
        }
    )
    arrays = to_record({key: result.adapter[key] for key in received.keys()})  # the order the server sent
    # the rates (lr, lr-B) go with the name, not the metrics: Flower aggregates MetricRecords only when every reply
    # has the same keys, which a client of an earlier version (none) beside this one would break
    said = {"name": client.name, "dtype": result.dtype} | {RATE_KEYS[key]: r for key, r in result.rates.items()}
    content = RecordDict({ARRAYS: arrays, METRICS: metrics, CLIENT: ConfigRecord(said)})
    return Message(content, reply_to=msg)


def failed_reply(msg: Message, error: Exception) -> Message:
    """A failed round's reply: the error's own message (a TunelabError's says what and where; another's is named by
    its type), which the server prints in its round line. Left to Flower, the reason was the error's whole traceback
    (in the simulation Ray's, with its terminal colours: 3,000 characters inside one line); an unexpected error's
    traceback goes to this client's own log instead. Replying also lets go of the round's model at once."""
    if not isinstance(error, TunelabError):
        traceback.print_exception(error)
    reason = str(error) if isinstance(error, TunelabError) else f"{type(error).__name__}: {error}"
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)


def make_client_app(clients: Sequence[ClientData] | None = None) -> ClientApp:
    """`clients` for the simulation engine (SuperNode partition i is clients[i]); None on real SuperNodes, which
    name their data in their node config. A real SuperNode prints each round's line in its own log; the simulation's
    clients would print theirs among the server's, through Ray (prefixed with the worker's pid, folded into Ray's
    notices of repeated lines), which already hold the same numbers: only with FLWR_LOG_LEVEL set."""
    app = ClientApp(mods=[clip_when_asked])
    echo = clients is None or flower_verbose()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        try:
            if clients is not None:
                # Flower's warning as the simulation ends and stops each worker: its normal shutdown, not a problem
                without_flower_lines_in_this_process("Manually terminating ClientAppActor")
                client = clients[int(context.node_config["partition-id"])]
            else:
                client = from_node_config(dict(context.node_config))
            return train_reply(msg, client, echo)
        except Exception as error:  # the round's failure, as the client's reply
            return failed_reply(msg, error)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        """The client's name, which the server asks before the node first trains (payload.py): nothing is loaded."""
        if clients is not None:
            name = clients[int(context.node_config["partition-id"])].name
        else:
            name = node_name(dict(context.node_config))
        return Message(RecordDict({CLIENT: ConfigRecord({"name": name})}), reply_to=msg)

    return app
