"""Import litellm in a background thread so the socket answers at once.

litellm takes seconds and a lot of memory to import. The plugin starts this loader when the daemon
is ready (unless `plugins.completion.warm_up` is false: then the first request that needs litellm
starts it); requests that arrive earlier wait for `ready()` instead of failing.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
import warnings
from typing import Callable

from ...protocol import UNAVAILABLE, KSIError

# litellm must not fetch its price list or phone home; the daemon works offline.
LITELLM_ENVIRONMENT = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MODE": "PRODUCTION",
                       "HF_HUB_OFFLINE": "1"}


class LiteLLMLoader:
    def __init__(self, providers: Callable[[], dict], log):
        self.providers, self.log = providers, log
        self.module = None
        self.error: BaseException | None = None
        self.load_s: float | None = None
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def is_ready(self) -> bool:
        return self.module is not None

    def start(self) -> None:
        """Begin the import in a thread; a second call does nothing."""
        if self._event is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        threading.Thread(target=self._load, name="litellm-import", daemon=True).start()

    async def ready(self):
        """The litellm module, once imported; raises `unavailable` if the import failed."""
        self.start()
        if self.module is None and self.error is None:
            await self._event.wait()
        if self.error is not None:
            raise KSIError(UNAVAILABLE, f"litellm could not be loaded: {self.error!r}")
        return self.module

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            for name, value in LITELLM_ENVIRONMENT.items():
                os.environ.setdefault(name, value)
            import litellm
            from litellm.utils import custom_llm_setup

            litellm.suppress_debug_info = True
            # litellm logs every call at INFO: noise in the daemon log and time on the hot path.
            for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
                logging.getLogger(name).setLevel(logging.WARNING)
            litellm.telemetry = False
            # litellm.acompletion builds the provider's coroutine in a worker thread, then awaits
            # it: a call cancelled (completion:cancel, an interrupt, shutdown) while that thread
            # runs drops the coroutine before anything was sent, and Python warns that it was
            # never awaited. Nothing is lost or left running; the warning is only noise.
            warnings.filterwarnings("ignore", category=RuntimeWarning,
                                    message=r"coroutine '[^']*acompletion' was never awaited")
            registered = {item["provider"] for item in litellm.custom_provider_map}
            for provider, handler in self.providers().items():
                if provider not in registered:
                    litellm.custom_provider_map.append(
                        {"provider": provider, "custom_handler": handler})
            custom_llm_setup()
            _warm_up(litellm)
            # litellm's import leaves a few hundred thousand long-lived objects. Left to the
            # cyclic GC, each full collection walks them all (a pause of tenths of a second on
            # the loop), and so do the collections of interpreter finalization: seconds between
            # "daemon_stopped" and the process's exit. Frozen, the GC skips them. (Garbage
            # cycles that exist at this moment are never freed: a one-time, small cost.)
            gc.freeze()
            self.module = litellm
        except BaseException as exc:  # noqa: BLE001 - reported to every waiting request
            self.error = exc
            self.log.error("litellm_import_failed", error=repr(exc))
        self.load_s = time.perf_counter() - started
        if self.module is not None:
            self.log.info("litellm_ready", load_s=round(self.load_s, 3))
        try:
            self._loop.call_soon_threadsafe(self._event.set)
        except RuntimeError:
            pass  # the loop closed while we were importing: the daemon is gone


def _warm_up(litellm) -> None:
    """One offline call here, in the import's thread: litellm loads more on its first call (a
    tokenizer, ~0.3 s holding the GIL), which would otherwise stall the loop at the first
    request instead of during the import."""
    from . import offline_model
    try:
        litellm.completion(model=offline_model.DEFAULT_MODEL, num_retries=0, timeout=30,
                           messages=[{"role": "user", "content": "warm up"}])
    except Exception:  # noqa: BLE001 - only a warm-up: real calls report their own failures
        pass
