"""Several sockets: the guide's `socket_dir` (events.sock, control.sock) and allow-listed ones.

Through real daemon processes and real sockets: which files exist with which modes, what each
socket answers, what a narrowed socket refuses, and that all of them go at stop.
"""
from __future__ import annotations

import stat

from conftest import LineClient, data_of, error_of


def test_socket_dir_adds_events_and_control_sockets_beside_the_main_one(daemon_factory,
                                                                          workdir):
    socket_dir = workdir / "ksi"
    daemon = daemon_factory({"transports": {"unix": {"socket_dir": str(socket_dir),
                                                     "compatibility_mode": True}}})
    sockets = [daemon.socket_path, socket_dir / "events.sock", socket_dir / "control.sock"]
    for path in sockets:
        assert stat.S_ISSOCK(path.lstat().st_mode) and stat.S_IMODE(path.lstat().st_mode) == 0o600
        with LineClient(path) as client:
            assert data_of(client.request("system:health"))["status"] == "healthy"
    assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700  # made by the daemon, owner-only
    with LineClient(sockets[1]) as client:  # one event space, whichever door
        data_of(client.request("state:set", {"key": "door", "value": "events.sock"}))
    with daemon.client() as client:
        assert data_of(client.request("state:get", {"key": "door"}))["value"] == "events.sock"
    assert daemon.stop() == 0
    assert not any(path.exists() for path in sockets)


def test_without_socket_dir_there_is_one_socket(daemon):
    assert sorted(p.name for p in daemon.socket_path.parent.iterdir()
                  if stat.S_ISSOCK(p.lstat().st_mode)) == ["daemon.sock"]


def test_an_allow_listed_socket_refuses_the_rest_and_keeps_the_connection(daemon_factory,
                                                                           workdir):
    daemon = daemon_factory({"transports": {"unix": {"sockets": {
        str(workdir / "monitor.sock"): {"allow": ["system:health", "state:get"]}}}}})
    with daemon.client() as client:
        data_of(client.request("state:set", {"key": "k", "value": 1}))
    with LineClient(workdir / "monitor.sock") as client:
        refused = error_of(client.request("state:set", {"key": "k", "value": 2}))
        unknown = error_of(client.request("no:such_event"))
        # the same connection goes on answering what it may send
        assert data_of(client.request("state:get", {"key": "k"}))["value"] == 1
        assert data_of(client.request("system:health"))["status"] == "healthy"
    assert refused["code"] == "forbidden"
    assert str(workdir / "monitor.sock") in refused["message"]
    assert refused["details"]["allowed"] == ["system:health", "state:get"]
    assert unknown["code"] == "forbidden"  # not even told which events exist
    with daemon.client() as client:  # the main socket is not narrowed
        data_of(client.request("state:set", {"key": "k", "value": 3}))


def test_a_socket_path_too_long_stops_start_up_naming_it(daemon_factory, workdir):
    long_name = "s" * 120 + ".sock"
    daemon = daemon_factory({"transports": {"unix": {"sockets": {long_name: {}}}}}, wait=False)
    assert daemon.wait(30) != 0
    assert "transports.unix.sockets" in daemon.read_output()
