"""Cluster mode on a three-server NATS cluster: every JetStream store replicated three times (R3).

docs/CLUSTER.md's "Three hosts" runs KSI over an R3 NATS cluster so that losing one NATS server
loses nothing. Here the three servers run on loopback (their own route ports, JetStream with
`sync_interval: always`), and two KSI nodes, each given all three URLs and `replicas: 3`, share
the state through them. One server is killed with SIGKILL: the nodes go on (after nats-py
reconnects to another server and JetStream elects new leaders), and every write acknowledged
before the kill is still there.
"""
from __future__ import annotations

import signal
import subprocess
import time

import pytest

from cluster_nodes import wait_for
from conftest import DaemonProcess, data_of
from ksi_daemon.control.local_nats import free_loopback_port, start_nats_server

ELECTION_S = 60.0  # a lost server's streams elect new leaders within seconds; generous under load


class NatsCluster:
    def __init__(self, directory, size: int = 3):
        self.directory = directory
        self.ports = [free_loopback_port() for _ in range(size)]
        self.route_ports = [free_loopback_port() for _ in range(size)]
        self.processes: list[subprocess.Popen | None] = [None] * size
        self.urls = [f"nats://127.0.0.1:{port}" for port in self.ports]

    def start(self, index: int) -> None:
        self.processes[index], _url = start_nats_server(
            self.directory / f"nats-{index}", self.ports[index],
            log_file=self.directory / f"nats-{index}.log",
            cluster=(self.route_ports[index], self.route_ports))

    def kill(self, index: int) -> None:
        self.processes[index].send_signal(signal.SIGKILL)
        self.processes[index].wait(10)

    def stop_all(self) -> None:
        for process in self.processes:
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@pytest.fixture
def nats_cluster(workdir):
    cluster = NatsCluster(workdir)
    for index in range(3):
        cluster.start(index)
    yield cluster
    cluster.stop_all()


def r3_node(workdir, cluster: NatsCluster, node_id: str) -> DaemonProcess:
    (workdir / node_id).mkdir()
    node = DaemonProcess(workdir / node_id, {"cluster": {"replicas": 3}},
                         env={"KSI_CLUSTER_NATS_URL": ",".join(cluster.urls),
                              "KSI_NODE_ID": node_id}).start()
    # The first node creates the R3 buckets and streams once the servers have a JetStream
    # leader among them.
    wait_for(lambda: node.request("system:health")["data"]["cluster"]["jetstream"],
             within=ELECTION_S)
    return node


def written(node: DaemonProcess, key: str, value) -> bool:
    """A write, acknowledged or not: while leaders are elected it may answer `unavailable`."""
    reply = node.request("state:set", {"namespace": "r3", "key": key, "value": value})
    if "error" in reply:
        assert reply["error"]["code"] == "unavailable", reply
        return False
    return True


def value_on(node: DaemonProcess, key: str):
    reply = node.request("state:get", {"namespace": "r3", "key": key})
    return reply.get("data", {}).get("value") if "data" in reply else None


def cluster_health(node: DaemonProcess) -> dict:
    return data_of(node.request("system:health"))["cluster"]


def test_losing_one_of_three_nats_servers_loses_no_acknowledged_write(workdir, nats_cluster):
    a, b = r3_node(workdir, nats_cluster, "node-a"), r3_node(workdir, nats_cluster, "node-b")
    try:
        for n in range(20):
            assert written(a, f"before-{n}", n)
        wait_for(lambda: value_on(b, "before-19") == 19)

        nats_cluster.kill(0)

        # The cluster serves writes again once nats-py moved to a live server and the
        # streams that had their leader on the dead one elected another.
        wait_for(lambda: written(a, "after", "A"), within=ELECTION_S)
        wait_for(lambda: written(b, "after-b", "B"), within=ELECTION_S)
        wait_for(lambda: value_on(b, "after") == "A" and value_on(a, "after-b") == "B",
                 within=ELECTION_S)
        for node in (a, b):
            for n in range(20):
                assert value_on(node, f"before-{n}") == n
            # Health turns back once every store has set up again, which may come after the
            # state store already serves (stores set up one after another, each waiting for its
            # stream's new leader).
            wait_for(lambda: cluster_health(node)["jetstream"], within=ELECTION_S,
                     seen=lambda: cluster_health(node))
            assert cluster_health(node)["reachable"]

        # A node started now, with one server still down, reads everything from the other two.
        c = r3_node(workdir, nats_cluster, "node-c")
        try:
            assert [value_on(c, f"before-{n}") for n in range(20)] == list(range(20))
            assert value_on(c, "after") == "A" and value_on(c, "after-b") == "B"
        finally:
            c.stop()
    finally:
        a.stop()
        b.stop()
