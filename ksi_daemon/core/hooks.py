"""The one hook runner: each hook's implementations, in plugin order, computed once.

Every call of a hook goes through here: the plugin manager's lifecycle calls, the router's
fallback and middleware lists (fed from `Hook.impls`), and the hooks a plugin declares for
others (the completion plugin's `ksi_completion_pre_call`). pluggy keeps the registry and checks
signatures; it does not call anything, because its call order is last-registered-first and the
daemon's promise is plugin order: dependencies, then priority, then name (shutdown in reverse).

What one implementation raising does is chosen by the caller, by name (`on_error`):
`raise_error` (the default: the caller turns it into a reply), `refuse_or_skip` (a `KSIError`
refuses, anything else is logged and the next implementation runs), or the plugin manager's
own policy that marks the plugin failed and carries on.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, NamedTuple

import structlog

from .protocol import KSIError

log = structlog.get_logger("ksi.hooks")


class Impl(NamedTuple):
    """One plugin's implementation of one hook. A tuple so the router can unpack it."""
    plugin: Any  # the PluginRecord (it has `name`, `state`, `capabilities`)
    function: Callable
    argnames: tuple[str, ...]

    def call(self, **available) -> Any:
        """Call with the arguments it names, and return what it returns (maybe an awaitable)."""
        return self.function(**{name: available[name] for name in self.argnames})

    async def run(self, **available) -> Any:
        """Call, and await the result if it is awaitable."""
        result = self.function(**{name: available[name] for name in self.argnames})
        if inspect.isawaitable(result):
            result = await result
        return result


def raise_error(impl: Impl, hook: str, exc: Exception) -> None:
    """The caller handles it (middleware and fallbacks: the request's reply says what)."""
    raise exc


def refuse_or_skip(impl: Impl, hook: str, exc: Exception) -> None:
    """A KSIError is a refusal and reaches the caller; any other error is the plugin's bug: it
    is logged and the next implementation runs, so one broken plugin breaks nothing else."""
    if isinstance(exc, KSIError):
        raise exc
    log.error("hook_failed", hook=hook, plugin=impl.plugin.name, error=repr(exc))


def log_and_skip(impl: Impl, hook: str, exc: Exception) -> None:
    """Any error is the plugin's: logged, and the next implementation answers instead."""
    log.error("hook_failed", hook=hook, plugin=impl.plugin.name, error=repr(exc))


OnError = Callable[[Impl, str, Exception], None]


class Hook:
    """A hook's implementations, in plugin order, of the plugins still running.

    `impls` is rebuilt by the runner when the set of plugins changes (one fails), never per
    call; `bool(hook)` says at once whether anybody implements it.
    """
    __slots__ = ("name", "firstresult", "impls")

    def __init__(self, name: str, firstresult: bool):
        self.name, self.firstresult = name, firstresult
        self.impls: tuple[Impl, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.impls)

    async def call_each(self, on_error: OnError = raise_error, **kwargs) -> list:
        """Every implementation in turn; the list of what each returned (skipped ones left out)."""
        if self.firstresult:
            raise TypeError(f"{self.name} is a firstresult hook (hookspecs.py): use call_first")
        results = []
        for impl in self.impls:
            try:
                results.append(await impl.run(**kwargs))
            except Exception as exc:  # noqa: BLE001 - the policy decides
                on_error(impl, self.name, exc)
        return results

    async def call_first(self, on_error: OnError = raise_error, **kwargs) -> Any:
        """Implementations in turn until one returns something other than None; that, or None."""
        if not self.firstresult:
            raise TypeError(f"{self.name} is not a firstresult hook (hookspecs.py): "
                            "use call_each")
        for impl in self.impls:
            try:
                result = await impl.run(**kwargs)
            except Exception as exc:  # noqa: BLE001 - the policy decides
                on_error(impl, self.name, exc)
                continue
            if result is not None:
                return result
        return None

    def call_first_at_once(self, on_error: OnError = raise_error, **kwargs) -> Any:
        """`call_first` for a hook asked where nothing may be awaited (a request's path, start):
        its implementations are plain functions, and one that answers with an awaitable fails."""
        if not self.firstresult:
            raise TypeError(f"{self.name} is not a firstresult hook (hookspecs.py)")
        for impl in self.impls:
            try:
                result = impl.call(**kwargs)
                if inspect.isawaitable(result):
                    if inspect.iscoroutine(result):
                        result.close()  # never awaited, and never warned about
                    raise TypeError(f"{self.name} must be a plain function, not async")
            except Exception as exc:  # noqa: BLE001 - the policy decides
                on_error(impl, self.name, exc)
                continue
            if result is not None:
                return result
        return None


class HookRunner:
    """Reads pluggy's registry once per change of the plugin set and hands out `Hook`s.

    plugins_in_order: the plugin records in start order, each with `obj` (what was registered
        with pluggy) and `state`.
    """

    def __init__(self, pm, plugins_in_order: Callable[[], Iterable[Any]]):
        self.pm, self.plugins_in_order = pm, plugins_in_order
        self._hooks: dict[str, Hook] = {}
        self._by_plugin: dict[int, dict[str, tuple[Impl, ...]]] = {}

    def hook(self, name: str) -> Hook:
        """The hook called `name`: the same object for every caller, kept up to date."""
        hook = self._hooks.get(name)
        if hook is None:
            hook = self._hooks[name] = Hook(name, self._is_firstresult(name))
            hook.impls = self._running_impls(name)
        return hook

    def of(self, plugin, name: str) -> tuple[Impl, ...]:
        """One plugin's implementations of `name`, whatever its state (lifecycle calls)."""
        return self._by_plugin.get(id(plugin.obj), {}).get(name, ())

    def rebuild(self) -> None:
        """Read the registry again: after loading, and whenever a plugin fails."""
        self._by_plugin = {}
        for caller_name in self.pm.hook.__dict__:
            caller = getattr(self.pm.hook, caller_name)
            for impl in caller.get_hookimpls():
                if impl.hookwrapper or getattr(impl, "wrapper", False):
                    continue  # pluggy wrappers are not part of the plugin API
                by_name = self._by_plugin.setdefault(id(impl.plugin), {})
                by_name[caller_name] = by_name.get(caller_name, ()) + (
                    Impl(None, impl.function, tuple(impl.argnames)),)
        records = {id(r.obj): r for r in self.plugins_in_order() if r.obj is not None}
        for key, by_name in self._by_plugin.items():
            record = records.get(key)
            for name, impls in by_name.items():
                by_name[name] = tuple(i._replace(plugin=record) for i in impls)
        for name, hook in self._hooks.items():
            hook.impls = self._running_impls(name)

    def _running_impls(self, name: str) -> tuple[Impl, ...]:
        return tuple(impl for record in self.plugins_in_order()
                     if record.state not in ("failed", "disabled") and record.obj is not None
                     for impl in self.of(record, name))

    def _is_firstresult(self, name: str) -> bool:
        caller = getattr(self.pm.hook, name, None)
        spec = getattr(caller, "spec", None)
        return bool(spec is not None and spec.opts.get("firstresult"))
