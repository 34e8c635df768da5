"""A new plugin package and its test: `<plugin dir>/<name>/__init__.py`, `test_<name>.py`.

The plugin is function style (docs/PLUGINS.md (b), (c)): one event, `<name>:hello`, with a
pydantic schema, reading its config section. The test starts a real daemon with the plugin
directory, as a user would (`python -m ksi_daemon --foreground --plugin-dir ...`), and asks it
over the socket with `ksi_client`; run it with `python -m pytest <plugin dir>/<name>`.
"""
from __future__ import annotations

import re
from pathlib import Path

NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,39}")


class PluginNameRefused(ValueError):
    """The name cannot be a plugin's (the message says why)."""


def check_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise PluginNameRefused(f"{name!r} cannot be a plugin name: a lower-case letter, then "
                                "letters, digits or _ (up to 40): it is also the events' "
                                "namespace (my_plugin:hello)")


def write_new_plugin(plugin_dir: Path, name: str) -> list[Path]:
    """Write the package; refuses (FileExistsError) to touch a directory already there."""
    check_name(name)
    package = plugin_dir / name
    package.mkdir(parents=True)  # FileExistsError: never overwrite someone's plugin
    files = {package / "__init__.py": plugin_source(name),
             package / f"test_{name}.py": test_source(name)}
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    return list(files)


def plugin_source(name: str) -> str:
    model = "".join(part.capitalize() for part in name.split("_")) + "Hello"
    return f'''"""The {name} plugin: answers `{name}:hello`.

Config section: `plugins.{name}` in the daemon's config file, e.g.
{{"plugins": {{"{name}": {{"greeting": "Hi"}}}}}}. docs/PLUGINS.md describes everything a plugin
can do (schemas, ctx.emit, pushes, hooks, failures).
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ksi_daemon.event_system import event_handler

PLUGIN_METADATA = {{"name": "{name}", "version": "0.1.0", "description": "Says hello"}}


class {model}(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is a validation_error
    name: str = Field(min_length=1, max_length=80, description="who to greet")


@event_handler("{name}:hello")
async def hello(data: {model}, ctx) -> dict:
    """Greet someone, with the greeting of plugins.{name}.greeting (default Hello)."""
    return {{"text": f"{{ctx.config.get('greeting', 'Hello')}}, {{data.name}}!"}}
'''


def test_source(name: str) -> str:
    return f'''"""The {name} plugin in a real daemon, asked over its socket.

Run: python -m pytest {name}/ (from the plugin directory, with KSI importable).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ksi_client import SyncClient
from ksi_client.errors import KSIError
from ksi_daemon.launcher import wait_until_healthy

PLUGIN_DIR = Path(__file__).resolve().parent.parent


@pytest.fixture
def daemon(tmp_path_factory):
    # A short directory: a Unix socket path may not be longer than 107 bytes.
    home = Path(tmp_path_factory.mktemp("ksi", numbered=True))
    socket_path = home / "run" / "daemon.sock"
    config = home / "daemon.json"
    config.write_text(json.dumps({{"plugins": {{"{name}": {{"greeting": "Hi"}},
                                              "completion": {{"warm_up": False}}}}}}))
    env = {{**os.environ, "HOME": str(home), "KSI_VAR_DIR": str(home / "var")}}
    env.pop("KSI_SOCKET_PATH", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "ksi_daemon", "--foreground", "--config", str(config),
         "--socket", str(socket_path), "--plugin-dir", str(PLUGIN_DIR)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until_healthy(str(socket_path), process, timeout=30) is not None
        yield socket_path
    finally:
        process.terminate()
        process.wait(20)


def test_hello_answers_with_the_configured_greeting(daemon):
    with SyncClient(socket_path=str(daemon)) as client:
        assert client.emit("{name}:hello", {{"name": "Ada"}}) == {{"text": "Hi, Ada!"}}


def test_a_misspelt_field_is_refused(daemon):
    with SyncClient(socket_path=str(daemon)) as client:
        with pytest.raises(KSIError) as refused:
            client.emit("{name}:hello", {{"nmae": "Ada"}})
    assert refused.value.code == "validation_error"
'''
