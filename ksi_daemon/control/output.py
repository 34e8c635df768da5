"""How the control command prints: reasons on stderr, aligned fields, short durations."""
from __future__ import annotations

import sys

EXIT_OK, EXIT_FAILED, EXIT_UNAVAILABLE = 0, 1, 2


def error(message: str) -> None:
    print(f"ksi: {message}", file=sys.stderr, flush=True)


def print_fields(rows: list[tuple[str, object]], indent: str = "") -> None:
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{indent}{name:<{width}}  {value}")


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"
