"""The same ServerApp and ClientApp on Flower's deployment engine: a SuperLink, three SuperNodes and `flwr run`,
each a separate process talking HTTP over localhost as separate hosts would. One SuperNode's data file is missing:
its ClientApp fails, the failure is reported under the node's name with its reason, and the round goes on with the other two
(federated.min_clients = 2). One round: each ClientApp is a process of its own that loads torch and the model for
the one message it answers, seconds each on two cores; rounds after the first are the simulation tests' subject."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="the federated extra (flwr) is not installed")

from tunelab.cli import main  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    """Until something listens on the port (the SuperLink takes seconds to start, more on a busy machine)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the SuperLink exited: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"nothing listened on port {port} after {seconds:.0f} s: {log.read_text()[-2000:]}")


def _tool(name: str) -> str:
    found = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if found is None:
        pytest.skip(f"{name} (from flwr) is not on PATH")
    return found


@pytest.mark.slow
def test_deployment_engine_with_a_failing_supernode(tmp_path, tiny_model_dir, federate_config):
    config = federate_config(tmp_path, tiny_model_dir, clients=3, min_clients=2, rounds=1)
    app = tmp_path / "app"
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "PYTHONUNBUFFERED": "1",
        # the SuperLink starts flower-superexec from PATH: the venv's bin may not be on it (make test does not activate)
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    # Writing the app starts nothing: the CLI's main in this process (the federation below is all processes of its own)
    assert main(["federate", str(config), "--app-dir", str(app)]) == 0
    link = _free_port()
    (tmp_path / "flwr-home").mkdir()
    (tmp_path / "flwr-home" / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{link}"\ninsecure = true\n'
    )
    nodes = [
        ("site0", tmp_path / "site0.jsonl"),
        ("site1", tmp_path / "site1.jsonl"),
        ("site2", tmp_path / "gone.jsonl"),
    ]
    processes = []
    try:
        logs = tmp_path / "logs"
        logs.mkdir()

        def start(name: str, *args) -> None:
            out = (logs / f"{name}.log").open("w")
            processes.append(
                subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            )

        start("superlink", _tool("flower-superlink"), "--insecure", "--port", str(link))
        _wait_for_port(link, processes[0], logs / "superlink.log")
        for name, data in nodes:
            node_config = f"data='{data}' name='{name}'"
            start(name, _tool("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link}",
                  "--port", str(_free_port()), "--node-config", node_config)  # fmt: skip
        run = subprocess.run([_tool("flwr"), "run", str(app), "test", "--stream"],
                             capture_output=True, text=True, env=env, timeout=900)  # fmt: skip
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)

    run_dir = tmp_path / "run"
    state = json.loads((run_dir / "federated.json").read_text())
    assert state["rounds_done"] == 1 and len(state["history"]) == 1
    assert sorted(state["clients"]) == ["site0", "site1", "site2"]
    for report in state["history"]:
        assert report["applied"]
        status = {c["client"]: (c["status"], c["reason"] or "") for c in report["clients"]}
        assert status.pop("site0")[0] == status.pop("site1")[0] == "ok"
        kind, reason = status.pop("site2")  # named as its SuperNode names itself, though it never trained
        assert kind == "failed" and "gone.jsonl: no such file or folder on this host" in reason, reason
    info = json.loads((run_dir / "run.json").read_text())
    assert info["finished"] and info["extra"]["federated"]["complete"]
    assert (run_dir / "adapter_model.safetensors").is_file()
