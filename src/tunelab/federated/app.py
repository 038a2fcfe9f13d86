"""The ServerApp and ClientApp that Flower's deployment engine loads by name (`tunelab.federated.app:server_app`,
`...:client_app`), as the Flower App written by `tunelab federate CONFIG --app-dir DIR` names them.

The server reads the config from the run config; each SuperNode names its own data in its node config. Flower starts
a process for each message a SuperNode answers, and each imports this module: the server's side (server.py: torch,
the model, the training stack) is imported when the ServerApp runs, so that a ClientApp process answering the
server's name query loads none of it (client.py imports the training stack for a round alike).
"""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from tunelab.federated.client import make_client_app

server_app = ServerApp()


@server_app.main()
def _federation(grid: Grid, context: Context) -> None:
    from tunelab.federated.server import run_deployment

    run_deployment(grid, context)


client_app = make_client_app()
