"""Tool-loop benchmark: what the daemon's tool loop adds per step, against the same loop written
with litellm directly, and the daemon's memory over a 1,000-step run.

    .venv/bin/python bench/tool_loop_bench.py [--calls 200 --warmup 20 --block 10 --memory-steps 1000]

Both paths call the same local OpenAI-compatible server (tests/fake_openai_server.py, its own
process) in the same run, as bench/completion_bench.py does, with the same tool: `state:get`
as the daemon offers it (its `tools:list` entry is the direct path's tool definition).

1. Overhead per step. Four kinds of request, `--calls` of each, sequential, the order rotating
   each round:
   - `direct, no tools`: one `litellm.acompletion` in this process;
   - `direct, 1 step`: the loop by hand: the model asks for `state_get`, this process runs it
     (a dict lookup answering what `state:get` answers) and sends the result back, the model
     answers: two model calls and one tool call;
   - `daemon, no tools`: `completion:request` over the Unix socket;
   - `daemon, 1 step`: `completion:request` with `tools: ["state:get"]`, which runs the same
     two model calls and `state:get` through the tool loop (journal, tools:execute, pushes).
   Each request is a new session, so each turn is stored in the conversation store too, after
   the reply: that store is still running when the next request arrives. So the kinds run in
   blocks of `--block` requests of one kind (the blocks' order rotating each round), and every
   daemon request follows one of its own kind: a request alternating with another kind would be
   charged the other kind's leftover work (a 1-step request after a plain one measured 0.7 ms
   slower at its first model call than after a 1-step one). The loop's overhead per step is (daemon 1 step - direct 1 step) - (daemon no tools - direct no
   tools): what a step adds on top of what a plain completion adds. Medians; goal < 1 ms.
2. Memory. The daemon's RSS (/proc/PID/status VmRSS) before and after `--memory-steps` tool
   steps, then after as many again: requests to a model that asks for the tool after every
   result (the fake server's `looping`), each ending at `max_tool_steps` (`--steps-per-request`)
   with its `timeout` error, which every such request must end with.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import orjson

from bench_daemon import (DAEMON_ENV, Connection, start_daemon, start_fake_server, stop,
                          stop_fake_server, wait_until_litellm_loaded)

TARGET_PER_STEP_MS = 1.0
ARGUMENTS = {"namespace": "bench", "key": "answer"}
PROMPT = f"Look it up.\n/tool state:get {orjson.dumps(ARGUMENTS).decode()}"
PLAIN_PROMPT = "how long does this take?"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class DirectLoop:
    """The tool loop written by hand over litellm: what the daemon's loop is measured against."""

    def __init__(self, litellm, api_base: str, tool: dict, stored: dict):
        self.litellm, self.api_base, self.stored = litellm, api_base, stored
        self.tools = [{"type": "function", "function": {
            "name": tool["model_name"], "description": tool["description"],
            "parameters": tool["parameters"]}}]

    async def ask(self, messages: list[dict], tools: list[dict] | None):
        response = await self.litellm.acompletion(
            model="openai/echo", messages=messages, tools=tools, api_base=self.api_base,
            api_key="sk-bench", num_retries=0, max_retries=0, timeout=30)
        return response.choices[0].message

    def run_tool(self, arguments: dict) -> dict:
        key = (arguments["namespace"], arguments["key"])
        return {**arguments, "found": key in self.stored, "value": self.stored.get(key),
                "version": 1}

    async def plain(self) -> str:
        return (await self.ask([{"role": "user", "content": PLAIN_PROMPT}], None)).content

    async def one_step(self) -> str:
        messages = [{"role": "user", "content": PROMPT}]
        while True:
            message = await self.ask(messages, self.tools)
            if not message.tool_calls:
                return message.content
            calls = [{"id": c.id, "type": "function", "function": {
                "name": c.function.name, "arguments": c.function.arguments}}
                for c in message.tool_calls]
            messages.append({"role": "assistant", "content": message.content,
                             "tool_calls": calls})
            for call in calls:
                result = self.run_tool(orjson.loads(call["function"]["arguments"]))
                messages.append({"role": "tool", "tool_call_id": call["id"],
                                 "content": orjson.dumps(result).decode()})


def through_daemon(conn: Connection, tools: bool):
    request = {"prompt": PROMPT, "model": "echo", "tools": ["state:get"]} if tools else \
        {"prompt": PLAIN_PROMPT, "model": "echo"}

    async def call() -> str:
        result = conn.ask("completion:request", request)  # blocking: nothing else runs meanwhile
        if tools:
            assert [c["name"] for c in result["tool_calls"]] == ["state:get"], result
            assert result["tool_calls"][0]["ok"], result
        return result["text"]
    return call


async def measure_steps(conn: Connection, direct: DirectLoop, calls: int,
                        warmup: int, block: int) -> dict[str, float]:
    paths = {"direct, no tools": direct.plain, "direct, 1 step": direct.one_step,
             "daemon, no tools": through_daemon(conn, False),
             "daemon, 1 step": through_daemon(conn, True)}
    texts = {name: await run() for name, run in paths.items()}
    assert "7731" in texts["direct, 1 step"] and "7731" in texts["daemon, 1 step"], texts
    for _ in range(warmup):
        for run in paths.values():
            await run()
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    names = list(paths)
    for i in range(max(1, calls // block)):
        for name in names[i % len(names):] + names[:i % len(names)]:  # who goes first rotates
            for _ in range(block):
                started = time.perf_counter()
                await paths[name]()
                seconds[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) * 1000 for name, values in seconds.items()}


def run_steps(conn: Connection, steps: int, per_request: int) -> None:
    """`steps` tool steps in requests of `per_request` steps, each ending out of steps."""
    for _ in range(steps // per_request):
        conn.send("completion:request", {"prompt": PROMPT, "model": "looping",
                                         "tools": ["state:get"],
                                         "max_tool_steps": per_request})
        while (message := conn.next_message())["type"] != "reply":
            pass
        error = message.get("error") or {}
        details = error.get("details") or {}
        if error.get("code") != "timeout" or len(details.get("tool_calls", ())) != per_request:
            raise SystemExit(f"a looping request did not end out of steps: {message}")


async def main_async(args) -> None:
    server, api_base = start_fake_server()
    workdir = Path(tempfile.mkdtemp(prefix="ksi-tlb-", dir="/tmp"))
    aliases = {name: {"model": f"openai/{name}", "api_base": api_base, "api_key": "sk-bench"}
               for name in ("echo", "looping")}
    proc = None
    try:
        proc, path = start_daemon(workdir, {"plugins": {"completion": {"aliases": aliases}}})
        conn = Connection(path)
        wait_until_litellm_loaded(conn)
        conn.ask("state:set", {**ARGUMENTS, "value": 7731})
        tool = next(t for t in conn.ask("tools:list")["tools"] if t["name"] == "state:get")

        import litellm  # the baseline's own copy, loaded like the daemon loads it
        litellm.suppress_debug_info = True
        logging.getLogger("LiteLLM").setLevel(logging.WARNING)
        direct = DirectLoop(litellm, api_base, tool, {("bench", "answer"): 7731})
        ms = await measure_steps(conn, direct, args.calls, args.warmup, args.block)
        print(f"{args.calls} sequential requests of each kind (median ms):")
        for name, value in ms.items():
            print(f"  {name:<18} {value:8.3f} ms")
        plain_added = ms["daemon, no tools"] - ms["direct, no tools"]
        step_added = ms["daemon, 1 step"] - ms["direct, 1 step"]
        per_step = step_added - plain_added
        verdict = "PASS" if per_step < TARGET_PER_STEP_MS else "FAIL"
        print(f"  daemon adds to a plain completion:     {plain_added:.3f} ms")
        print(f"  daemon adds to a 1-step tool request:  {step_added:.3f} ms")
        print(f"  the tool loop's overhead per step:     {per_step:.3f} ms "
              f"(target < {TARGET_PER_STEP_MS:g} ms: {verdict})")

        before = rss_kib(proc.pid)
        started = time.perf_counter()
        run_steps(conn, args.memory_steps, args.steps_per_request)
        first_s = time.perf_counter() - started
        after = rss_kib(proc.pid)
        run_steps(conn, args.memory_steps, args.steps_per_request)
        again = rss_kib(proc.pid)
        print(f"daemon RSS over {args.memory_steps} tool steps ({args.steps_per_request} per "
              f"request, {first_s:.1f} s): before {before / 1024:.1f} MiB, after "
              f"{after / 1024:.1f} MiB ({(after - before) / 1024:+.1f} MiB), after "
              f"{args.memory_steps} more {again / 1024:.1f} MiB "
              f"({(again - after) / 1024:+.1f} MiB)")
    finally:
        if proc is not None:
            stop(proc)
        stop_fake_server(server)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--block", type=int, default=10,
                        help="requests of one kind in a row (see the docstring)")
    parser.add_argument("--memory-steps", type=int, default=1000)
    parser.add_argument("--steps-per-request", type=int, default=50,
                        help="max_tool_steps of the memory run's requests (at most 64)")
    args = parser.parse_args()
    for name, value in DAEMON_ENV.items():  # as the daemon runs litellm
        os.environ.setdefault(name, value)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
