#!/usr/bin/env python3
"""Run a multi-agent conversation in the KSI daemon and print it as it happens.

    python interfaces/orchestrate.py "Is P=NP?" --mode debate
    python interfaces/orchestrate.py "How do we cut CI time?" --mode collaboration --agents 3
    python interfaces/orchestrate.py --list-modes
    python interfaces/orchestrate.py "Rust or Go?" --mode debate --rounds 2 --json
    python interfaces/orchestrate.py "What is stored?" --tools state:get,state:list

Each turn is printed with its speaker and role as the daemon announces it (orchestration:turn),
then a summary (turns, duration, session ids). Ctrl-C terminates the orchestration in the daemon
too (its agents with it) and exits 130. Exit codes: 0 finished, 1 failed or no daemon,
2 usage (including what the daemon refuses as invalid), 130 interrupted.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import textwrap
import uuid
from pathlib import Path

# Run as a script from anywhere: the package lives one directory up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402

from ksi_client import EventClient, KSIConnectionError, KSIError  # noqa: E402
from interfaces.options import add_socket_option  # noqa: E402

MODES = ("debate", "collaboration", "teaching", "brainstorm", "analysis")
START_TIMEOUT_S = 120.0  # spawning the agents; the turns themselves have no client deadline
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="orchestrate.py", description="Agents talk about a topic, turn by turn, in the "
                                           "KSI daemon.")
    parser.add_argument("topic", nargs="?", help="what the agents talk about")
    parser.add_argument("--mode", choices=MODES, default="debate", help="default: debate")
    parser.add_argument("--agents", type=int, help="how many agents (default: the mode's)")
    parser.add_argument("--rounds", type=int, help="rounds; each agent speaks once per round")
    parser.add_argument("--model", help="model for every agent (default: each profile's)")
    parser.add_argument("--tools", metavar="NAMES", type=tool_names,
                        help="tools every agent's model may call, comma separated (e.g. "
                             "state:get,state:list; default: each profile's)")
    parser.add_argument("--list-modes", action="store_true", help="list the modes and exit")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    add_socket_option(parser)
    args = parser.parse_args(argv)
    if not args.list_modes and not (args.topic and args.topic.strip()):
        parser.error("a TOPIC is needed (or --list-modes)")
    return args


def tool_names(text: str) -> list[str]:
    """"state:get, state:list" -> ["state:get", "state:list"]."""
    names = [name for name in text.replace(",", " ").split() if name]
    if not names:
        raise argparse.ArgumentTypeError("name at least one tool")
    return names


class Printer:
    """Human-readable lines, or one JSON object per line with --json."""

    def __init__(self, as_json: bool):
        self.as_json = as_json
        self.width = min(shutil.get_terminal_size((100, 24)).columns, 100)

    def json(self, event: str, data) -> None:
        print(orjson.dumps({"event": event, "data": data}).decode(), flush=True)

    def modes(self, modes: list[dict]) -> None:
        for mode in modes:
            if self.as_json:
                self.json("orchestration:mode", mode)
                continue
            roles = ", ".join(f"{r['role']} ({r['profile']})" for r in mode["roles"])
            print(f"{mode['mode']:<14} {mode['description']}\n{'':<14} roles: {roles}; "
                  f"default {mode['default_agents']} agents, {mode['default_rounds']} rounds "
                  f"({mode['min_agents']}-{mode['max_agents']} agents)", flush=True)

    def started(self, start: dict) -> None:
        if self.as_json:
            return self.json("orchestration:started", start)
        print(f"{start['mode'].capitalize()} on \"{start['topic']}\": "
              f"{plural(len(start['agents']), 'agent')}, {plural(start['rounds'], 'round')} "
              f"({start['orchestration_id']})")
        for agent in start["agents"]:
            print(f"  {agent['role']:<12} {agent['agent_id']}  (profile {agent['profile']})")
        if start.get("tools"):
            print(f"  tools: {', '.join(start['tools'])}")
        print(flush=True)

    def turn(self, turn: dict) -> None:
        if self.as_json:
            return self.json("orchestration:turn", turn)
        print(f"[round {turn['round']}, turn {turn['turn']}] {turn['role']} "
              f"({turn['speaker']}):")
        for paragraph in turn["text"].splitlines() or [""]:
            print(textwrap.fill(paragraph, self.width, initial_indent="    ",
                                subsequent_indent="    ") if paragraph.strip() else "")
        print(flush=True)

    def finished(self, end: dict) -> None:
        if self.as_json:
            return self.json("orchestration:finished", end)
        # The reason of a failed or terminated run goes to stderr (see _report_end).
        print(f"{end['status'].capitalize()}: {plural(end['turns'], 'turn')} in "
              f"{end['duration_s']:.1f} s")
        print(f"Sessions: {', '.join(end['session_ids']) or '(none)'}", flush=True)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def error(message: str) -> None:
    print(f"orchestrate: {message}", file=sys.stderr, flush=True)


# The request fields this command fills from its command line, by the option a user typed.
OPTION_OF_FIELD = {"topic": "TOPIC", "mode": "--mode", "agents": "--agents",
                   "rounds": "--rounds", "model": "--model", "tools": "--tools"}


def describe(exc: KSIError) -> str:
    """The daemon's message, with the failing fields of a validation error spelt out, each
    under the name of the option it came from (the user never typed `rounds`)."""
    if exc.code == "validation_error" and isinstance(exc.details, list):
        reasons = [reason_with_its_option(d) for d in exc.details if isinstance(d, dict)]
        if reasons:
            return "; ".join(reasons)
    return exc.message


def reason_with_its_option(detail: dict) -> str:
    reason = str(detail.get("msg", "")).removeprefix("Value error, ")
    location = detail.get("loc") or []
    option = OPTION_OF_FIELD.get(location[0]) if location else None
    return f"{option}: {reason[:1].lower()}{reason[1:]}" if option else reason


class Orchestrate:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Printer(args.json)
        self.client = EventClient(args.socket)
        self.correlation_id = f"orchestrate-{uuid.uuid4().hex[:12]}"
        self.starting: asyncio.Task | None = None

    async def run(self) -> int:
        try:
            await self.client.connect()
        except KSIConnectionError as exc:
            error(exc.message)
            return EXIT_FAILED
        try:
            if self.args.list_modes:
                reply = await self.client.emit("orchestration:modes")
                self.out.modes(reply["modes"])
                return EXIT_OK
            return await self._follow_until_done_or_interrupted()
        except KSIError as exc:
            error(describe(exc))
            return EXIT_USAGE if exc.code == "validation_error" else EXIT_FAILED
        finally:
            await self.client.close()

    async def _follow_until_done_or_interrupted(self) -> int:
        loop = asyncio.get_running_loop()
        following = asyncio.ensure_future(self._follow())
        loop.add_signal_handler(signal.SIGINT, following.cancel)
        try:
            return await following
        except asyncio.CancelledError:
            # A second Ctrl-C while we clean up leaves at once (KeyboardInterrupt in main()).
            loop.remove_signal_handler(signal.SIGINT)
            return await self._terminate_after_interrupt()
        except BrokenPipeError:
            # Whoever read our output is gone (`| head`): stop the run instead of leaving it.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            await self._terminate_after_interrupt("the output was closed")
            return EXIT_FAILED
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    async def _follow(self) -> int:
        # The daemon tags every push of this orchestration with the start's correlation id.
        self.stream = self.client.events("orchestration:*", correlation_id=self.correlation_id)
        request = {"mode": self.args.mode, "topic": self.args.topic.strip()}
        for field in ("agents", "rounds", "model", "tools"):
            if getattr(self.args, field) is not None:
                request[field] = getattr(self.args, field)
        # Its own task, so that Ctrl-C during the start still learns which run to terminate.
        self.starting = asyncio.ensure_future(self.client.emit(
            "orchestration:start", request, timeout=START_TIMEOUT_S,
            correlation_id=self.correlation_id))
        start = await asyncio.shield(self.starting)
        self.out.started(start)
        async for event in self.stream:
            if event.event == "orchestration:turn":
                self.out.turn(event.data)
            elif event.event == "orchestration:finished":
                return self._report_end(event.data)
        raise KSIConnectionError("the connection to the daemon ended before the "
                                 "orchestration did")

    def _report_end(self, end: dict) -> int:
        self.out.finished(end)
        if end["status"] == "finished":
            return EXIT_OK
        if end["status"] == "terminated":
            error(f"orchestration {end['orchestration_id']} was terminated "
                  f"({end.get('reason') or 'by another client'})")
        else:
            error(f"orchestration {end['orchestration_id']} failed: {end.get('reason')}")
        return EXIT_FAILED

    async def _terminate_after_interrupt(self, why: str = "interrupted") -> int:
        orchestration_id = await self._started_id()
        if orchestration_id is None:
            error(f"{why} before the orchestration started")
            return EXIT_INTERRUPTED
        reply = await self.client.emit("orchestration:terminate",
                                       {"orchestration_id": orchestration_id})
        # The daemon announces the end before it answers terminate: show what was played.
        end = self._already_received("orchestration:finished")
        if end is not None:
            self.out.finished(end)
        error(f"{why}: orchestration {orchestration_id} is {reply['status']} in the "
              "daemon, its agents with it")
        return EXIT_INTERRUPTED

    async def _started_id(self) -> str | None:
        if self.starting is None:
            return None
        try:
            return (await self.starting)["orchestration_id"]
        except KSIError:
            return None

    def _already_received(self, name: str) -> dict | None:
        found = None
        try:
            while (event := self.stream.take_nowait()) is not None:
                if event.event == name:
                    found = event.data
        except (StopAsyncIteration, KSIConnectionError):
            pass
        return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(Orchestrate(args).run())
    except KeyboardInterrupt:
        error("interrupted again: left without waiting for the daemon")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
