"""Permissions and rate limits (docs/OPERATIONS.md), through real sockets of real daemons (one
test on the in-process daemon's real socket: its completions would import litellm in a process).

Rules per uid narrow what a uid's clients may send; token buckets per connection, per uid and
for a uid's completions slow a flood with `rate_limited` replies that say when to try again,
while the connection stays usable and other clients go on unaffected.
"""
from __future__ import annotations

import os
import sqlite3
import time

import pytest

from conftest import LineClient, data_of, error_of, exit_code_as_nobody, open_to_another_uid


def limits(**rates) -> dict:
    """A config limiting this test's own uid (the daemon's), with the rates given."""
    return {"permissions": {"rate_limits": {"own_uid": True, **rates}}}


def pipeline(client, count: int, event: str = "system:health", data=None) -> list[dict]:
    """Send `count` requests at once, then read their replies, in order."""
    for n in range(count):
        client.send(event, data, correlation_id=f"p{n}")
    return [client.recv() for _ in range(count)]


def test_a_flood_on_one_connection_is_slowed_and_the_connection_stays_usable(daemon_factory):
    daemon = daemon_factory(limits(connection={"per_s": 5, "burst": 10},
                                   uid={"per_s": 1000, "burst": 1000}))
    with daemon.client() as flooding, daemon.client() as other:
        replies = pipeline(flooding, 30)
        answered = [r for r in replies if "data" in r]
        limited = [r["error"] for r in replies if "error" in r]
        assert len(answered) >= 10 and len(limited) >= 15  # the burst, then the rate
        assert {e["code"] for e in limited} == {"rate_limited"}
        assert all(0 < e["details"]["retry_after_s"] <= 0.2 for e in limited)
        assert limited[0]["details"]["limit"] == "this connection"
        # Another connection of the same uid has its own bucket.
        assert len([r for r in pipeline(other, 10) if "data" in r]) == 10
        time.sleep(limited[-1]["details"]["retry_after_s"])
        assert data_of(flooding.request("system:health"))["status"] == "healthy"


def test_a_uids_connections_share_its_bucket(daemon_factory):
    daemon = daemon_factory(limits(connection={"per_s": 1000, "burst": 1000},
                                   uid={"per_s": 1, "burst": 8}))
    with daemon.client() as first, daemon.client() as second:
        replies = pipeline(first, 6) + pipeline(second, 6)
    # 8 saved up (less what start-up's health checks took), about 1 more in the meantime:
    answered = [r for r in replies if "data" in r]
    refused = [r["error"] for r in replies if "error" in r]
    assert 4 <= len(answered) <= 9
    assert any("error" in r for r in replies[6:])  # the second connection met the first's use
    assert {e["details"]["limit"] for e in refused} == {f"uid {os.getuid()}"}


@pytest.mark.daemon("inprocess")  # litellm imported once per test process, not per daemon
def test_completions_have_a_budget_of_their_own(daemon_factory):
    daemon = daemon_factory(limits(completions={"per_s": 0.05, "burst": 2}))
    with daemon.socket_client(timeout=30) as client:  # this uid, as its socket tells the daemon
        for n in range(2):
            data_of(client.request("completion:request", {"prompt": f"hello {n}"}))
        refused = error_of(client.request("completion:request", {"prompt": "once more"}))
        assert refused["code"] == "rate_limited" and "completions" in refused["details"]["limit"]
        assert refused["details"]["retry_after_s"] > 1
        assert data_of(client.request("system:health"))["status"] == "healthy"


def test_the_daemons_own_user_is_not_limited_by_default(daemon):
    with daemon.client() as client:  # past the default burst of 4000, as fast as it can
        replies = [reply for _ in range(20) for reply in pipeline(client, 250)]
    assert len(replies) == 5000 and all("data" in r for r in replies)


def test_a_rule_for_a_uid_narrows_what_it_may_send(daemon_factory):
    daemon = daemon_factory({"permissions": {"uids": {str(os.getuid()): {
        "allow": ["system:*", "state:get"]}}}})
    with daemon.client() as client:
        refused = error_of(client.request("state:set", {"key": "k", "value": 1}))
        assert data_of(client.request("state:get", {"key": "k"}))["found"] is False
    assert refused["code"] == "forbidden"
    assert f"the rule for uid {os.getuid()}" in refused["message"]
    assert refused["details"]["allowed"] == ["system:*", "state:get"]
    # The refusal is in the audit, with who was refused (read on the main socket's own rules:
    # state:audit is not allowed to this uid, so through the database file).
    audited = audit_rows(daemon, "SELECT op, event, peer_uid, peer_pid, detail FROM state_audit")
    assert [(op, event, uid) for op, event, uid, _pid, _detail in audited] == \
        [("refused", "state:set", os.getuid())]
    assert audited[0][3] == os.getpid() and "permissions.uids" in audited[0][4]


def test_a_client_sending_an_internal_event_is_refused_and_audited(daemon):
    with daemon.client() as client:
        refused = error_of(client.request("agent:inbox", {"agent_id": "a", "message_id": "m",
                                                          "content": "forged"}))
        entries = data_of(client.request("state:audit", {"namespace": "agent"}))["entries"]
    assert refused["code"] == "forbidden"
    assert [(e["op"], e["event"], e["peer_uid"]) for e in entries] == \
        [("refused", "agent:inbox", os.getuid())]
    assert "only plugins may send it" in entries[0]["detail"]


def audit_rows(daemon, sql: str) -> list[tuple]:
    deadline = time.monotonic() + 5  # (the refusal's row is written as it is answered)
    while True:
        with sqlite3.connect(daemon.var_dir / "db" / "state.db") as db:
            rows = db.execute(sql).fetchall()
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_another_uid_is_narrowed_and_limited_as_configured(daemon_factory):
    daemon = daemon_factory({"daemon": {"allowed_uids": [65534]}, "permissions": {
        "uids": {"65534": {"allow": ["system:health", "state:get"]}},
        "rate_limits": {"connection": {"per_s": 2, "burst": 3}}}})
    open_to_another_uid(daemon)
    def child() -> int:
        with LineClient(daemon.socket_path, timeout=5) as client:
            forbidden = client.request("state:set", {"key": "k", "value": 1})["error"]
            allowed = client.request("state:get", {"key": "k"})
            replies = pipeline(client, 6)
        limited = [r for r in replies if r.get("error", {}).get("code") == "rate_limited"]
        return 0 if forbidden["code"] == "forbidden" and "data" in allowed and \
            len(limited) >= 4 else 2
    assert exit_code_as_nobody(child) == 0
    with daemon.client() as own:  # the daemon's own user: neither narrowed nor limited
        assert all("data" in r for r in pipeline(own, 50, "state:get", {"key": "k"}))


PLUGIN = '''
from ksi_daemon.event_system import event_handler


@event_handler("trusty:ping")
def ping(data):
    return {"pong": True}
'''


@pytest.mark.parametrize("how", ["trusted", "world-writable", "another user's"])
def test_plugins_load_only_from_trusted_directories(daemon_factory, workdir, how):
    plugins = workdir / "plugins"
    plugins.mkdir(mode=0o755)
    (plugins / "trusty.py").write_text(PLUGIN)
    if how == "world-writable":
        os.chmod(plugins, 0o777)
    elif how == "another user's":
        if os.getuid() != 0:
            pytest.skip("needs root to give the directory to another user")
        os.chown(plugins, 65534, 65534)
    daemon = daemon_factory({"daemon": {"plugin_dirs": [str(plugins)]}})
    with daemon.client() as client:
        health = data_of(client.request("system:health"))
        ping = client.request("trusty:ping")
    if how == "trusted":
        assert data_of(ping) == {"pong": True} and health["status"] == "healthy"
        return
    assert error_of(ping)["code"] == "unknown_event"  # nothing of it was imported
    assert health["status"] == "degraded"
    [refused] = health["failed_plugins"]
    reason = "world-writable" if how == "world-writable" else "owned by uid 65534"
    assert reason in refused["error"] and str(plugins) in refused["error"]
