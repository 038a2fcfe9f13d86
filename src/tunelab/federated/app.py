"""The ServerApp and ClientApp that Flower's deployment engine loads by name (`tunelab.federated.app:server_app`,
`...:client_app`), as the Flower App written by `tunelab federate CONFIG --app-dir DIR` names them.

The server reads the config from the run's run config; each SuperNode names its own data in its node config.
"""

from tunelab.federated.client import make_client_app
from tunelab.federated.server import make_server_app

server_app = make_server_app()
client_app = make_client_app()
