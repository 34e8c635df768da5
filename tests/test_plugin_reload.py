"""Hot reload of plugin-dir plugins through a real daemon and its socket: system:reload, the
hooks around it, failures that keep the old version, refusals, reload under load, watch mode."""
from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import orjson
import pytest

from conftest import data_of, error_of

PLUGIN = Path(__file__).parent / "plugins" / "reload" / "reloadable.py"


@pytest.fixture
def plugin_dir(workdir) -> Path:
    directory = workdir / "plugins"
    directory.mkdir()
    shutil.copy(PLUGIN, directory / "reloadable.py")
    return directory


def write_version(plugin_dir: Path, version: str, *, replace: dict | None = None) -> None:
    """The test plugin with VERSION = version and each `replace` key swapped for its value."""
    text = PLUGIN.read_text().replace('VERSION = "1.0.0"', f'VERSION = "{version}"')
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    (plugin_dir / "reloadable.py").write_text(text)


def marks(daemon) -> list[str]:
    return (daemon.var_dir / "plugins" / "reloadable" / "marks").read_text().splitlines()


def reloadable_status(daemon) -> dict:
    plugins = data_of(daemon.request("system:plugins"))["plugins"]
    return next(p for p in plugins if p["name"] == "reloadable")


def discovered(daemon) -> set[str]:
    return {e["event"] for e in data_of(daemon.request("system:discover"))["events"]}


def test_reload_takes_the_new_code_and_runs_the_hooks_around_it(daemon_factory, plugin_dir):
    daemon = daemon_factory({"daemon": {"plugin_dirs": [str(plugin_dir)]}})
    assert data_of(daemon.request("reloadable:version")) == {"version": "1.0.0"}
    watcher = daemon.client()
    data_of(watcher.request("system:subscribe", {"patterns": ["system:plugin_reloaded"]}))

    write_version(plugin_dir, "2.0.0", replace={'"reloadable:old_only"': '"reloadable:new_only"'})
    reply = data_of(daemon.request("system:reload", {"plugin": "reloadable"}))

    assert reply["version"] == "2.0.0" and reply["previous_version"] == "1.0.0"
    assert reply["added"] == ["reloadable:new_only"]
    assert reply["removed"] == ["reloadable:old_only"]
    assert data_of(daemon.request("reloadable:version")) == {"version": "2.0.0"}
    assert data_of(daemon.request("reloadable:new_only")) == {"version": "2.0.0"}
    assert error_of(daemon.request("reloadable:old_only"))["code"] == "unknown_event"
    events = discovered(daemon)
    assert "reloadable:new_only" in events and "reloadable:old_only" not in events
    # the new instance started before the old one was shut down (they overlap briefly)
    assert marks(daemon) == ["startup 1.0.0", "startup 2.0.0", "shutdown 1.0.0"]
    status = reloadable_status(daemon)
    assert (status["version"], status["state"], status["reloads"]) == ("2.0.0", "active", 1)
    announced = watcher.recv()
    assert announced["event"] == "system:plugin_reloaded"
    assert announced["data"]["plugin"] == "reloadable"
    assert announced["data"]["version"] == "2.0.0"
    assert "reloadable:new_only" in announced["data"]["events"]
    watcher.close()
    assert daemon.stop() == 0
    assert marks(daemon)[-1] == "shutdown 2.0.0"  # the daemon's own shutdown: the new one


def test_a_failing_new_version_keeps_the_old_one_answering(daemon_factory, plugin_dir):
    daemon = daemon_factory({"daemon": {"plugin_dirs": [str(plugin_dir)]}})

    write_version(plugin_dir, "2.0.0", replace={"def version(data):": "def version(data)"})
    error = error_of(daemon.request("system:reload", {"plugin": "reloadable"}))
    assert error["code"] == "conflict"
    assert error["details"]["stage"] == "import"
    assert "SyntaxError" in error["details"]["error"]
    assert error["details"]["where"].startswith(str(plugin_dir / "reloadable.py") + ":")
    assert "1.0.0 keeps running" in error["message"]
    assert data_of(daemon.request("reloadable:version")) == {"version": "1.0.0"}
    status = reloadable_status(daemon)
    assert status["state"] == "active" and status["version"] == "1.0.0"
    assert "SyntaxError" in status["reload_error"]

    write_version(plugin_dir, "3.0.0", replace={
        '    _mark("startup")': '    _mark("startup")\n    raise RuntimeError("no licence")'})
    error = error_of(daemon.request("system:reload", {"plugin": "reloadable"}))
    assert error["code"] == "conflict" and error["details"]["stage"] == "startup"
    assert "no licence" in error["message"]
    assert data_of(daemon.request("reloadable:version")) == {"version": "1.0.0"}
    # the new instance released what its ksi_startup opened; the old one was never stopped
    assert marks(daemon) == ["startup 1.0.0", "startup 3.0.0", "shutdown 3.0.0"]

    write_version(plugin_dir, "4.0.0")  # fixed: the reload goes through, the error is gone
    assert data_of(daemon.request("system:reload", {"plugin": "reloadable"}))["version"] \
        == "4.0.0"
    assert reloadable_status(daemon)["reload_error"] is None
    assert data_of(daemon.request("reloadable:version")) == {"version": "4.0.0"}

    refusal = error_of(daemon.request("system:reload", {"plugin": "state"}))
    assert refusal["code"] == "forbidden"
    assert "restart the daemon" in refusal["details"]["reason"]
    assert error_of(daemon.request("system:reload", {"plugin": "nope"}))["code"] == "not_found"
    assert error_of(daemon.request("system:reload", {}))["code"] == "validation_error"
    assert data_of(daemon.request("system:health"))["status"] == "healthy"


class PipeliningClient:
    """Sends requests on one connection without waiting for replies (a writer thread) and
    collects every reply by correlation id (a reader thread)."""

    def __init__(self, daemon):
        self.client = daemon.client(timeout=30)
        self.replies: dict[str, dict] = {}
        self.sent: list[str] = []
        self.stop = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def send(self, event: str, data: dict) -> str:
        cid = f"r-{len(self.sent)}"
        self.sent.append(cid)
        self.client.send_raw(orjson.dumps({"event": event, "data": data,
                                           "correlation_id": cid}) + b"\n")
        return cid

    def _read(self) -> None:
        while True:
            try:
                message = self.client.recv()
            except (OSError, ConnectionError):
                return
            if message["type"] == "reply":
                self.replies[message["correlation_id"]] = message

    def wait_for_all(self, timeout: float = 30.0) -> None:
        until = time.monotonic() + timeout
        while len(self.replies) < len(self.sent) and time.monotonic() < until:
            time.sleep(0.02)
        self.client.close()


def test_reload_under_load_loses_no_request(daemon_factory, plugin_dir):
    daemon = daemon_factory({"daemon": {"plugin_dirs": [str(plugin_dir)]}})
    load = PipeliningClient(daemon)
    sending = threading.Event()
    sending.set()

    def keep_sending() -> None:
        n = 0
        while sending.is_set():
            load.send("reloadable:slow", {"s": 0.3, "n": n})
            load.send("reloadable:version", {})
            n += 1
            time.sleep(0.005)
    sender = threading.Thread(target=keep_sending, daemon=True)
    sender.start()
    try:
        time.sleep(0.5)
        results = []
        for version in ("2.0.0", "3.0.0"):
            write_version(plugin_dir, version)
            results.append(data_of(daemon.request("system:reload", {"plugin": "reloadable"})))
            time.sleep(0.5)
    finally:
        sending.clear()
        sender.join()
    load.wait_for_all()

    assert len(load.replies) == len(load.sent), "replies lost"
    versions = [data_of(load.replies[cid])["version"] for cid in load.sent]
    assert set(versions) == {"1.0.0", "2.0.0", "3.0.0"}
    # requests are dispatched in the order sent: once the new code took over, none went back
    assert versions == sorted(versions)
    # the slow requests running at each swap were waited for, and answered by the old code
    assert all(result["waited_for"] >= 1 and result["unfinished"] == 0 for result in results)
    assert data_of(daemon.request("system:health"))["status"] == "healthy"


def test_watch_mode_reloads_an_edited_file_and_loads_a_new_one(daemon_factory, plugin_dir):
    period_s = 0.2  # (1 s by default) every wait below is for a number of polls
    daemon = daemon_factory({"daemon": {"plugin_dirs": [str(plugin_dir)],
                                        "watch_plugins": True, "watch_period_s": period_s}})

    def eventually(event: str, expected: dict, timeout: float = 10.0) -> None:
        until = time.monotonic() + timeout
        while True:
            reply = daemon.request(event)
            if reply.get("data") == expected:
                return
            assert time.monotonic() < until, reply
            time.sleep(0.1)

    write_version(plugin_dir, "2.0.0")
    eventually("reloadable:version", {"version": "2.0.0"})

    (plugin_dir / "newcomer.py").write_text(
        "from ksi_daemon.event_system import event_handler\n\n\n"
        "@event_handler('newcomer:hello')\ndef hello(data):\n    return {'hello': 'world'}\n")
    eventually("newcomer:hello", {"hello": "world"})

    write_version(plugin_dir, "3.0.0", replace={"def version(data):": "def version(data)"})
    until = time.monotonic() + 10
    while reloadable_status(daemon)["reload_error"] is None:
        assert time.monotonic() < until, "the broken edit was never tried"
        time.sleep(0.1)
    assert data_of(daemon.request("reloadable:version")) == {"version": "2.0.0"}
    time.sleep(5 * period_s)  # more polls of the unchanged broken file: it is not tried again
    assert daemon.stop() == 0
    log = daemon.read_output()
    assert log.count("plugin_change_not_taken") == 1, log


@pytest.mark.daemon("inprocess")
def test_a_plugin_that_failed_to_import_is_loaded_once_fixed(daemon_factory, plugin_dir):
    mended = plugin_dir / "mended.py"
    mended.write_text("raise ImportError('needs a library not installed yet')\n")
    daemon = daemon_factory({"daemon": {"plugin_dirs": [str(plugin_dir)]}})
    assert error_of(daemon.request("mended:ping"))["code"] == "unavailable"

    mended.write_text("from ksi_daemon.event_system import event_handler\n\n\n"
                      "@event_handler('mended:ping')\ndef ping(data):\n"
                      "    return {'pong': True}\n")
    assert data_of(daemon.request("system:reload", {"plugin": "mended"}))["added"] \
        == ["mended:ping"]
    assert data_of(daemon.request("mended:ping")) == {"pong": True}
    assert data_of(daemon.request("system:health"))["status"] == "healthy"


@pytest.mark.daemon("inprocess")
def test_a_class_style_plugin_reloads_its_ksi_handle_event(daemon_factory, plugin_dir):
    seed = (PLUGIN.parent.parent / "seeds" / "my_plugin.py").read_text()
    (plugin_dir / "my_plugin.py").write_text(seed)
    daemon = daemon_factory({"daemon": {"plugin_dirs": [str(plugin_dir)]}})
    assert data_of(daemon.request("my:command")) == {"result": "processed"}

    (plugin_dir / "my_plugin.py").write_text(
        seed.replace('"processed"', '"processed again"').replace('"1.0.0"', '"1.1.0"'))
    assert data_of(daemon.request("system:reload", {"plugin": "my_plugin"}))["version"] \
        == "1.1.0"
    assert data_of(daemon.request("my:command")) == {"result": "processed again"}
    assert error_of(daemon.request("my:comand"))["code"] == "unknown_event"
