"""Scaffolding and migration (seeds/001 step 3): the guide's `migrate_to_plugins.py generate` and
`migrate-state` as written, and `daemon_control.py new-plugin`.

The generated plugins are loaded into a real daemon and asked over its socket; the plugin
`new-plugin` writes is tested by the test it writes, run by pytest as its user would.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

from conftest import TEST_ENV, data_of, error_of
from test_daemon_control import control  # noqa: F401  (the fixture: daemon_control.py as typed)

from ksi_daemon.scaffolding.legacy_handlers import read_handler_module

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_HANDLERS = ROOT / "examples" / "legacy_commands"


def migration_tool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """The guide's command line: `python ksi_daemon/migrate_to_plugins.py ...` from the root."""
    env = {**os.environ, **TEST_ENV}
    env.pop("PYTHONPATH", None)  # as a user runs it: the script finds its own package
    return subprocess.run([sys.executable, "ksi_daemon/migrate_to_plugins.py", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=60)


def test_generate_turns_the_example_handlers_into_plugins_that_answer(daemon_factory, workdir):
    output = workdir / "migration_output" / "plugins"
    result = migration_tool("generate", "--handlers-dir", "examples/legacy_commands",
                            "--output-dir", str(output))
    assert result.returncode == 0, result.stderr
    assert "skipped formatting.py: no command handler class in it" in result.stderr
    mapping = {line.split()[0]: line.split()[2] for line in result.stdout.splitlines()
               if "->" in line}
    assert mapping == {"SET_NOTE": "legacy:set_note", "GET_NOTE": "legacy:get_note",
                       "HEALTH_CHECK": "legacy:health_check"}

    daemon = daemon_factory(args=["--plugin-dir", str(output)])
    plugins = {p["name"]: p for p in data_of(daemon.request("system:plugins"))["plugins"]}
    for name in ("legacy_notes", "legacy_health_check"):
        assert plugins[name]["state"] == "active", plugins[name]
    answer = data_of(daemon.request("legacy:set_note", {"key": "k", "text": "milk"}))
    assert answer == {"command": "SET_NOTE", "ported": False,
                      "parameters": {"key": "k", "text": "milk", "pinned": None}}
    # the legacy alias, the declared schema, the summary of get_help
    assert data_of(daemon.request("legacy:put_note", {"key": "k"}))["command"] == "SET_NOTE"
    refused = error_of(daemon.request("legacy:set_note", {"text": "no key"}))
    assert refused["code"] == "validation_error" and refused["details"][0]["loc"] == ["key"]
    described = data_of(daemon.request("system:help", {"event": "legacy:set_note"}))
    assert described["summary"] == "Store a note under a key (replacing an older one)"
    assert described["parameters"]["required"] == ["key"]
    # a handler without get_help, registered by `command_name`, takes any data
    health = data_of(daemon.request("legacy:health_check", {"verbose": True}))
    assert health["parameters"] == {"verbose": True}


def test_generate_says_what_is_wrong_with_its_input(workdir):
    missing = migration_tool("generate", "--handlers-dir", str(workdir / "nope"),
                             "--output-dir", str(workdir / "out"))
    assert missing.returncode == 1 and "no such directory" in missing.stderr
    (workdir / "empty").mkdir()
    (workdir / "empty" / "util.py").write_text("def f():\n    return 1\n")
    (workdir / "empty" / "broken.py").write_text("class (:\n")
    nothing = migration_tool("generate", "--handlers-dir", str(workdir / "empty"),
                             "--output-dir", str(workdir / "out"))
    assert nothing.returncode == 1 and "no legacy command handlers" in nothing.stderr
    assert "broken.py: cannot be parsed" in nothing.stderr
    first = migration_tool("generate", "--handlers-dir", str(EXAMPLE_HANDLERS),
                           "--output-dir", str(workdir / "out"))
    assert first.returncode == 0
    again = migration_tool("generate", "--handlers-dir", str(EXAMPLE_HANDLERS),
                           "--output-dir", str(workdir / "out"))
    assert again.returncode == 1 and "--force" in again.stderr
    bad_namespace = migration_tool("generate", "--handlers-dir", str(EXAMPLE_HANDLERS),
                                   "--output-dir", str(workdir / "out"), "--namespace", "Old!")
    assert bad_namespace.returncode == 2 and "is not a namespace" in bad_namespace.stderr


def test_handlers_the_reader_cannot_use_are_named_with_the_reason(tmp_path):
    module = tmp_path / "odd.py"
    module.write_text('NAME = "X"\n\n@command_handler(NAME)\nclass Computed:\n'
                      '    async def handle(self, parameters, writer, full_command):\n'
                      '        return {}\n\n'
                      '@command_handler("NO_HANDLE")\nclass NoHandle:\n    pass\n')
    read = read_handler_module(module)
    assert read.commands == []
    assert read.skipped == ["class Computed: the command name is not a string literal",
                            "class NoHandle (NO_HANDLE): no handle method"]


def test_migrate_state_as_the_guide_writes_it_feeds_the_guides_state_dir(daemon_factory,
                                                                         workdir):
    old_state = workdir / "var_state_old"
    old_state.mkdir()
    (old_state / "global.json").write_bytes(orjson.dumps({"theme": "dark", "count": 3}))
    (old_state / "agent_1.json").write_bytes(orjson.dumps({"config": {"model": "sonnet"}}))
    new_state = workdir / "migration_output" / "state"
    result = migration_tool("migrate-state", "--old-state", str(old_state),
                            "--new-state", str(new_state))
    assert result.returncode == 0, result.stderr
    assert "imported: 3" in result.stdout
    assert (new_state / "state.db").is_file()
    # the guide's config names that directory as the state service's
    daemon = daemon_factory({"plugins": {"state_service": {"state_dir": str(new_state)}}})
    assert data_of(daemon.request("state:get", {"key": "count"}))["value"] == 3
    assert data_of(daemon.request("state:get", {"key": "config", "namespace": "agent_1"}))[
        "value"] == {"model": "sonnet"}
    unreadable = migration_tool("migrate-state", "--old-state", str(workdir / "nope"),
                                "--new-state", str(new_state))
    assert unreadable.returncode == 1 and "cannot read" in unreadable.stderr


def test_new_plugin_writes_a_plugin_whose_own_test_passes(control, tmp_path):  # noqa: F811
    plugin_dir = tmp_path / "my_plugins"
    result = control.run("new-plugin", "weather", "--dir", str(plugin_dir))
    assert result.returncode == 0, result.stderr
    assert (plugin_dir / "weather" / "__init__.py").is_file()
    test_file = plugin_dir / "weather" / "test_weather.py"
    env = {**control.env, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(test_file)], cwd=plugin_dir, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout
    again = control.run("new-plugin", "weather", "--dir", str(plugin_dir))
    assert again.returncode == 1 and "exists already" in again.stderr
    bad = control.run("new-plugin", "Weather-2", "--dir", str(plugin_dir))
    assert bad.returncode == 1 and "cannot be a plugin name" in bad.stderr


def test_new_plugin_goes_to_the_users_plugin_directory_by_default(control):  # noqa: F811
    result = control.run("new-plugin", "notes")
    assert result.returncode == 0, result.stderr
    assert (control.workdir / ".ksi" / "plugins" / "notes" / "__init__.py").is_file()
    assert "daemon.plugin_dirs" in result.stdout


def test_the_scaffolding_commands_of_operations_md_run(workdir):
    from doc_commands import run_doc_commands
    (workdir / "var" / "state").mkdir(parents=True)
    (workdir / "var" / "state" / "global.json").write_bytes(orjson.dumps({"theme": "dark"}))
    result = run_doc_commands("OPERATIONS.md", "scaffolding", workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (workdir / "migration_output" / "plugins" / "legacy_notes.py").is_file()
    assert (workdir / "migration_output" / "state" / "state.db").is_file()
    assert "2 passed" in result.stdout  # the test new-plugin wrote
