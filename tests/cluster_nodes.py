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
    """A TCP proxy on loopback in front of nats-server: `cut()` closes every connection through
    it and refuses new ones (as a network partition would, from that node's side), `heal()`
    lets connections through again."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"nats://127.0.0.1:{self.port}"
        self.open = True
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
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
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while self.open:
                chunk = source.recv(65536)
                if not chunk:
                    break
                sink.sendall(chunk)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.open = False
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def heal(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.listener.close()
