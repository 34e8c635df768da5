"""No request blocks the daemon: a long prompt to the offline model leaves the loop free, its
deadline holds, and whatever does hold the loop is counted and named (ksi_daemon/loop_watch.py).
"""
from __future__ import annotations

import select
import time
from pathlib import Path

import orjson

from conftest import data_of, error_of

PLUGINS = Path(__file__).resolve().parent / "plugins"
LONG_PROMPT_CHARS = 100_000
HEALTH_WITHIN_S = 0.2


def long_prompt(seed: int) -> str:
    """About LONG_PROMPT_CHARS of words, no full stop (the shape that was quadratic)."""
    words = ["alpha", "queue", "router", "socket", "plugin", "kernel", f"w{seed}"]
    text = " ".join(words[(i * 7 + seed) % len(words)] for i in range(LONG_PROMPT_CHARS // 6))
    return text[:LONG_PROMPT_CHARS]


def health_round_trip(client) -> float:
    started = time.perf_counter()
    reply = client.request("system:health")
    assert data_of(reply)["status"] == "healthy"
    return time.perf_counter() - started


def test_health_answers_at_once_while_long_prompts_are_answered(daemon):
    with daemon.client(timeout=120) as asker, daemon.client(timeout=30) as health:
        data_of(asker.request("completion:request", {"prompt": "warm up"}))  # litellm loaded
        # Several long prompts at once (plain, streamed, an agent's task), so that health is
        # asked while they are being answered; each answer was seconds to minutes of loop time.
        for n in range(3):
            asker.send("completion:async", {"prompt": long_prompt(n), "stream": n == 1},
                       correlation_id=f"long-{n}")
        asker.send("agent:spawn", {"task": long_prompt(9)}, correlation_id="long-agent")
        results, trips, deadline = set(), [], time.monotonic() + 120
        while len(results) < 3:
            assert time.monotonic() < deadline, f"only {results} answered"
            trips.append(health_round_trip(health))
            while select.select([asker.sock], [], [], 0)[0] or b"\n" in asker._buffer:
                message = asker.recv()
                if message.get("event") in ("completion:result", "completion:error"):
                    assert message["event"] == "completion:result", message
                    results.add(message["correlation_id"])
        trips += [health_round_trip(health) for _ in range(5)]  # the agent's turn may still run
        assert max(trips) < HEALTH_WITHIN_S, sorted(trips)[-5:]


def test_a_long_prompt_finishes_within_its_timeout(daemon):
    with daemon.client(timeout=60) as client:
        started = time.monotonic()
        reply = client.request("completion:request", {"prompt": long_prompt(1), "timeout_s": 20})
        elapsed = time.monotonic() - started
        # Either answer keeps the promise: a result, or `timeout` once timeout_s has passed.
        if "error" in reply:
            assert error_of(reply)["code"] == "timeout" and elapsed < 25, (reply, elapsed)
        else:
            assert "You said" in data_of(reply)["text"] and elapsed < 20, elapsed


def test_a_handler_that_holds_the_loop_is_counted_and_named(daemon_factory):
    daemon = daemon_factory({"daemon": {"plugin_dirs": [str(PLUGINS / "stalling")]},
                             "plugins": {"completion": {"enabled": False}}})
    with daemon.client() as client:
        data_of(client.request("stall:hold", {"seconds": 0.2}))
        time.sleep(0.1)  # the watchdog's heartbeat runs once the loop is free again
        stalls = data_of(client.request("system:metrics"))["loop_stalls"]
    assert stalls["count"] >= 1 and stalls["longest_ms"] >= 150, stalls
    assert stalls["last"]["handler"] == "stall:hold", stalls
    assert "hold_the_loop" in stalls["last"]["running"], stalls
    logged = [orjson.loads(line) for line in
              (daemon.var_dir / "logs" / "daemon.log").read_bytes().splitlines()
              if b"loop_stalled" in line]
    assert any(entry.get("handler") == "stall:hold" and "hold_the_loop" in entry["running"]
               for entry in logged), logged


def test_a_quiet_daemon_counts_no_stalls(daemon_factory):
    daemon = daemon_factory({"plugins": {"completion": {"enabled": False}}})
    with daemon.client() as client:
        for _ in range(20):
            data_of(client.request("system:health"))
        stalls = data_of(client.request("system:metrics"))["loop_stalls"]
    assert stalls["threshold_ms"] == 50 and stalls["count"] == 0, stalls
