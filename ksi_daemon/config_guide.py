"""The deployment guide's config keys (seeds/001) as written: what each one does here.

Its `plugins.<x>_service` sections name plugins by their service. Each is read as that plugin's
own section, with the guide's key names translated; a key the plugin's own section sets wins.
Its tuning keys that mean nothing in this daemon are accepted with a warning saying why, instead
of the unknown-key warning.
"""
from __future__ import annotations

from pathlib import Path

# guide section -> (plugin, {guide key: (plugin key, how the value is translated)})
SERVICE_SECTIONS = {
    "state_service": ("state", {
        "state_dir": ("db_path", lambda d: str(Path(d).expanduser() / "state.db"))}),
    "agent_service": ("agent", {
        "profiles_dir": ("profiles_dir", None),
        "identities_file": ("identities_file", None)}),
    "completion_service": ("completion", {
        "model": ("default_model", None),
        "timeout": ("timeout_s", None)}),  # its type is checked where it is used
}

NO_EFFECT = {
    "event_queue_size": "events are routed as each line arrives, with no queue between the "
                        "socket and the handlers; what waits for a slow client is bounded by "
                        "daemon.output_buffer_bytes",
    "worker_threads": "handlers run on one asyncio event loop; each database has its own "
                      "writer thread, and blocking work goes to threads of its own",
    "batch_timeout": "writes are committed in groups as they come (one transaction per pass "
                     "of the event loop or of the writer thread), with no timer to wait for",
}


def apply_guide_keys(raw: dict) -> list[str]:
    """Translate the guide's sections in `raw` (the file's JSON, changed in place); returns
    warnings for the keys accepted without effect. A value that cannot be translated raises
    ValueError naming its key."""
    warnings = []
    daemon = raw.get("daemon")
    if isinstance(daemon, dict):
        for key, why in NO_EFFECT.items():
            if key in daemon:
                daemon.pop(key)
                warnings.append(f"config key daemon.{key} has no effect here: {why}")
    plugins = raw.get("plugins")
    if not isinstance(plugins, dict):
        return warnings
    for section_name, (plugin, names) in SERVICE_SECTIONS.items():
        section = plugins.pop(section_name, None)
        if not isinstance(section, dict):
            continue
        translated = {}
        for key, value in section.items():
            target, convert = names.get(key, (key, None))
            try:
                translated[target] = value if convert is None else convert(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"plugins.{section_name}.{key}: {exc}") from None
        own = plugins.get(plugin)
        plugins[plugin] = {**translated, **(own if isinstance(own, dict) else {})}
    return warnings
