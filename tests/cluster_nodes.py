"""Cluster nodes for tests: daemon processes joined to the test's own nats-server.

Each node is a real daemon process with its own var directory and socket, started with
KSI_CLUSTER_NATS_URL and KSI_NODE_ID (the `nats_server` fixture of conftest.py gives the
server: loopback, JetStream, `sync_interval: always`). Test modules import the helpers and the
`two_nodes` fixture from here, and `CuttableProxy`, which stands in for the server when a test
cuts one node off (anything with a `url` can be given as `nats_server`).
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time

import pytest

from conftest import DaemonProcess

WITHIN_S = 10.0  # generous bounds for what should take milliseconds to a second or two


def node_process(workdir, nats_server, node_id: str, config: dict | None = None
                 ) -> DaemonProcess:
    (workdir / node_id).mkdir(exist_ok=True)
    return DaemonProcess(workdir / node_id, config,
                         env={"KSI_CLUSTER_NATS_URL": nats_server.url, "KSI_NODE_ID": node_id})


def start_node(workdir, nats_server, node_id: str, config: dict | None = None
               ) -> DaemonProcess:
    """A node started and serving: its JetStream stores are set up."""
    node = node_process(workdir, nats_server, node_id, config).start()
    wait_for(lambda: node.request("system:health")["data"]["cluster"]["jetstream"])
    return node


def wait_for(condition, within: float = WITHIN_S, seen=None):
    """`condition()` true within `within` s; else fail, showing `seen()` if given."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if result or time.monotonic() > deadline:
            assert result, f"not within {within} s" + (f": {seen()}" if seen else "")
            return result
        time.sleep(0.05)


@pytest.fixture
def two_nodes(workdir, nats_server):
    nodes = [start_node(workdir, nats_server, "node-a"), start_node(workdir, nats_server, "node-b")]
    yield nodes
    for node in nodes:
        node.stop()


@contextlib.asynccontextmanager
async def shared_agent_store(nats_server):
    """The cluster's KvAgentStore, in this test's process, on its own node connection: what
    another node reads through the agent plugin's seam."""
    from ksi_daemon.config import ClusterSettings
    from ksi_daemon.plugins.cluster.kv_agents import KvAgentStore
    from ksi_daemon.plugins.cluster.node import ClusterNode
    node = ClusterNode(ClusterSettings(nats_url=nats_server.url, node_id="reader").model_dump(),
                       lambda reason: None)
    store = KvAgentStore(node, "ksi_agents", 1, 2.0)
    running = asyncio.ensure_future(node.run())
    try:
        for _ in range(200):
            if node.jetstream_ok:
                break
            await asyncio.sleep(0.05)
        assert node.jetstream_ok, node.last_error
        yield store
    finally:
        running.cancel()
        await node.close()


class CuttableProxy:
    """A TCP proxy on loopback in front of nats-server. `cut()` is a partition as the network
    makes one: bytes already on their way are dropped silently in both directions (no reset,
    no close: the node notices only by its own pings and timeouts), and new connections are
    refused; `cut(silently=False)` closes the connections instead (the node notices at once).
    `heal()` lets new connections through again; the cut ones are closed then."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"nats://127.0.0.1:{self.port}"
        self.passing = True
        self.generation = 0  # connections of an older generation were cut
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.passing:
                client.close()
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink, self.generation),
                                 daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, generation: int) -> None:
        try:
            while True:
                chunk = source.recv(65536)
                if not chunk:
                    break
                if self.passing and generation == self.generation:
                    sink.sendall(chunk)  # else dropped: the partition
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self, silently: bool = True) -> None:
        self.passing = False
        self.generation += 1
        if not silently:
            self._close_cut()

    def heal(self) -> None:
        self._close_cut()
        self.passing = True

    def _close_cut(self) -> None:
        with self.lock:
            cut, self.sockets = self.sockets, []
        for sock in cut:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.cut()
        self.heal()
        self.listener.close()
