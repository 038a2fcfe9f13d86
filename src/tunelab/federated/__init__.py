"""Federated fine-tuning on Flower: clients train the LoRA adapter on data that never leaves them; a server averages.

Flower (`flwr`) does the transport, the rounds and the aggregation strategies; this package supplies what is
tunelab's: which data a client holds (shards.py), the client's local training with tunelab's own model build,
data pipeline and train step (local.py, client.py), what travels in a message (payload.py), and the server's run
directory, evaluation and per-round records (server.py, rounds.py, history.py). run.py starts it all, either in
Flower's simulation engine on one machine or as a Flower App for its deployment engine (app.py).
"""
