"""Cluster mode, items 3 and 4 of issue 19: agents with one home that move when it dies.

A real nats-server (the `nats_server` fixture) and real daemon processes, each with its own var
directory; short lease TTLs keep failover quick. The deterministic offline model answers.
"""
from __future__ import annotations

import signal
import time

import pytest

from cluster_nodes import CuttableProxy, start_node, wait_for
from conftest import data_of, error_of

LEASE_TTL_S = 2
FAST_LEASES = {"cluster": {"lease_ttl_s": LEASE_TTL_S},
               "plugins": {"agent": {"restart_base_delay_s": 0.1}}}
# A lease expires within its TTL; the server removes it within about a second more, and the
# other node looks for orphans every half TTL: well inside this bound, which is generous.
FAILOVER_WITHIN_S = 20.0


def spawn(node, agent_id: str, **extra) -> dict:
    return data_of(node.request("agent:spawn", {"agent_id": agent_id, "profile": "assistant",
                                                **extra}))


def send_and_wait(node, agent_id: str, content: str, timeout_s: float = 30.0) -> dict:
    with node.client(timeout=timeout_s + 15) as client:
        return client.request("agent:send", {"agent_id": agent_id, "content": content,
                                             "wait": True, "timeout_s": timeout_s})


def listed(node) -> dict:
    return {a["agent_id"]: a for a in data_of(node.request("agent:list"))["agents"]}


@pytest.fixture
def two_nodes(workdir, nats_server):
    nodes = [start_node(workdir, nats_server.url, name, FAST_LEASES)
             for name in ("node-a", "node-b")]
    yield nodes
    for node in nodes:
        node.stop()


def test_an_agent_on_a_answers_b_shows_in_b_list_and_b_terminates_it(two_nodes):
    a, b = two_nodes
    spawn(a, "helper")
    agents = wait_for(lambda: "helper" in listed(b) and listed(b))
    assert agents["helper"]["node"] == "node-a"
    assert listed(a)["helper"]["node"] == "node-a"
    reply = data_of(send_and_wait(b, "helper", "hello from b"))
    assert reply["delivered"] is True and reply["reply"]["text"]
    info = data_of(b.request("agent:info", {"agent_id": "helper"}))
    assert info["node"] == "node-a" and info["turns"] == 1
    assert [t["content"] for t in info["recent"]] == ["hello from b"]
    assert data_of(b.request("agent:terminate", {"agent_id": "helper"}))["status"] == \
        "terminated"
    wait_for(lambda: "helper" not in listed(a) and "helper" not in listed(b))
    assert error_of(b.request("agent:send", {"agent_id": "helper", "content": "x"}))[
        "code"] == "not_found"
