"""migrate-state: older KSI state stores imported into the state database, idempotently."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson

from ksi_daemon.plugins.state.migrate import main as migrate_state

OLD_ROWS = [  # (key as stored, value as stored, namespace)
    ("theme", '{"dark": true, "size": 12}', "global"),
    ("greeting", "hello world", "global"),               # a plain string, not JSON
    ("quoted", '"123"', "global"),                       # JSON text of the string "123"
    ("agent_1:config", '{"model": "sonnet", "tools": ["a", "b"]}', "agent_1"),
    ("agent_1:steps", "42", "agent_1"),
    ("agent_1:url", "http://x:8080/a", "agent_1"),       # plain string with colons
    ("agent_2:nested:key", "[1, 2.5, null]", "agent_2"),  # the key itself has a colon
    ("agent_2:bad\nkey", "1", "agent_2"),                # a key the new store refuses
]
EXPECTED = {
    ("global", "theme"): {"dark": True, "size": 12},
    ("global", "greeting"): "hello world",
    ("global", "quoted"): "123",
    ("agent_1", "config"): {"model": "sonnet", "tools": ["a", "b"]},
    ("agent_1", "steps"): 42,
    ("agent_1", "url"): "http://x:8080/a",
    ("agent_2", "nested:key"): [1, 2.5, None],
}


def build_old_database(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE agent_shared_state (key TEXT PRIMARY KEY, value TEXT NOT NULL, "
               "namespace TEXT, owner_agent_id TEXT, created_at TEXT, updated_at TEXT)")
    db.executemany("INSERT INTO agent_shared_state (key, value, namespace, created_at) "
                   "VALUES (?, ?, ?, '2024-01-01')", OLD_ROWS)
    db.commit()
    db.close()


def rows_of(path: Path) -> list:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT namespace, key, value, version, updated_at FROM state "
                          "ORDER BY namespace, key").fetchall()
    finally:
        db.close()


def counts_in(output: str) -> dict:
    return {name.strip(): int(count) for name, count in
            (line.split(":") for line in output.splitlines()[1:] if line.strip())}


def test_old_database_is_imported_with_types_and_namespaces(tmp_path, capsys):
    old = tmp_path / "old_state.db"
    build_old_database(old)
    target = tmp_path / "var" / "db" / "state.db"
    assert migrate_state(["--from", str(old), "--db", str(target)]) == 0
    first = counts_in(capsys.readouterr().out)
    assert first == {"read": 8, "imported": 7, "unchanged": 0, "kept": 0, "invalid": 1}
    stored = {(ns, key): orjson.loads(value) for ns, key, value, _v, _t in rows_of(target)}
    assert stored == EXPECTED
    assert isinstance(stored[("global", "quoted")], str)


def test_running_it_twice_changes_nothing(tmp_path, capsys):
    old = tmp_path / "old_state.db"
    build_old_database(old)
    target = tmp_path / "state.db"
    assert migrate_state(["--from", str(old), "--db", str(target)]) == 0
    before = rows_of(target)
    capsys.readouterr()
    assert migrate_state(["--from", str(old), "--db", str(target)]) == 0
    assert counts_in(capsys.readouterr().out) == {"read": 8, "imported": 0, "unchanged": 7,
                                                  "kept": 0, "invalid": 1}
    assert rows_of(target) == before


def test_json_directory_is_imported_and_newer_values_are_kept(tmp_path, capsys):
    source = tmp_path / "state"
    source.mkdir()
    (source / "global.json").write_bytes(orjson.dumps({"a": "123", "b": {"x": [1, None]}}))
    (source / "agent_7.json").write_bytes(orjson.dumps({"mood": "calm", "n": 1.25}))
    target = tmp_path / "state.db"
    assert migrate_state(["--from", str(source), "--db", str(target)]) == 0
    assert counts_in(capsys.readouterr().out)["imported"] == 4
    db = sqlite3.connect(target)
    db.execute("UPDATE state SET value = '\"newer\"', version = 2 WHERE key = 'mood'")
    db.commit()
    db.close()
    assert migrate_state(["--from", str(source), "--db", str(target)]) == 0
    assert counts_in(capsys.readouterr().out) == {"read": 4, "imported": 0, "unchanged": 3,
                                                  "kept": 1, "invalid": 0}
    stored = {(ns, key): orjson.loads(value) for ns, key, value, _v, _t in rows_of(target)}
    assert stored == {("global", "a"): "123", ("global", "b"): {"x": [1, None]},
                      ("agent_7", "mood"): "newer", ("agent_7", "n"): 1.25}


def test_the_daemon_serves_migrated_values(tmp_path, daemon_factory, workdir, capsys):
    old = tmp_path / "old_state.db"
    build_old_database(old)
    assert migrate_state(["--from", str(old), "--var-dir", str(workdir / "var")]) == 0
    daemon = daemon_factory()
    with daemon.client() as client:
        for (namespace, key), value in EXPECTED.items():
            reply = client.request("state:get", {"key": key, "namespace": namespace})
            got = reply["data"]
            assert got["found"] and got["value"] == value and type(got["value"]) is type(value)
            assert got["version"] == 1
        assert client.request("state:set", {"key": "steps", "namespace": "agent_1",
                                            "value": 43, "if_version": 1})["data"]["version"] == 2


def test_unreadable_sources_are_reported(tmp_path, capsys):
    target = tmp_path / "state.db"
    assert migrate_state(["--from", str(tmp_path / "missing"), "--db", str(target)]) == 1
    assert "cannot read" in capsys.readouterr().err
    not_ksi = tmp_path / "other.db"
    db = sqlite3.connect(not_ksi)
    db.execute("CREATE TABLE unrelated (x)")
    db.commit()
    db.close()
    assert migrate_state(["--from", str(not_ksi), "--db", str(target)]) == 1
    assert "agent_shared_state" in capsys.readouterr().err
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"definitely not sqlite" * 100)
    assert migrate_state(["--from", str(garbage), "--db", str(target)]) == 1
    assert not target.exists()


def test_the_target_follows_the_daemons_configuration(tmp_path, monkeypatch, capsys):
    old = tmp_path / "old_state.db"
    build_old_database(old)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KSI_CONFIG", raising=False)
    monkeypatch.setenv("KSI_VAR_DIR", str(tmp_path / "from-env"))
    assert migrate_state(["--from", str(old)]) == 0
    assert (tmp_path / "from-env" / "db" / "state.db").is_file()
    config = tmp_path / "daemon.json"
    config.write_bytes(orjson.dumps({"plugins": {"state": {"db_path": str(tmp_path / "x.db")}}}))
    assert migrate_state(["--from", str(old), "--config", str(config)]) == 0
    assert len(rows_of(tmp_path / "x.db")) == 7
    assert migrate_state(["--from"]) == 2  # a usage error is an exit code, not an exception
