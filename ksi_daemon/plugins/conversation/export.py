"""Writing one session to a file under var/exports/, as markdown or JSON."""
from __future__ import annotations

import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import orjson

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
EXTENSIONS = {"markdown": "md", "json": "json"}


def export_file_name(session_id: str, fmt: str) -> str:
    safe = _UNSAFE.sub("_", session_id).strip("._")[:80] or "session"
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"{safe}-{stamp}-{time.time_ns() % 1_000_000:06d}.{EXTENSIONS[fmt]}"


def render_markdown(session: dict, messages: list[dict]) -> bytes:
    lines = [f"# Conversation {session['session_id']}", "",
             f"- messages: {len(messages)}",
             f"- started: {_iso(session['created_at'])}",
             f"- last message: {_iso(session['updated_at'])}", ""]
    for message in messages:
        heading = f"## {message['role']}"
        if message.get("model"):
            heading += f" ({message['model']})"
        lines += [heading, "", f"_{_iso(message['timestamp'])}_", "", message["content"] or "", ""]
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            lines += [f"- calls `{function.get('name')}` {function.get('arguments')}", ""]
    return "\n".join(lines).encode()


def render_json(session: dict, messages: list[dict]) -> bytes:
    return orjson.dumps({"session": session, "messages": messages}, option=orjson.OPT_INDENT_2)


def write_export(directory: Path, session: dict, messages: list[dict], fmt: str) -> Path:
    """Write to a temporary name and rename, so a reader never sees half a file."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / export_file_name(session["session_id"], fmt)
    body = render_markdown(session, messages) if fmt == "markdown" else \
        render_json(session, messages)
    partial = path.with_suffix(path.suffix + ".partial")
    with open(partial, "wb") as out:
        out.write(body)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)
    return path


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")
