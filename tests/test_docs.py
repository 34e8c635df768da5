"""The docs say what the code does: examples are the real files, run in a real daemon.

- every code block of docs/PLUGINS.md marked `<!-- file: PATH -->` is that file, byte for byte;
- the seed examples in examples/plugins are the seeds' code as written;
- a daemon started with `--plugin-dir examples/plugins` answers each example as the doc shows,
  and each hook really ran;
- docs/EVENTS.md is what scripts/gen_events_doc.py generates from the schemas.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples" / "plugins"
SEEDS = Path("/work/shared/seeds")
FILE_BLOCK = re.compile(r"<!-- file: (?P<path>\S+) -->\n```python\n(?P<code>.*?)```", re.S)
EXAMPLE_CONFIG = {"plugins": {"greeter": {"blocked": ["mallory"]}}}


# The example plugins run in an in-process daemon (tests/inprocess.py), loaded from their
# directory as a daemon process loads them; the environment's plugin dirs need a process.
pytestmark = pytest.mark.daemon("inprocess")


def file_blocks() -> list[tuple[str, str]]:
    return [(m["path"], m["code"]) for m in FILE_BLOCK.finditer(
        (DOCS / "PLUGINS.md").read_text(encoding="utf-8"))]


def seed_code_block(seed_prefix: str, heading: str) -> str:
    """The first ```python block after `heading` in a seed document."""
    seed = next(SEEDS.glob(f"{seed_prefix}_*.txt"), None)
    if seed is None:
        pytest.skip(f"seed {seed_prefix} is not on this machine")
    text = seed.read_text(encoding="utf-8", errors="replace")
    after = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", after, re.S)[1]


def without_trailing_spaces(code: str) -> list[str]:
    return [line.rstrip() for line in code.strip().splitlines()]


# ---- the documents match the files ----------------------------------------------------------

def test_every_file_block_in_plugins_doc_is_the_file_verbatim():
    blocks = file_blocks()
    assert blocks, "PLUGINS.md has no <!-- file: ... --> code blocks"
    for path, code in blocks:
        assert (ROOT / path).read_text(encoding="utf-8") == code, f"{path} drifted from PLUGINS.md"


def test_every_example_plugin_is_shown_in_plugins_doc():
    shown = {path for path, _ in file_blocks()}
    on_disk = {f"examples/plugins/{p.name}" for p in EXAMPLES.glob("*.py")}
    assert on_disk == shown


def test_class_style_example_is_the_deployment_guide_code_as_written():
    seed = seed_code_block("001", "### Creating Custom Plugins")
    example = (EXAMPLES / "my_plugin.py").read_text(encoding="utf-8")
    assert without_trailing_spaces(example) == without_trailing_spaces(seed)


def test_function_style_example_is_the_readme_code_as_written():
    seed = seed_code_block("003", "## Plugin Development")
    example = (EXAMPLES / "custom_event.py").read_text(encoding="utf-8")
    assert without_trailing_spaces(example) == without_trailing_spaces(seed)


def test_events_doc_is_generated_from_the_current_schemas():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_events_doc.py"),
                             "--check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_events_doc_check_fails_when_the_doc_is_stale(tmp_path):
    stale = tmp_path / "EVENTS.md"
    stale.write_text((DOCS / "EVENTS.md").read_text(encoding="utf-8").replace(
        "system:health", "system:hearth", 1), encoding="utf-8")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_events_doc.py"),
                             "--check", "--output", str(stale)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "out of date" in result.stderr


def test_events_doc_ignores_the_users_config_and_environment(tmp_path):
    home = tmp_path / "home"
    (home / ".ksi").mkdir(parents=True)
    (home / ".ksi" / "daemon.json").write_text(
        '{"daemon": {"plugin_dirs": ["%s"]}, "plugins": {"system": {"enabled": false}}}' % EXAMPLES)
    env = {**os.environ, "HOME": str(home), "KSI_PLUGIN_DIRS": str(EXAMPLES)}
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_events_doc.py"),
                             "--check"], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_events_doc_describes_every_system_event_with_its_parameters():
    text = (DOCS / "EVENTS.md").read_text(encoding="utf-8")
    for event in ("system:health", "system:discover", "system:help", "system:plugins",
                  "system:subscribe", "system:event_history", "system:metrics",
                  "system:shutdown"):
        assert f"### `{event}`" in text
    history = text[text.index("### `system:event_history`"):]
    history = history[:history.index("\n### ")]
    assert "| `limit` | integer | no | `100` |" in history
    assert "| `pattern` | string \\| null | no | `null` |" in history


# ---- the examples run as the doc says ----------------------------------------------------------

@pytest.fixture
def example_daemon(daemon_factory):
    return daemon_factory(config=EXAMPLE_CONFIG, args=["--plugin-dir", str(EXAMPLES)])


def test_seed_class_style_plugin_answers_my_command(example_daemon):
    reply = example_daemon.request("my:command")
    assert reply["data"] == {"result": "processed"}


def test_seed_function_style_plugin_answers_my_custom_event(example_daemon):
    reply = example_daemon.request("my:custom:event", {"anything": 1})
    assert reply["data"] == {"status": "processed"}


def test_greeter_replies_then_pushes_to_the_requester_once(example_daemon):
    with example_daemon.client() as client:
        client.send("greeter:greet", {"name": "Ada", "shout": True}, correlation_id="g-5")
        reply, push = client.recv(), client.recv()
    assert push["type"] == "event" and push["event"] == "greeter:greeted"
    assert push["correlation_id"] == "g-5"
    assert push["data"] == {"name": "Ada", "times": 1}
    assert reply["type"] == "reply" and reply["correlation_id"] == "g-5"
    assert reply["data"]["greeting"] == "HELLO, ADA!"
    assert reply["data"]["times"] == 1
    assert reply["data"]["daemon_uptime_s"] >= 0  # came from system:health via ctx.emit
    assert example_daemon.request("greeter:count", {"name": "Ada"})["data"]["times"] == 1


def test_greeter_refuses_bad_data_and_blocked_names_with_coded_errors(example_daemon):
    with example_daemon.client() as client:
        invalid = client.request("greeter:greet", {"nmae": "Ada"})
        blocked = client.request("greeter:greet", {"name": "mallory"})
        assert client.request("system:health")["data"]["status"] == "healthy"
    assert invalid["error"]["code"] == "validation_error"
    assert {tuple(d["loc"]) for d in invalid["error"]["details"]} == {("name",), ("nmae",)}
    assert blocked["error"]["code"] == "forbidden"
    assert blocked["error"]["details"] == {"name": "mallory"}


def test_other_subscribers_see_the_emit_the_push_and_the_request(example_daemon):
    with example_daemon.client() as watcher, example_daemon.client() as greeter:
        watcher.request("system:subscribe", {"patterns": ["greeter:*", "system:health"]})
        greeter.request("greeter:greet", {"name": "Bob"}, correlation_id="b-1")
        seen = [watcher.recv() for _ in range(3)]
    assert [(m["type"], m["event"]) for m in seen] == [
        ("event", "system:health"), ("event", "greeter:greeted"), ("event", "greeter:greet")]
    assert {m["correlation_id"] for m in seen} == {"b-1"}


def test_requester_gets_its_push_once_and_no_echo_of_its_own_request(example_daemon):
    with example_daemon.client() as client:
        client.request("system:subscribe", {"patterns": ["greeter:*"]})
        client.send("greeter:greet", {"name": "Cy"}, correlation_id="own")
        client.send("system:health", correlation_id="flush")
        lines = [client.recv() for _ in range(3)]
    # The health reply may overtake the greeting (async handlers answer when done), but the
    # push caused by the greeting comes once, after its reply, and the request is not echoed.
    greeting = [(m["type"], m["event"]) for m in lines if m["correlation_id"] == "own"]
    assert greeting == [("reply", "greeter:greet"), ("event", "greeter:greeted")]
    assert [m["event"] for m in lines if m["correlation_id"] == "flush"] == ["system:health"]


def test_help_shows_the_greeter_schema_and_its_reply(example_daemon):
    entry = example_daemon.request("system:help", {"event": "greeter:greet"})["data"]
    assert entry["plugin"] == "greeter"
    assert entry["parameters"]["required"] == ["name"]
    assert set(entry["returns"]["properties"]) == {"greeting", "times", "daemon_uptime_s"}


def test_every_hook_runs_and_the_journal_records_the_lifecycle(example_daemon):
    echo = example_daemon.request("hooks_tour:echo", {"text": "hi"})
    assert echo["data"] == {"echo": {"text": "hi", "seen_by_pre_event": True},
                            "seen_by_post_event": True}
    report = example_daemon.request("hooks_tour:report")["data"]
    assert set(report["hooks_ran"]) == {"ksi_startup", "ksi_ready", "ksi_pre_event",
                                        "ksi_handle_event", "ksi_post_event"}
    assert report["requests_seen"] >= 2
    plugins = {p["name"]: p for p in example_daemon.request("system:plugins")["data"]["plugins"]}
    tour = plugins["hooks_tour"]
    assert tour["state"] == "active" and tour["dependencies"] == ["system"]
    assert set(tour["hooks"]) == {"ksi_startup", "ksi_ready", "ksi_stopping", "ksi_shutdown",
                                  "ksi_handle_event", "ksi_pre_event", "ksi_post_event"}
    assert set(tour["events"]) == {"hooks_tour:echo", "hooks_tour:report"}
    assert plugins["greeter"]["version"] == "1.0.0"  # from the module's PLUGIN_METADATA
    journal = example_daemon.var_dir / "plugins" / "hooks_tour" / "journal.txt"
    assert journal.read_text() == "ksi_startup\nksi_ready\n"
    assert example_daemon.stop() == 0
    assert journal.read_text() == "ksi_startup\nksi_ready\nksi_stopping\nksi_shutdown\n"


def test_service_returned_by_ksi_ready_keeps_running(example_daemon):
    first = example_daemon.request("hooks_tour:report")["data"]["heartbeats"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if example_daemon.request("hooks_tour:report")["data"]["heartbeats"] > first:
            return
        time.sleep(0.05)
    pytest.fail("the heartbeat service returned by ksi_ready never ticked")


def test_pre_event_hook_refuses_events_its_config_blocks(daemon_factory):
    daemon = daemon_factory(config={"plugins": {"hooks_tour": {"blocked_events": ["my:command"]}}},
                            args=["--plugin-dir", str(EXAMPLES)])
    refused = daemon.request("my:command")
    assert refused["error"]["code"] == "forbidden"
    assert daemon.request("my:custom:event")["data"] == {"status": "processed"}


def test_failed_plugin_answers_unavailable_and_the_rest_keeps_working(daemon_factory):
    daemon = daemon_factory(config={"plugins": {"flaky": {"fail_at_startup": True}}},
                            args=["--plugin-dir", str(EXAMPLES)])
    ping = daemon.request("flaky:ping")
    assert ping["error"]["code"] == "unavailable"
    assert "fail_at_startup is set in plugins.flaky" in ping["error"]["message"]
    flaky = next(p for p in daemon.request("system:plugins")["data"]["plugins"]
                 if p["name"] == "flaky")
    assert flaky["state"] == "failed"
    assert flaky["error"] == "startup failed: RuntimeError: fail_at_startup is set in plugins.flaky"
    health = daemon.request("system:health")["data"]
    assert health["plugins"]["failed"] == 1 and health["status"] == "degraded"
    assert health["failed_plugins"] == [{"plugin": "flaky", "error": flaky["error"],
                                         "where": f"{EXAMPLES / 'flaky.py'}:13"}]
    assert daemon.request("my:command")["data"] == {"result": "processed"}


def test_flaky_plugin_answers_when_its_config_does_not_fail_it(example_daemon):
    assert example_daemon.request("flaky:ping")["data"] == {"pong": True}


def test_disabled_plugin_is_not_indexed(daemon_factory):
    daemon = daemon_factory(config={"plugins": {"flaky": {"enabled": False}}},
                            args=["--plugin-dir", str(EXAMPLES)])
    assert daemon.request("flaky:ping")["error"]["code"] == "unknown_event"
    flaky = next(p for p in daemon.request("system:plugins")["data"]["plugins"]
                 if p["name"] == "flaky")
    assert flaky["state"] == "disabled"


def test_plugin_dirs_from_the_config_file_are_loaded(daemon_factory):
    daemon = daemon_factory(config={"daemon": {"plugin_dirs": [str(EXAMPLES)]}})
    assert daemon.request("my:custom:event")["data"] == {"status": "processed"}


@pytest.mark.daemon("process")
def test_plugin_dirs_from_the_environment_are_loaded(daemon_factory):
    daemon = daemon_factory(env={"KSI_PLUGIN_DIRS": str(EXAMPLES)})
    assert daemon.request("my:command")["data"] == {"result": "processed"}
