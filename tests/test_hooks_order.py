"""Hooks run in plugin order (dependencies, priority, name), through the real daemon.

tests/plugins/hook_order has three plugins implementing the completion plugin's own hooks:
order_c (priority 50), order_a and order_b (priority 100). pluggy would call them
last-registered-first (c, b, a); the daemon's order is c, a, b.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import data_of

# Router and plugin logic: a daemon in this process (tests/inprocess.py).
pytestmark = pytest.mark.daemon("inprocess")

PLUGINS = Path(__file__).parent / "plugins"


def test_completion_hooks_run_in_plugin_order_and_their_specs_check_implementations(
        daemon_factory):
    daemon = daemon_factory({"daemon": {"plugin_dirs": [str(PLUGINS / "hook_order")]}})
    with daemon.client(timeout=60) as client:
        result = data_of(client.request("completion:request", {"prompt": "in what order"}))
        plugins = {p["name"]: p for p in data_of(client.request("system:plugins"))["plugins"]}
    assert result["annotations"]["pre_call_order"] == ["c", "a", "b"]
    assert result["annotations"]["post_response_order"] == ["c", "a", "b"]
    assert plugins["order_a"]["hooks"] == ["ksi_completion_post_response",
                                           "ksi_completion_pre_call"]
    # the spec comes from the completion plugin's own hookspecs module
    assert plugins["wrong_arguments"]["state"] == "failed"
    assert "prompt_of_my_dreams" in plugins["wrong_arguments"]["error"]
    assert plugins["completion"]["state"] == "active"
