"""Helpers for the federated tests: Flower messages built without a running federation."""

import time

import pytest


def message(content, dst_node_id: int, src_node_id: int = 0, message_id: str = "m"):
    """A Flower message with explicit metadata (no Flower run needed)."""
    from flwr.app import Message, MessageType, Metadata

    metadata = Metadata(
        run_id=1,
        message_id=message_id,
        src_node_id=src_node_id,
        dst_node_id=dst_node_id,
        reply_to_message_id="",
        group_id="",
        created_at=time.time(),
        ttl=3600.0,
        message_type=MessageType.TRAIN,
    )
    return Message(content, metadata=metadata)


@pytest.fixture
def flower_task(monkeypatch):
    """The identity Flower's messages are stamped with inside a run (a strategy builds messages from it)."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


@pytest.fixture
def flower_message():
    """`message(content, dst_node_id, src_node_id=0)`: a Flower message outside a run."""
    return message
