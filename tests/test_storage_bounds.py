"""Integers that reach SQLite are bounded in their schemas: a number SQLite cannot store answers
`validation_error` naming the field, never `handler_error` (sqlite3's OverflowError)."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from conftest import data_of, error_of

TOO_BIG = 2**64 - 1  # what orjson still decodes
JUST_OVER = 2**63  # one more than SQLite's largest integer
SQLITE_MAX = 2**63 - 1
STORED_NAMESPACES = ("state", "conversation", "message", "agent")


@pytest.fixture(scope="module")
def daemon():
    """One in-process daemon for the module (the schemas' logic; no test here stores anything)."""
    from inprocess import ThreadedDaemon
    workdir = Path(tempfile.mkdtemp(prefix="ksi-bounds-", dir="/tmp"))
    daemon = ThreadedDaemon(workdir).start()
    yield daemon
    daemon.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize("event, data, field", [
    ("conversation:list", {"offset": TOO_BIG}, "offset"),
    ("conversation:list", {"offset": JUST_OVER}, "offset"),
    ("conversation:get", {"session_id": "s", "offset": TOO_BIG}, "offset"),
    ("state:set", {"key": "k", "value": 1, "if_version": TOO_BIG}, "if_version"),
    ("state:set", {"key": "k", "value": 1, "if_version": JUST_OVER}, "if_version"),
])
def test_an_integer_sqlite_cannot_store_is_a_validation_error(daemon, event, data, field):
    error = error_of(daemon.request(event, data))
    assert error["code"] == "validation_error", error
    assert [field] in [entry["loc"][-1:] for entry in error["details"]], error


def test_the_largest_integer_sqlite_stores_is_accepted(daemon):
    assert data_of(daemon.request("conversation:list", {"offset": SQLITE_MAX}))["sessions"] == []
    error = error_of(daemon.request("state:set", {"key": "k", "value": 1,
                                                  "if_version": SQLITE_MAX}))
    assert error["code"] == "conflict"  # refused by its precondition, not by its size


def _integers_without_maximum(schema: dict, path: str, definitions: dict) -> list[str]:
    if "$ref" in schema:
        schema = definitions[schema["$ref"].rsplit("/", 1)[-1]]
    found = []
    if schema.get("type") == "integer" and "maximum" not in schema \
            and "exclusiveMaximum" not in schema:
        found.append(path)
    for name, sub in (schema.get("properties") or {}).items():
        found += _integers_without_maximum(sub, f"{path}.{name}", definitions)
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key) or ():
            found += _integers_without_maximum(sub, path, definitions)
    if isinstance(schema.get("items"), dict):
        found += _integers_without_maximum(schema["items"], f"{path}[]", definitions)
    return found


def test_every_integer_parameter_of_the_stored_namespaces_has_a_maximum(daemon):
    events = data_of(daemon.request("system:discover", {}))["events"]
    unbounded = []
    for entry in events:
        if entry["event"].split(":", 1)[0] in STORED_NAMESPACES:
            schema = entry["parameters"]
            unbounded += _integers_without_maximum(schema, entry["event"],
                                                   schema.get("$defs") or {})
    assert unbounded == []
