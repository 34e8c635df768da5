"""Helpers shared by the cluster-mode tests: daemon processes as nodes of one nats-server,
waiting for what the cluster brings in its own time, and a TCP proxy to cut one node off."""
from __future__ import annotations

import socket
import threading
import time

from conftest import DaemonProcess, data_of

WITHIN_S = 10.0  # generous bounds for what should take milliseconds to a second or two


def node_process(workdir, nats_url: str, node_id: str, config: dict | None = None
                 ) -> DaemonProcess:
    (workdir / node_id).mkdir(exist_ok=True)
    return DaemonProcess(workdir / node_id, config,
                         env={"KSI_CLUSTER_NATS_URL": nats_url, "KSI_NODE_ID": node_id})


def wait_for(condition, within: float = WITHIN_S):
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if result or time.monotonic() > deadline:
            assert result, f"not within {within} s"
            return result
        time.sleep(0.05)


def start_node(workdir, nats_url: str, node_id: str, config: dict | None = None
               ) -> DaemonProcess:
    node = node_process(workdir, nats_url, node_id, config).start()
    wait_for(lambda: data_of(node.request("system:health"))["cluster"]["jetstream"])
    return node


class CuttableProxy:
    """A TCP proxy on loopback in front of nats-server. `cut()` is a partition as the network
    makes one: bytes already on their way are dropped silently in both directions (no reset,
    no close: the node notices only by its own pings and timeouts), and new connections are
    refused. `heal()` lets new connections through again; the cut ones are closed then."""

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

    def cut(self) -> None:
        self.passing = False
        self.generation += 1

    def heal(self) -> None:
        with self.lock:
            cut, self.sockets = self.sockets, []
        for sock in cut:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self.passing = True

    def close(self) -> None:
        self.cut()
        self.heal()
        self.listener.close()
