"""Cluster mode, item 1 of issue 19: `state:*` on a JetStream KV bucket shared by the nodes.

A real nats-server (the `nats_server` fixture: loopback, JetStream, `sync_interval: always`)
and real daemon processes, each with its own var directory and socket.
"""
from __future__ import annotations

import signal
import threading
import time

import pytest

from cluster_nodes import WITHIN_S, node_process, start_node, two_nodes, wait_for  # noqa: F401
from conftest import data_of, error_of
from ksi_daemon.config import ConfigError, load_config
from ksi_daemon.plugins.cluster import kv_keys, kv_values


def test_a_write_acknowledged_on_one_node_is_read_on_the_other(two_nodes):
    a, b = two_nodes
    reply = data_of(a.request("state:set", {"namespace": "team", "key": "plan:1",
                                            "value": {"steps": [1, 2]}}))
    assert data_of(a.request("state:get", {"namespace": "team", "key": "plan:1"}))["value"] == \
        {"steps": [1, 2]}  # the writer reads its write at once
    seen = wait_for(lambda: data_of(b.request("state:get", {"namespace": "team",
                                                          "key": "plan:1"}))["found"] and
                    data_of(b.request("state:get", {"namespace": "team", "key": "plan:1"})))
    assert seen["value"] == {"steps": [1, 2]} and seen["version"] == reply["version"]
    assert wait_for(lambda: data_of(b.request("state:list", {"namespace": "team"}))["keys"]) \
        == ["plan:1"]


def test_two_nodes_racing_with_the_same_version_get_one_success_and_one_conflict(two_nodes):
    a, b = two_nodes
    for round_ in range(5):
        key = f"counter-{round_}"
        version = data_of(a.request("state:set", {"key": key, "value": 0}))["version"]
        wait_for(lambda: data_of(b.request("state:get", {"key": key}))["version"] == version)
        replies = {}

        def write(node, name):
            replies[name] = node.request("state:set", {"key": key, "value": name,
                                                       "if_version": version})
        threads = [threading.Thread(target=write, args=(node, name))
                   for node, name in ((a, "a"), (b, "b"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        outcomes = sorted("conflict" if "error" in reply else "ok" for reply in replies.values())
        assert outcomes == ["conflict", "ok"], replies
        loser = next(reply for reply in replies.values() if "error" in reply)
        winner = next(reply for reply in replies.values() if "error" not in reply)
        assert error_of(loser)["code"] == "conflict"
        assert loser["error"]["details"]["current_version"] == winner["data"]["version"]


def test_create_only_if_absent_is_one_decision_too(two_nodes):
    a, b = two_nodes
    assert data_of(a.request("state:set", {"key": "lock", "value": "a", "if_version": 0}))
    assert error_of(b.request("state:set", {"key": "lock", "value": "b", "if_version": 0}))[
        "code"] == "conflict"
    assert data_of(b.request("state:delete", {"key": "lock"})) == {"deleted": True}
    assert data_of(a.request("state:set", {"key": "lock", "value": "a2", "if_version": 0}))


def test_a_ttl_expires_on_both_nodes_and_both_announce_it(two_nodes):
    a, b = two_nodes
    with b.client() as watcher:
        watcher.request("system:subscribe", {"patterns": ["state:changed"]})
        data_of(a.request("state:set", {"key": "session", "value": "x", "ttl_s": 1}))
        wait_for(lambda: data_of(b.request("state:get", {"key": "session"}))["found"])
        for node in (a, b):
            wait_for(lambda node=node: not data_of(node.request("state:get",
                                                                {"key": "session"}))["found"])
        ops = []
        deadline = time.monotonic() + WITHIN_S
        while "expire" not in ops and time.monotonic() < deadline:
            push = watcher.recv()
            if push.get("event") == "state:changed":
                ops.append(push["data"]["op"])
        assert ops[:1] == ["set"] and "expire" in ops


def test_an_acknowledged_write_survives_kill_9_and_a_nats_restart(workdir, nats_server):
    a = start_node(workdir, nats_server, "node-a")
    versions = [data_of(a.request("state:set", {"key": f"k{i}", "value": i}))["version"]
                for i in range(20)]
    a.stop(signal.SIGKILL)
    nats_server.restart()
    a = start_node(workdir, nats_server, "node-a")
    b = start_node(workdir, nats_server, "node-b")
    try:
        for node in (a, b):
            for i in range(20):
                got = data_of(node.request("state:get", {"key": f"k{i}"}))
                assert got["value"] == i and got["version"] == versions[i]
    finally:
        a.stop()
        b.stop()


def test_losing_nats_answers_unavailable_at_once_and_the_node_comes_back(two_nodes,
                                                                          nats_server):
    a, b = two_nodes
    data_of(a.request("state:set", {"key": "before", "value": 1}))
    nats_server.stop()
    started = time.monotonic()
    health = wait_for(lambda: (h := data_of(a.request("system:health")))["cluster"][
        "reachable"] is False and h)
    assert health["status"] == "degraded" and health["cluster"]["jetstream"] is False
    for event, data in (("state:set", {"key": "during", "value": 1}),
                        ("state:get", {"key": "before"}), ("state:list", {}),
                        ("state:delete", {"key": "before"})):
        error = error_of(a.request(event, data))
        assert error["code"] == "unavailable" and "NATS" in error["message"]
    assert time.monotonic() - started < WITHIN_S
    with a.client() as client:  # the connection stays usable
        assert error_of(client.request("state:get", {"key": "x"}))["code"] == "unavailable"
        assert data_of(client.request("system:health"))["cluster"]["reachable"] is False
    nats_server.start()
    for node in (a, b):
        wait_for(lambda node=node: data_of(node.request("system:health"))["cluster"][
            "jetstream"], within=30)
    data_of(b.request("state:set", {"key": "after", "value": 2}))
    assert wait_for(lambda: data_of(a.request("state:get", {"key": "after"}))["found"])
    assert data_of(a.request("state:get", {"key": "before"}))["value"] == 1
    assert data_of(a.request("system:health"))["status"] == "healthy"


def test_a_node_started_before_nats_serves_once_nats_is_up(workdir, nats_server):
    nats_server.stop()
    node = node_process(workdir, nats_server, "early").start()
    try:
        assert error_of(node.request("state:get", {"key": "k"}))["code"] == "unavailable"
        nats_server.start()
        wait_for(lambda: data_of(node.request("system:health"))["cluster"]["jetstream"],
                 within=30)
        assert data_of(node.request("state:set", {"key": "k", "value": 1}))["version"] >= 1
    finally:
        node.stop()


# ---- in-process: the mapping, the value envelope, the settings ---------------------------

@pytest.mark.parametrize("namespace, key", [
    ("global", "user_42"), ("team", "plan:1"), ("a.b", "c.d"), ("x", "=3A"), ("ns/1", "a b"),
    ("ünï", "こんにちは"), ("-", "_"), ("n", "*>.$")])
def test_kv_keys_are_reversible_and_use_only_what_kv_allows(namespace, key):
    mapped = kv_keys.kv_key(namespace, key)
    assert all(c.isascii() and (c.isalnum() or c in "-_=.") for c in mapped)
    assert mapped.count(".") == 1
    assert kv_keys.state_key(mapped) == (namespace, key)


def test_namespaces_stay_apart_in_kv_keys():
    assert kv_keys.kv_key("a", "b.c") != kv_keys.kv_key("a.b", "c")
    assert kv_keys.kv_key("global", "user_42") == "global.user_42"  # readable when it can be


def test_the_value_envelope_keeps_the_expiry_apart_from_the_json():
    assert kv_values.decode(kv_values.encode(b'"~x"', None)) == (b'"~x"', None)
    assert kv_values.decode(kv_values.encode(b'{"a":1}', 1234.5)) == (b'{"a":1}', 1234.5)


def test_a_node_needs_its_id():
    with pytest.raises(ConfigError, match="KSI_NODE_ID"):
        load_config(environ={"KSI_CLUSTER_NATS_URL": "nats://127.0.0.1:4222"})
    config, _ = load_config(environ={"KSI_CLUSTER_NATS_URL": "nats://127.0.0.1:4222",
                                     "KSI_NODE_ID": "n1"})
    assert config["cluster"]["nats_url"] == "nats://127.0.0.1:4222"
    assert config["cluster"]["node_id"] == "n1"


def test_without_cluster_settings_the_daemon_has_no_cluster(daemon):
    health = data_of(daemon.request("system:health"))
    assert "cluster" not in health
    names = [p["name"] for p in data_of(daemon.request("system:plugins"))["plugins"]]
    assert "cluster" not in names
