"""(namespace, key) of the state events <-> one key of the JetStream KV bucket.

KV keys may hold only `[-/_=.a-zA-Z0-9]`, and `.` separates tokens. A KSI key or namespace is any
printable text, so each is escaped on its own: letters, digits, `-` and `_` stay as they are;
every other character becomes `=` and the two upper-case hex digits of each of its UTF-8 bytes
(`:` is `=3A`, `é` is `=C3=A9`, `=` itself `=3D`). The KV key is `<namespace>.<key>`, both
escaped: exactly two tokens, as the escaped parts hold no `.`, so one namespace's keys are the
subjects `<namespace>.>` and nothing leaks into another. Readable for the common keys
(`global.user_42`), and reversible: `=` appears only as an escape.
"""
from __future__ import annotations

import re

_NEEDS_ESCAPE = re.compile(r"[^A-Za-z0-9_-]")
_ESCAPED = re.compile(r"(?:=[0-9A-F]{2})+")


def _escape_one(match: re.Match) -> str:
    return "".join(f"={byte:02X}" for byte in match.group().encode())


def _unescape_run(match: re.Match) -> str:
    return bytes.fromhex(match.group().replace("=", "")).decode()


def escape(text: str) -> str:
    return _NEEDS_ESCAPE.sub(_escape_one, text)


def unescape(token: str) -> str:
    return _ESCAPED.sub(_unescape_run, token)


def kv_key(namespace: str, key: str) -> str:
    return f"{escape(namespace)}.{escape(key)}"


def namespace_filter(namespace: str) -> str:
    """The KV key pattern of every key of one namespace."""
    return f"{escape(namespace)}.>"


def clear_marker_key(namespace: str) -> str:
    """The KV key of a namespace's clear marker: the namespace alone, one token, which no
    (namespace, key) ever maps to (docs/CLUSTER.md, "Clearing a namespace")."""
    return escape(namespace)


def cleared_namespace(kv: str) -> str | None:
    """The namespace whose clear marker `kv` is, or None for any other key."""
    return None if "." in kv else unescape(kv)


def state_key(kv: str) -> tuple[str, str] | None:
    """(namespace, key) of a KV key, or None for one this mapping never makes."""
    parts = kv.split(".")
    if len(parts) != 2:
        return None
    return unescape(parts[0]), unescape(parts[1])
