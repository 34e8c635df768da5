"""A plugin's view of the daemon: the `context` every lifecycle hook receives.

A plugin talks to the rest of the daemon through events and its own hooks, so this is all it
gets: its name, config section, data directory and logger; `emit`, `announce`, `announce_all`
and `push`; the shutdown deadline; `hook(name)` for the hooks it calls; `report_degraded` for
what health should say when something it needs fails. The router, the plugin
manager and the daemon object stay out of reach: a plugin holding them could depend on any of
their internals, and every event it sent would be recorded under its object's repr instead of
its name.

The few built-in plugins that are part of the daemon's machinery (`system` reads the router's
history and subscriptions and the manager's status; a transport hands lines to the router)
declare `PluginCapabilities(internals=True)` and, being built in, find the raw objects in
`context.internals`. Anybody else asking for them gets a PermissionError.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, NamedTuple


class Internals(NamedTuple):
    """The daemon's own objects, for the built-in plugins that declared they need them."""
    router: Any
    manager: Any
    daemon: Any


class PluginContext:
    def __init__(self, record, router, hooks, shutdown_deadline: Callable[[], float | None],
                 internals: Internals | None, log, note_degraded: Callable[[Any], None]):
        self.name, self.log = record.name, log
        self._record, self._router, self._hooks = record, router, hooks
        self._shutdown_deadline, self._internals = shutdown_deadline, internals
        self._note_degraded = note_degraded

    @property
    def config(self) -> dict:
        """This plugin's section of the configuration, `plugins.<name>`."""
        return self._record.config

    @property
    def data_dir(self) -> Path | None:
        """`var/plugins/<name>/`, created before `ksi_startup`."""
        return self._record.data_dir

    @property
    def shutdown_deadline(self) -> float | None:
        """The `time.monotonic()` by which in-flight work must be done; None until shutdown."""
        return self._shutdown_deadline()

    async def emit(self, event: str, data: dict | None = None, correlation_id: str | None = None,
                   connection=None, agent_id: str | None = None) -> Any:
        """Route `event` to its handler (and subscribers); return the handler's reply data.
        `agent_id`: the agent it is sent for (a tool call), which its handler's context names."""
        return await self._router.emit(event, data, correlation_id=correlation_id,
                                       source=self._record, connection=connection,
                                       agent_id=agent_id)

    def announce(self, event: str, data: dict, correlation_id: str | None = None,
                 connection=None) -> None:
        """`emit` for code that cannot await (a done-callback); the reply data is not returned."""
        self._router.announce(event, data, correlation_id, self._record, connection)

    def announce_all(self, event: str, announced: list[tuple[str | None, dict]]) -> None:
        """`announce` of many events of one name, given as (correlation_id, data) pairs."""
        self._router.announce_all(event, announced, self._record)

    def push(self, event: str, data: Any, correlation_id: str | None = None,
             connection=None) -> None:
        """Send `event` to `connection` (once, if given) and to matching subscribers."""
        self._router.push(event, data, correlation_id, connection)

    def report_degraded(self, reason: str | None) -> None:
        """The plugin runs but something it needs fails (its disk is full): `system:health` says
        `degraded` and names it with `reason` until the plugin reports None (it works again)."""
        self._record.degraded = reason
        self._note_degraded(self._record)

    def hook(self, name: str):
        """The hook `name` (a `ksi_daemon.core.hooks.Hook`): its implementations in plugin
        order, to call with `call_each` or `call_first`."""
        return self._hooks.hook(name)

    @property
    def internals(self) -> Internals:
        if self._internals is None:
            raise PermissionError(
                f"plugin {self.name} has no access to the daemon's internals: only built-in "
                "plugins that declare PluginCapabilities(internals=True) do")
        return self._internals
