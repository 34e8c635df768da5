"""Cluster nodes for tests: daemon processes joined to the test's own nats-server.

Each node is a real daemon process with its own var directory and socket, started with
KSI_CLUSTER_NATS_URL and KSI_NODE_ID (the `nats_server` fixture of conftest.py gives the
server: loopback, JetStream, `sync_interval: always`). Test modules import the helpers and the
`two_nodes` fixture from here.
"""
from __future__ import annotations

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


def wait_for(condition, within: float = WITHIN_S):
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if result or time.monotonic() > deadline:
            assert result, f"not within {within} s"
            return result
        time.sleep(0.05)


@pytest.fixture
def two_nodes(workdir, nats_server):
    nodes = [start_node(workdir, nats_server, "node-a"), start_node(workdir, nats_server, "node-b")]
    yield nodes
    for node in nodes:
        node.stop()
