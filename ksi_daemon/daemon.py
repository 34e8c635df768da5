"""Process lifecycle: single-instance lock, plugins up, signals, graceful shutdown.

Shutdown order (SIGTERM, SIGINT or system:shutdown): stop taking requests and close listeners
(`ksi_stopping`, where plugins finish or checkpoint their work by `shutdown_deadline`), let
in-flight requests finish up to that same deadline (the rest answer `unavailable`), run
`ksi_shutdown` in reverse plugin order (the transport removes its socket), remove the pid file,
exit 0. Work that ignores cancellation does not keep the process alive.
"""
from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import resource
import signal
import sys
import threading
import time
from pathlib import Path

import structlog

from . import __version__
from .plugin_manager import PluginManager
from .core.router import Router
from .loop_watch import LoopWatch, handler_names_of

log = structlog.get_logger("ksi.daemon")
LEFTOVER_GRACE_S = 1.0
# Each client is a file descriptor: the usual soft limit of 1024 would refuse (EMFILE) a burst
# of a thousand clients once the databases and logs have theirs.
WANTED_OPEN_FILES = 65536


class AlreadyRunning(Exception):
    pass


class InstanceLock:
    """An flock next to the socket: held for the daemon's life, released by the kernel on exit."""

    def __init__(self, socket_path: str):
        self.path = Path(socket_path + ".lock")
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(f"another KSI daemon (pid {holder}) is already running on "
                                 f"{self.path.with_suffix('')}") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd

    def release(self) -> None:
        # The file stays: unlinking it could let two daemons lock two different inodes.
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def prepare_run_dir(socket_path: str) -> None:
    """Create the socket's directory owner-only (0700) if the daemon is the one creating it."""
    run_dir = Path(socket_path).parent
    if not run_dir.exists():
        run_dir.mkdir(mode=0o700, parents=True)
        os.chmod(run_dir, 0o700)  # mkdir's mode is filtered by the umask


def raise_open_file_limit(wanted: int = WANTED_OPEN_FILES) -> int:
    """Lift the soft limit on open files towards `wanted` (never past the hard limit, which
    only root may raise); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("open_file_limit_kept", soft=soft, hard=hard, error=str(exc))
    if soft != resource.RLIM_INFINITY and soft < 1100:
        log.warning("open_file_limit_low", soft=soft, hard=hard,
                    consequence="fewer than ~1000 clients can be connected at once")
    return soft


class Daemon:
    def __init__(self, config: dict):
        self.config = config
        settings = config["daemon"]
        self.started_at = time.time()
        self.version = __version__
        self.pid_file = Path(settings["var_dir"]) / "run" / "daemon.pid"
        self.router = Router(event_timeout=settings["event_timeout"],
                             max_event_history=settings["max_event_history"],
                             max_event_history_bytes=settings["max_event_history_bytes"],
                             log_events=settings["log_events"])
        self.plugins = PluginManager(config, self.router, self)
        self.loop_watch = LoopWatch(handler_names=handler_names_of(self.router))
        self.shutdown_timeout = settings["shutdown_timeout"]
        # time.monotonic() by which in-flight work must be done; set when shutdown begins.
        self.shutdown_deadline: float | None = None
        self._stop: asyncio.Event | None = None

    def request_shutdown(self, timeout_s: float | None = None) -> None:
        """Ask the daemon to stop; safe to call from a handler (the reply is written first)."""
        if timeout_s is not None:
            self.shutdown_timeout = timeout_s
        if self._stop is not None:
            self._stop.set()

    async def run(self) -> int:
        raise_open_file_limit()
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_shutdown)
        # A plugin that hangs while starting must not make the daemon deaf to SIGTERM.
        starting = asyncio.ensure_future(self._start())
        stopping = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            log.warning("stopped_during_start_up")
            starting.cancel()
            await asyncio.wait({starting})
            await self.plugins.shutdown_all()
            return 0
        if not starting.result():
            stopping.cancel()
            await self.plugins.shutdown_all()
            return 1
        self.loop_watch.start()  # serving now (start-up's imports held the loop before)
        await stopping
        log.info("daemon_stopping", deadline_s=self.shutdown_timeout)
        self.shutdown_deadline = time.monotonic() + self.shutdown_timeout
        self.router.accepting = False
        await self.plugins.stopping_all()
        cancelled = await self.router.drain(max(0.0, self.shutdown_deadline - time.monotonic()))
        await self.plugins.shutdown_all()
        self.pid_file.unlink(missing_ok=True)
        log.info("daemon_stopped", cancelled_requests=cancelled)
        await self._leave_no_task_behind()
        return 0

    async def _leave_no_task_behind(self) -> None:
        """Cancel what is still running; if something ignores that, exit without waiting for it.

        The event loop's own clean-up waits for every task without a limit, so one call that
        swallows cancellation (a model client, a plugin) would keep the process alive forever.
        """
        leftovers = asyncio.all_tasks() - {asyncio.current_task()}
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.wait(leftovers, timeout=LEFTOVER_GRACE_S)
        stuck = [task for task in leftovers if not task.done()]
        if stuck:
            log.warning("exiting_past_stuck_tasks", tasks=[t.get_name() for t in stuck][:20])
            logging.shutdown()
            os._exit(0)

    async def _start(self) -> bool:
        """Load, start and ready every plugin; False when no transport came up."""
        self.plugins.load_all()
        await self.plugins.start_all()
        await self.plugins.ready_all()
        if not self.plugins.active_services("transport"):
            log.error("no_transport", reason="no transport plugin is active; see the log above")
            return False
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(str(os.getpid()))
        log.info("daemon_started", pid=os.getpid(), version=self.version,
                 socket=self.config["daemon"]["socket_path"], plugins=self.plugins.counts(),
                 log_level=self.config["daemon"]["log_level"])
        return True

    def uptime(self) -> float:
        return time.time() - self.started_at


def exit_past_running_threads(code: int) -> int:
    """`code` for the interpreter's normal exit, or the end of the process right here when
    threads are still running, so the interpreter never finalizes under them.

    Such a thread is the completion plugin's litellm import when SIGTERM comes right after
    start (it takes seconds): the normal exit would run litellm's atexit handlers (which import
    and run an event loop) while that thread holds the import locks, then tear modules down
    under a thread inside C extensions; once in nine such stops that ended in SIGABRT after
    `daemon_stopped`. Nothing is left to save at this point: the plugins closed their databases,
    the pid file is gone, the kernel drops the instance lock.
    """
    running = [thread.name for thread in threading.enumerate()
               if thread is not threading.current_thread() and thread.is_alive()]
    if not running:
        return code
    log.info("exiting_past_running_threads", threads=running[:20], exit_code=code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
