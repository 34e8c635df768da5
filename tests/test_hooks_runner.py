"""The hook runner on its own (no daemon): order, firstresult, error policies, failed plugins."""
from __future__ import annotations

import asyncio
import types

import pluggy
import pytest

from ksi_daemon import hookspecs
from ksi_daemon.core.hooks import HookRunner, refuse_or_skip
from ksi_daemon.plugin_base import hookimpl
from ksi_daemon.protocol import FORBIDDEN, KSIError


class Plugin:
    def __init__(self, name, answer=None, fails=None):
        self.name, self.answer, self.fails, self.calls = name, answer, fails, []

    @hookimpl
    def ksi_handle_event(self, event_name):
        self.calls.append(event_name)
        return self.answer

    @hookimpl
    async def ksi_stopping(self, context):
        self.calls.append(context)
        if self.fails:
            raise self.fails


def runner_of(*plugins):
    pm = pluggy.PluginManager("ksi")
    pm.add_hookspecs(hookspecs)
    records = [types.SimpleNamespace(name=p.name, obj=p, state="active") for p in plugins]
    for record in reversed(records):  # registered in another order than the plugin order
        pm.register(record.obj, name=record.name)
    return HookRunner(pm, lambda: records), records


def test_implementations_run_in_plugin_order_not_registration_order():
    runner, _ = runner_of(*(Plugin(n) for n in "abc"))
    runner.rebuild()
    hook = runner.hook("ksi_stopping")
    asyncio.run(hook.call_each(context="x"))
    assert [impl.plugin.name for impl in hook.impls] == ["a", "b", "c"]


def test_firstresult_is_what_the_spec_says():
    plugins = [Plugin("a"), Plugin("b", answer={"from": "b"}), Plugin("c", answer={"from": "c"})]
    runner, _ = runner_of(*plugins)
    runner.rebuild()
    first = runner.hook("ksi_handle_event")
    assert asyncio.run(first.call_first(event_name="x:y")) == {"from": "b"}
    assert plugins[2].calls == []  # asked until one answered
    with pytest.raises(TypeError):
        asyncio.run(first.call_each(event_name="x:y"))
    with pytest.raises(TypeError):
        asyncio.run(runner.hook("ksi_stopping").call_first(context=None))


def test_error_policies_and_a_failed_plugin_leaving_the_hook():
    plugins = [Plugin("a", fails=RuntimeError("bug")), Plugin("b"),
               Plugin("c", fails=KSIError(FORBIDDEN, "no"))]
    runner, records = runner_of(*plugins)
    runner.rebuild()
    hook = runner.hook("ksi_stopping")
    with pytest.raises(RuntimeError):  # the default: the caller handles it
        asyncio.run(hook.call_each(context=1))
    with pytest.raises(KSIError):  # the bug is skipped, the refusal reaches the caller
        asyncio.run(hook.call_each(refuse_or_skip, context=2))
    assert plugins[1].calls == [2]
    records[2].state = "failed"
    runner.rebuild()  # the same Hook object, now without c
    assert asyncio.run(hook.call_each(refuse_or_skip, context=3)) == [None]
    assert [impl.plugin.name for impl in hook.impls] == ["a", "b"]
    assert [impl.plugin.name for impl in runner.of(records[2], "ksi_stopping")] == ["c"]


class AsyncAnswer(Plugin):
    @hookimpl
    async def ksi_handle_event(self, event_name):  # not a plain function: refused at once
        self.calls.append(event_name)
        return {"from": self.name}


def test_call_first_at_once_takes_plain_answers_and_fails_an_async_one_by_the_policy():
    plugins = [AsyncAnswer("a"), Plugin("b", answer={"from": "b"})]
    runner, _ = runner_of(*plugins)
    runner.rebuild()
    first = runner.hook("ksi_handle_event")
    failed = []
    assert first.call_first_at_once(lambda impl, hook, exc: failed.append(
        (impl.plugin.name, type(exc).__name__)), event_name="x:y") == {"from": "b"}
    assert failed == [("a", "TypeError")]
    with pytest.raises(TypeError):
        first.call_first_at_once(event_name="x:y")  # the default policy raises it
    with pytest.raises(TypeError):
        runner.hook("ksi_stopping").call_first_at_once(context=None)
