"""The server tests choose their API key themselves: one set in the environment ($TUNELAB_API_KEY, read by
`tunelab serve`, tunelab.serve() and start_server() alike) would make the servers they start without one require
it."""

import pytest


@pytest.fixture(autouse=True)
def _no_key_from_the_environment(monkeypatch):
    monkeypatch.delenv("TUNELAB_API_KEY", raising=False)
