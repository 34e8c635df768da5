"""Promise 12 (logging): a full disk makes logging drop lines quietly, never print tracebacks."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import orjson

from ksi_daemon.log_handlers import LineFile

FAULTY = str(Path(__file__).parent / "plugins" / "faulty")


def a_logger_writing_to(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"test-full-disk-{id(handler)}")
    logger.propagate = False
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    return logger


def test_a_full_disk_drops_log_lines_counts_them_and_says_so_once(capfd, tmp_path):
    handler = LineFile("/dev/full")  # every write fails with ENOSPC
    logger = a_logger_writing_to(handler)
    for number in range(50):
        logger.info("line %d", number)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Logging error" not in err
    assert err.count("is full") == 1, err
    assert handler.dropped == 50

    room_again = tmp_path / "daemon.log"
    with open(room_again, "wb") as file:
        os.dup2(file.fileno(), handler.fd)  # the same descriptor, now with room
    logger.info("after")
    handler.close()
    lines = room_again.read_bytes().splitlines()
    note = orjson.loads(lines[0])
    assert note["event"] == "log_lines_dropped" and note["count"] == 50
    assert lines[1] == b"after"


def test_the_daemon_logs_to_a_full_disk_without_a_traceback(daemon_factory, workdir):
    logs = workdir / "var" / "logs"
    logs.mkdir(parents=True)
    (logs / "daemon.log").symlink_to("/dev/full")
    daemon = daemon_factory({"daemon": {"plugin_dirs": [FAULTY]}})
    with daemon.client() as client:
        for _ in range(5):  # each is logged at error level, with its traceback
            assert client.request("flaky:divide", {"a": 1, "b": 0})["error"]["code"] == \
                "handler_error"
        health = client.request("system:health")["data"]  # degraded: the faulty dir's failures
        assert health["status"] == "degraded" and health["plugins"]["active"] > 0
    assert daemon.stop() == 0
    output = daemon.read_output()
    assert "Logging error" not in output and "OSError" not in output, output[-3000:]
    assert output.count("is full: log lines are dropped") == 1
