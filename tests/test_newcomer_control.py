"""daemon_control.py as a newcomer first meets it: pipes, other directories, restarts, failures."""
from __future__ import annotations

import os
import subprocess
import sys

import orjson

from test_daemon_control import CONTROL, Control, control  # noqa: F401 (control is a fixture)

SIGPIPE_EXIT = 128 + 13


def run_into_a_closed_pipe(control: Control, *args: str) -> subprocess.CompletedProcess:
    """As `daemon_control.py VERB | head -1` once head has read its line and gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, str(CONTROL), *args], cwd=control.workdir,
                              env=control.env, stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=60)
    finally:
        os.close(write_end)


def test_a_reader_that_goes_away_ends_status_health_and_logs_quietly(control):
    control.started()
    for verb in ("status", "health", "logs"):
        result = run_into_a_closed_pipe(control, verb)
        assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, verb
        assert result.stderr == "", (verb, result.stderr)
        assert result.returncode == SIGPIPE_EXIT, verb


def plugin_states(control: Control) -> dict[str, str]:
    plugins = control.request("system:plugins")["data"]["plugins"]
    return {plugin["name"]: plugin["state"] for plugin in plugins}


def test_restart_starts_again_with_the_config_file_start_was_given(control):
    config = control.workdir / "quiet.json"
    config.write_text('{"plugins": {"orchestration": {"enabled": false}, '
                      '"completion": {"warm_up": false}}}')
    assert control.run("start", "--config", str(config)).returncode == 0
    assert plugin_states(control)["orchestration"] == "disabled"
    restarted = control.run("restart")
    assert restarted.returncode == 0, restarted.stderr
    assert f"config file it was started with: {config}" in restarted.stdout
    assert plugin_states(control)["orchestration"] == "disabled"


def test_restart_leaves_the_daemon_running_when_its_config_file_broke(control):
    config = control.workdir / "quiet.json"
    config.write_text('{"plugins": {"orchestration": {"enabled": false}, '
                      '"completion": {"warm_up": false}}}')
    assert control.run("start", "--config", str(config)).returncode == 0
    pid = control.request("system:health")["data"]["pid"]
    config.write_text("{not json")
    refused = control.run("restart")
    assert refused.returncode == 1 and "cannot be used now" in refused.stderr
    assert control.request("system:health")["data"]["pid"] == pid


BROKEN_IMPORT = "import os\nimport a_module_nobody_installed  # line 2\n"
BROKEN_START = '''from ksi_daemon.plugin_base import hookimpl


@hookimpl
def ksi_startup(config):
    raise RuntimeError("no licence key\\nsecond line of the story")  # line 6
'''
BROKEN_SYNTAX = "def handler(:\n"


def test_start_and_health_name_each_failed_plugin_with_its_reason_and_place(control):
    plugins = control.workdir / "plugins"
    plugins.mkdir()
    for name, text in (("needs_a_module", BROKEN_IMPORT), ("refuses_to_start", BROKEN_START),
                       ("typo", BROKEN_SYNTAX)):
        (plugins / f"{name}.py").write_text(text)
    control.env["KSI_PLUGIN_DIRS"] = str(plugins)
    started = control.run("start")
    assert started.returncode == 0, started.stderr
    assert "running but 3 plugins failed" in started.stdout
    expected = {
        "needs_a_module": ("import failed: ModuleNotFoundError: No module named "
                           "'a_module_nobody_installed'", f"{plugins / 'needs_a_module.py'}:2"),
        "refuses_to_start": ("startup failed: RuntimeError: no licence key",
                             f"{plugins / 'refuses_to_start.py'}:6"),
        "typo": ("import failed: SyntaxError", f"{plugins / 'typo.py'}:1")}
    for name, (error, where) in expected.items():
        line = next(line for line in started.stderr.splitlines() if f"plugin {name} " in line)
        assert error in line and line.endswith(f"(at {where})"), line
    assert "second line" not in started.stderr
    health = orjson.loads(control.run("health", "--json").stdout)
    assert health["status"] == "degraded"
    assert {p["plugin"]: p["where"] for p in health["failed_plugins"]} == \
        {name: where for name, (_, where) in expected.items()}
    shown = control.run("health").stdout
    assert "degraded" in shown and "refuses_to_start failed: startup failed" in shown
    table = control.run("status").stdout
    for name, (_, where) in expected.items():
        row = next(line for line in table.splitlines() if line.startswith(name))
        assert row.endswith(f"(at {where})"), row
