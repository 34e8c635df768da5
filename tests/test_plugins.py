"""Plugins loaded from plugin directories by a real daemon: both seed styles, order, isolation."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

PLUGINS = Path(__file__).parent / "plugins"


def plugin_dir_config(*names: str, **daemon_settings) -> dict:
    return {"daemon": {"plugin_dirs": [str(PLUGINS / n) for n in names], **daemon_settings}}


def plugins_by_name(daemon) -> dict:
    return {p["name"]: p for p in daemon.request("system:plugins")["data"]["plugins"]}


@pytest.mark.daemon("inprocess")
def test_both_seed_plugin_examples_work_from_a_plugin_dir(daemon_factory):
    daemon = daemon_factory(plugin_dir_config("seeds"))
    assert daemon.request("my:command")["data"] == {"result": "processed"}
    assert daemon.request("my:custom:event")["data"] == {"status": "processed"}
    plugins = plugins_by_name(daemon)
    assert plugins["my_plugin"]["state"] == "active"
    assert plugins["my_plugin"]["version"] == "1.0.0"
    assert "ksi_handle_event" in plugins["my_plugin"]["hooks"]
    assert plugins["custom_events"]["events"] == ["my:custom:event"]
    events = {e["event"] for e in daemon.request("system:discover")["data"]["events"]}
    assert {"my:command", "my:custom:event", "system:health"} <= events


def test_plugin_dirs_from_the_environment(daemon_factory):
    import os
    daemon = daemon_factory(env={"KSI_PLUGIN_DIRS": os.pathsep.join(
        [str(PLUGINS / "seeds"), str(PLUGINS / "does-not-exist")])})
    assert daemon.request("my:custom:event")["data"] == {"status": "processed"}


@pytest.mark.daemon("inprocess")
def test_fallback_answers_none_means_unknown_event(daemon_factory):
    daemon = daemon_factory(plugin_dir_config("seeds"))
    reply = daemon.request("my:comand")
    assert reply["error"]["code"] == "unknown_event"
    assert "my:command" in reply["error"]["details"]["suggestions"]


@pytest.fixture
def faulty(daemon_factory):
    return daemon_factory(plugin_dir_config("faulty", "seeds"))


@pytest.mark.daemon("inprocess")
def test_plugin_failing_at_import_is_reported_and_the_daemon_answers(faulty):
    plugins = plugins_by_name(faulty)
    assert plugins["broken_import"]["state"] == "failed"
    assert "this plugin cannot even be imported" in plugins["broken_import"]["error"]
    health = faulty.request("system:health")["data"]
    assert health["status"] == "degraded"  # up, and saying which plugins failed
    assert "broken_import" in {failed["plugin"] for failed in health["failed_plugins"]}
    assert health["plugins"]["failed"] >= 1
    assert faulty.request("my:command")["data"] == {"result": "processed"}


@pytest.mark.daemon("inprocess")
def test_plugin_failing_at_start_answers_unavailable(faulty):
    plugins = plugins_by_name(faulty)
    assert plugins["broken_start"]["state"] == "failed"
    assert "database password missing" in plugins["broken_start"]["error"]
    reply = faulty.request("broken:ping")
    assert reply["error"]["code"] == "unavailable"
    assert "database password missing" in reply["error"]["message"]


@pytest.mark.daemon("inprocess")
def test_handler_exception_answers_handler_error_and_is_reported(faulty):
    reply = faulty.request("flaky:divide", {"a": 1, "b": 0})
    assert reply["error"]["code"] == "handler_error"
    assert "ZeroDivisionError" in reply["error"]["message"]
    plugin = plugins_by_name(faulty)["broken_handler"]
    assert "ZeroDivisionError" in plugin["error"]
    assert plugin["handler_errors"] == 1
    # one bad request does not take the plugin down: good input still works
    assert faulty.request("flaky:divide", {"a": 6, "b": 3})["data"] == {"result": 2.0}
    assert faulty.request("system:health")["data"]["status"] == "degraded"


@pytest.mark.daemon("inprocess")
def test_dependency_cycle_and_missing_dependency_are_reported(faulty):
    plugins = plugins_by_name(faulty)
    assert plugins["cycle_a"]["state"] == "failed"
    assert plugins["cycle_b"]["state"] == "failed"
    assert "dependency cycle" in plugins["cycle_a"]["error"]
    assert "cycle_a" in plugins["cycle_a"]["error"] and "cycle_b" in plugins["cycle_a"]["error"]
    assert plugins["needs_ghost"]["state"] == "failed"
    assert "missing dependency: ghost" in plugins["needs_ghost"]["error"]


@pytest.mark.daemon("inprocess")
def test_crashing_service_marks_its_plugin_failed(faulty):
    deadline = time.monotonic() + 5
    while plugins_by_name(faulty)["crashing_service"]["state"] != "failed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "upstream went away" in plugins_by_name(faulty)["crashing_service"]["error"]
    assert faulty.request("system:health")["data"]["status"] == "degraded"


@pytest.mark.daemon("inprocess")
def test_event_claimed_twice_fails_the_later_plugin_naming_both(faulty):
    plugins = plugins_by_name(faulty)
    assert plugins["greedy"]["state"] == "failed"
    assert "system:health" in plugins["greedy"]["error"]
    assert "system" in plugins["greedy"]["error"]
    assert faulty.request("system:health")["data"]["status"] == "degraded"


def test_faulty_daemon_still_shuts_down_cleanly(faulty):
    assert faulty.stop() == 0
    assert not faulty.socket_path.exists()


@pytest.fixture
def features(daemon_factory):
    return daemon_factory({**plugin_dir_config("features"),
                           "plugins": {"greeter": {"greeting": "howdy"}}})


@pytest.mark.daemon("inprocess")
def test_order_follows_dependencies_then_priority_then_name(features):
    names = [p["name"] for p in features.request("system:plugins")["data"]["plugins"]]
    assert names.index("counter") < names.index("greeter")  # dependency beats priority
    assert names[0] == "system"  # priority 0
    assert names[-1] == "transport_unix"  # priority 1000: opens the socket last


@pytest.mark.daemon("inprocess")
def test_sync_handler_with_model_and_plugin_config(features):
    assert features.request("greet:sync", {"name": "Ada", "times": 2})["data"] == \
        {"text": "howdy Ada howdy Ada"}
    reply = features.request("greet:sync", {"name": ""})
    assert reply["error"]["code"] == "validation_error"
    assert reply["error"]["details"][0]["loc"] == ["name"]


@pytest.mark.daemon("inprocess")
def test_handler_with_a_typeddict_gets_the_validated_dict(features):
    assert features.request("greet:shout", {"name": "ada", "times": "2"})["data"] == \
        {"text": "ADA ADA", "received": "dict"}  # "2" coerced to 2, like a model's field
    for data, loc in (({"name": ""}, ["name"]), ({"times": 1}, ["name"]),
                      ({"name": "ada", "tmies": 2}, ["tmies"])):
        reply = features.request("greet:shout", data)
        assert reply["error"]["code"] == "validation_error"
        assert reply["error"]["details"][0]["loc"] == loc
    events = features.request("system:discover")["data"]["events"]
    shout = next(e for e in events if e["event"] == "greet:shout")["parameters"]
    assert shout["required"] == ["name"] and set(shout["properties"]) == {"name", "times"}
    assert shout["additionalProperties"] is False


@pytest.mark.daemon("inprocess")
def test_async_handler_emits_to_another_plugin_and_pushes_to_requester(features):
    with features.client() as client:
        client.send("greet:async", {"name": "Bo", "times": 3}, correlation_id="req-7")
        # The push was made before the reply, and follows it on the wire (PROTOCOL.md §1)
        reply = client.recv()
        assert reply["type"] == "reply" and reply["correlation_id"] == "req-7"
        push = client.recv()
        assert push["type"] == "event" and push["event"] == "greet:progress"
        assert push["correlation_id"] == "req-7"
    assert reply["data"]["count"] == 3
    assert reply["data"]["correlation_id"] == "req-7"
    assert Path(reply["data"]["data_dir"]).is_dir()
    assert reply["data"]["data_dir"].endswith("var/plugins/greeter")
    history = features.request("system:event_history", {"pattern": "counter:*"})["data"]
    assert history["events"][-1]["correlation_id"] == "req-7"  # the chain is traceable


@pytest.mark.daemon("inprocess")
def test_handler_raising_ksi_error_gets_that_code(features):
    reply = features.request("greet:refuse")
    assert reply["error"] == {"code": "conflict", "message": "greeter refuses",
                              "details": {"why": "asked to"}}


@pytest.mark.daemon("inprocess")
def test_slow_requests_do_not_block_later_ones_on_the_connection(features):
    with features.client() as client:
        client.send("greet:slow", {"seconds": 1.0}, correlation_id="slow")
        client.send("system:health", correlation_id="fast")
        assert client.recv()["correlation_id"] == "fast"
        assert client.recv()["correlation_id"] == "slow"


@pytest.mark.daemon("inprocess")
def test_handler_past_its_deadline_answers_timeout(daemon_factory):
    daemon = daemon_factory(plugin_dir_config("features", event_timeout=0.3))
    reply = daemon.request("greet:slow", {"seconds": 5})
    assert reply["error"]["code"] == "timeout"
    assert daemon.request("system:health")["data"]["status"] == "healthy"


@pytest.mark.daemon("inprocess")
def test_middleware_can_rewrite_refuse_and_annotate(daemon_factory):
    daemon = daemon_factory(plugin_dir_config("middleware"))
    assert daemon.request("echo:back", {"shout": "hey"})["data"] == \
        {"echo": {"shout": "HEY"}, "stamped": True}
    assert daemon.request("echo:back", {"password": "wrong"})["error"]["code"] == "forbidden"
    assert daemon.request("system:health")["data"]["status"] == "healthy"
    # With middleware every request takes the awaiting path, the state writes included (their
    # handler answers through ctx.reply_later(), which that path turns into a future).
    assert daemon.request("state:set", {"key": "k", "value": "v"})["data"]["version"] == 1
    assert daemon.request("state:set", {"key": "k", "value": "w", "password": "wrong"})[
        "error"]["code"] == "forbidden"
    assert daemon.request("state:get", {"key": "k"})["data"]["value"] == "v"


@pytest.mark.daemon("inprocess")
def test_disabled_plugin_is_listed_and_not_loaded(daemon_factory):
    daemon = daemon_factory({**plugin_dir_config("seeds"),
                             "plugins": {"custom_events": {"enabled": False}}})
    assert plugins_by_name(daemon)["custom_events"]["state"] == "disabled"
    assert daemon.request("my:custom:event")["error"]["code"] == "unknown_event"


def test_client_that_half_closes_still_gets_every_reply(features):
    import socket
    with features.client() as client:
        client.send("greet:slow", {"seconds": 0.3}, correlation_id="slow")
        client.send("system:health", correlation_id="fast")
        client.sock.shutdown(socket.SHUT_WR)  # as `nc -N` does after its last line
        ids = {client.recv()["correlation_id"], client.recv()["correlation_id"]}
        assert ids == {"slow", "fast"}
        assert client.sock.recv(10) == b""  # then the daemon closes its side
