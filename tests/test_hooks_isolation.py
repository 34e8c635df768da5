"""A plugin can't take the daemon down, and sees the daemon only through its context.

One daemon (started once for the module) with the plugins of tests/plugins/isolation: seeds/002
style `typing.TypedDict` schemas, a schema pydantic cannot build, a plugin whose dependency is
not installed, a plugin from a plugin dir asking for the daemon's internals, and one reporting
what its context offers.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from conftest import DaemonProcess, data_of, error_of

PLUGINS = Path(__file__).parent / "plugins"


@pytest.fixture(scope="module")
def daemon():
    workdir = Path(tempfile.mkdtemp(prefix="ksi-", dir="/tmp"))
    config = {"daemon": {"plugin_dirs": [str(PLUGINS / "isolation")]},
              "plugins": {"needs_missing_module": {"event_namespaces": ["ghostly"]}}}
    daemon = DaemonProcess(workdir, config).start()
    yield daemon
    exit_code = daemon.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    assert exit_code == 0


def plugins_by_name(daemon) -> dict:
    return {p["name"]: p for p in data_of(daemon.request("system:plugins"))["plugins"]}


def test_typing_typeddict_schemas_are_accepted_and_validate(daemon):
    update = {"namespace": "n", "key": "k", "value": [1], "operation": "set"}
    assert data_of(daemon.request("typed:update", update)) == {"seen": update}
    error = error_of(daemon.request("typed:update", {**update, "operation": "drop"}))
    assert error["code"] == "validation_error"
    assert error_of(daemon.request("typed:update", {"key": "k"}))["code"] == "validation_error"
    # inherited totality: `volume` (total=False base) is optional, `text` is required
    assert data_of(daemon.request("typed:shout", {"text": "hi", "update": update})) == \
        {"text": "HI", "operation": "set"}
    assert data_of(daemon.request("typed:shout", {"text": "hi", "volume": 2,
                                                  "update": update}))["text"] == "HIHI"
    assert error_of(daemon.request("typed:shout", {"volume": 2, "update": update}))["code"] \
        == "validation_error"
    help_entry = data_of(daemon.request("system:help", {"event": "typed:shout"}))
    assert set(help_entry["parameters"]["required"]) == {"text", "update"}
    assert plugins_by_name(daemon)["typed_events"]["state"] == "active"


def assert_degraded_naming(daemon, plugin: str) -> None:
    """The daemon still answers, and its health names the failed plugin."""
    health = data_of(daemon.request("system:health"))
    assert health["status"] == "degraded"
    assert plugin in {failed["plugin"] for failed in health["failed_plugins"]}


def test_a_plugin_missing_a_dependency_answers_unavailable_in_its_namespaces(daemon):
    plugin = plugins_by_name(daemon)["needs_missing_module"]
    assert plugin["state"] == "failed"
    assert "ModuleNotFoundError" in plugin["error"]
    for event in ("needs_missing_module:ping", "needs_missing_module:anything", "ghostly:boo"):
        error = error_of(daemon.request(event))
        assert error["code"] == "unavailable", event
        assert "needs_missing_module" in error["message"]
        assert "ksi_module_that_is_not_installed" in error["message"]
    # names in nobody's namespace are still unknown
    assert error_of(daemon.request("nobody:ping"))["code"] == "unknown_event"
    assert_degraded_naming(daemon, "needs_missing_module")


def test_only_built_in_plugins_get_the_daemons_internals(daemon):
    plugin = plugins_by_name(daemon)["wants_internals"]
    assert plugin["state"] == "failed"
    assert "only built-in plugins" in plugin["error"]
    assert error_of(daemon.request("wants_internals:ping"))["code"] == "unavailable"


def test_a_plugin_sees_a_facade_not_the_router_manager_or_daemon(daemon):
    seen = data_of(daemon.request("plugin_view:report"))
    assert {"emit", "announce", "announce_all", "push", "config", "data_dir", "log", "name",
            "shutdown_deadline", "hook"} <= set(seen["attributes"])
    assert not {"router", "manager", "daemon", "record"} & set(seen["attributes"])
    assert "no access to the daemon's internals" in seen["internals"]
    assert seen["deadline_before_shutdown"] is None
    assert seen["data_dir"].endswith("plugins/plugin_view")


def test_history_names_the_plugin_that_emitted_or_announced(daemon):
    data_of(daemon.request("state:set", {"key": "history-source", "value": 1}))
    history = data_of(daemon.request("system:event_history", {"limit": 1000}))["events"]
    sources = {e["event"]: e["source"] for e in history}
    assert sources["state:changed"] == "state"  # announce_all of a commit
    assert sources["plugin_view:started"] == "plugin_view"  # context.emit
    assert sources["plugin_view:announced"] == "plugin_view"  # context.announce
    assert not any("object at 0x" in str(e["source"]) for e in history)


def test_a_schema_pydantic_cannot_build_fails_only_its_plugin(daemon):
    plugin = plugins_by_name(daemon)["bad_schema"]
    assert plugin["state"] == "failed"
    assert "the schema of bad_schema:go is not usable" in plugin["error"]
    error = error_of(daemon.request("bad_schema:go", {"thing": 1}))
    assert error["code"] == "unavailable"
    assert_degraded_naming(daemon, "bad_schema")
