#!/usr/bin/env python3
"""Chat with a model through the KSI daemon, the answer streamed as it is written.

    python interfaces/chat.py                      # resume the last session (or start one)
    python interfaces/chat.py --new --model sonnet # a new session with another model
    python interfaces/chat.py --session demo       # a session by its id
    python interfaces/chat.py "What is a monad?"   # one-shot: print the answer and exit
    python interfaces/chat.py --tools state:get,state:set   # the model may call these tools
    printf 'hi\\nand then?\\n' | python interfaces/chat.py   # piped: one answer line per line

In a terminal: a `you>` prompt, commands /help /new /session [ID] /model [NAME] /tools [NAMES]
/history /export [markdown|json] /quit; Ctrl-C stops an answer (it is cancelled in the daemon),
and at the prompt it quits, as does Ctrl-D. With stdin or stdout not a terminal there is no prompt
and no colour: each line read is a message (or a command) and its answer is written as it
comes, ending with a newline. Notices go to stderr then, so stdout holds only the answers.

Given tools (`--tools`, `/tools`), the model may call them: each call and its result is shown as
it happens (a notice line: dim in a terminal, on stderr when piped). A line starting with
`/tool ` is a message, not a command: it is how the offline model is asked to call a tool
(`/tool state:get {"key": "k"}`, docs/TOOLS_LOOP.md). The tools are not remembered.

The last session (and model) is remembered in the daemon's own state (namespace "chat"), so
it is per daemon, i.e. per socket. Exit codes: 0 done, 1 error or no daemon, 2 usage.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import orjson

# Run as a script from anywhere: the package lives one directory up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ksi_client import (KSIConnectionError, KSIError, KSINotFoundError,  # noqa: E402
                        SyncClient)
from interfaces.options import add_socket_option  # noqa: E402

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
NO_DAEMON = "no daemon running: start it with ./daemon_control.py start"
MEMORY_NAMESPACE, MEMORY_KEY = "chat", "last_session"
STORE_WAIT_S = 5.0  # an answer arrives just before its turns are stored; reads wait that out
SHOWN_RESULT_CHARS = 300  # a tool result longer than this is clipped on the screen
TOOL_LINE = "/tool "  # a message for the offline model, not a command
HELP = """commands:
  /help               this list
  /new                start a new session
  /session [ID]       show the session id, or switch to session ID (one that exists)
  /model [NAME]       show the model, or use NAME from now on if the daemon can use it
                      ("default": the daemon's)
  /tools [NAMES|off|all]
                      show the tools the model may call, offer NAMES from now on (comma
                      separated, e.g. state:get,state:set), none (off), or list them all
  /history            the messages of this session so far
  /export [FORMAT]    write the session to a file in the daemon's var/exports (markdown, json)
  /quit               leave (so do Ctrl-D, and Ctrl-C at the prompt)"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="chat.py", description="Chat with a model through the KSI daemon.",
        epilog="Without PROMPT: an interactive chat, or one answer per input line when piped.")
    parser.add_argument("prompt", nargs="*", help="one-shot: ask this, print the answer, exit")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--new", action="store_true", help="start a new session")
    start.add_argument("--session", metavar="ID", help="continue (or start) session ID")
    parser.add_argument("--model", metavar="M", help="model or alias (default: the last one "
                                                     "used, else the daemon's default)")
    parser.add_argument("--tools", metavar="NAMES",
                        help="tools the model may call, comma separated (e.g. "
                             "state:get,state:set; `/tools all` in the chat lists them)")
    add_socket_option(parser)
    return parser.parse_args(argv)


def tool_names(text: str) -> list[str]:
    """"state:get, state:set" or "state:get state:set" -> ["state:get", "state:set"]."""
    return [name for name in text.replace(",", " ").split() if name]


class Screen:
    """Where words go: colour and a prompt on a terminal, bare lines on pipes."""

    def __init__(self, interactive: bool):
        self.interactive = interactive
        self.colour = interactive and not os.environ.get("NO_COLOR")

    def _paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour else text

    def answer_starts(self) -> None:
        if self.colour:
            sys.stdout.write("\033[36m")

    def delta(self, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def answer_ends(self) -> None:
        sys.stdout.write("\033[0m\n" if self.colour else "\n")
        sys.stdout.flush()

    def say(self, text: str) -> None:
        """Output a command asked for (history, help): always on stdout."""
        print(text, flush=True)

    def notice(self, text: str) -> None:
        """Remarks about the chat itself: dim on a terminal, on stderr when piped."""
        if self.interactive:
            print(self._paint(text, "2"), flush=True)
        else:
            print(text, file=sys.stderr, flush=True)

    def error(self, text: str) -> None:
        print(self._paint(text, "31") if self.colour else text, file=sys.stderr, flush=True)

    def read_line(self) -> str | None:
        """The next line typed or piped in; None at the end of input."""
        if self.interactive:
            try:
                return input(self._paint("you> ", "1"))
            except EOFError:
                print()
                return None
        line = sys.stdin.readline()
        return line.rstrip("\r\n") if line else None


class UnusableOption(Exception):
    """--model or --tools names something the daemon would refuse; the message says why."""

    def __init__(self, option: str, problem: str):
        super().__init__(f"{option}: {problem}")


class Chat:
    """One conversation with the daemon: the session, the model, and what was stored."""

    def __init__(self, client: SyncClient, screen: Screen):
        self.client, self.screen = client, screen
        self.session_id: str | None = None
        self.model: str | None = None
        self.tools: list[str] = []  # offered to the model with every message
        self.stored = 0  # messages of the session known to be in the conversation store
        self.answering = False  # part of an answer is on the screen

    # ---- choosing the session ---------------------------------------------------------------

    def start(self, args: argparse.Namespace) -> None:
        if args.model and args.model != "default":
            problem = self.model_problem(args.model)
            if problem:
                raise UnusableOption("--model", problem)
        if args.tools:
            self.tools = tool_names(args.tools)
            unknown = self.unknown_tools(self.tools)
            if unknown:
                raise UnusableOption("--tools", f"no tool named {', '.join(unknown)} "
                                                "(/tools all lists them)")
        remembered = self._remembered()
        self.model = args.model or remembered.get("model")  # kept by --new and --session too
        if self.model == "default":
            self.model = None
        if args.session:
            self.switch_to(args.session)
        elif not args.new and remembered.get("session_id"):
            self.switch_to(remembered["session_id"], resumed=True)
        elif self.screen.interactive:
            self.screen.notice("new session" + self._model_note() + " · /help for commands")

    def switch_to(self, session_id: str, resumed: bool = False) -> None:
        self.session_id = session_id
        try:
            self.stored = self.client.conversation(session_id, limit=1)["total"]
        except KSINotFoundError:
            self.stored = 0
        what = "resuming" if resumed else "session"
        self.screen.notice(f"{what} {session_id} ({self.stored} messages)" + self._model_note()
                           + (" · /new starts afresh" if resumed else ""))

    def _model_note(self) -> str:
        return f" · model {self.model}" if self.model else ""

    def model_problem(self, name: str) -> str | None:
        """Why the daemon would refuse a request naming `name`, asked when the model is chosen
        rather than found out at the next message; None if it is usable or cannot be told."""
        try:
            reply = self.client.emit("completion:models", {"check": name})
        except KSIConnectionError:
            raise
        except KSIError:
            return None  # a daemon that cannot check: the next answer will say
        check = reply.get("check")
        if not isinstance(check, dict) or check.get("usable", True):
            return None
        return str(check.get("reason") or f"unknown model {name!r}")

    def available_tools(self) -> list[dict] | None:
        """The daemon's tools (tools:list), or None when it cannot say."""
        try:
            return self.client.emit("tools:list")["tools"]
        except KSIConnectionError:
            raise
        except KSIError:
            return None

    def unknown_tools(self, names: list[str]) -> list[str]:
        """The names among `names` the daemon has no tool for (KSI or model name)."""
        tools = self.available_tools()
        if tools is None:
            return []  # no tools plugin to ask: the next answer will say
        known = {tool["name"] for tool in tools} | {tool["model_name"] for tool in tools}
        return [name for name in names if name not in known]

    def _session_exists(self, session_id: str) -> bool:
        try:
            self.client.conversation(session_id, limit=1)
        except KSINotFoundError:
            return False
        except KSIConnectionError:
            raise
        except KSIError:
            return True  # no conversation store to ask: switching is all that can be done
        return True

    def _remembered(self) -> dict:
        try:
            value = self.client.get_state(MEMORY_KEY, namespace=MEMORY_NAMESPACE)
        except KSIConnectionError:
            raise
        except KSIError:
            return {}  # no state plugin: nothing remembered, the chat still works
        return value if isinstance(value, dict) else {}

    def _remember(self) -> None:
        # Called after an answer only: a session or model that never worked is not kept.
        try:
            self.client.set_state(MEMORY_KEY, {"session_id": self.session_id,
                                               "model": self.model},
                                  namespace=MEMORY_NAMESPACE)
        except KSIConnectionError:
            raise
        except KSIError:
            pass  # as above: the chat goes on, it just will not be resumed

    # ---- talking ----------------------------------------------------------------------------

    def ask(self, prompt: str) -> None:
        try:
            for event in self.client.stream_completion_events(
                    prompt, model=self.model, session_id=self.session_id,
                    tools=self.tools or None):
                if event.event == "completion:chunk":
                    self._show(event.data["delta"])
                else:
                    self._show_tool(event.event, event.data)
        except KeyboardInterrupt:
            self._end_answer()
            self.screen.notice("[answer stopped]")
            return
        except BaseException:
            self._end_answer()  # a failed turn leaves no answer line, only its error
            raise
        self._show("")  # an empty answer is still one line
        self._end_answer()
        response = self.client.last_response
        if response.session_id != self.session_id:
            self.session_id, self.stored = response.session_id, 0
        self.stored += stored_messages(response.tool_calls)
        self._remember()

    def _show(self, delta: str) -> None:
        if not self.answering:
            self.answering = True
            self.screen.answer_starts()
        self.screen.delta(delta)

    def _show_tool(self, event: str, data: dict) -> None:
        if self.screen.interactive:
            self._end_answer()  # piped, the notice goes to stderr: the answer line goes on
        self.screen.notice(tool_call_line(data) if event == "completion:tool_call"
                           else tool_result_line(data))

    def _end_answer(self) -> None:
        if self.answering:
            self.answering = False
            self.screen.answer_ends()

    # ---- commands ---------------------------------------------------------------------------

    def command(self, line: str) -> bool:
        """Carry out a /command; False when it is time to leave."""
        name, _, argument = line[1:].strip().partition(" ")
        argument = argument.strip()
        if name in ("quit", "exit", "q"):
            return False
        handler = COMMANDS.get(name)
        if handler is None:
            self.screen.error(f"unknown command /{name}; /help lists the commands")
        else:
            handler(self, argument)
        return True

    def show_help(self, _argument: str) -> None:
        self.screen.say(HELP)

    def new_session(self, _argument: str) -> None:
        self.session_id, self.stored = None, 0
        self.screen.notice("new session: it gets its id with the first answer")

    def session(self, argument: str) -> None:
        if not argument or argument == self.session_id:
            self.screen.say(self.session_id or "(new session: no id until the first answer)")
        elif self._session_exists(argument):
            self.switch_to(argument)
        else:
            current = f"session {self.session_id}" if self.session_id else "this new session"
            self.screen.error(f"no session {argument} exists; staying in {current} "
                              "(/new starts another)")

    def choose_model(self, argument: str) -> None:
        if argument and argument != "default":
            problem = self.model_problem(argument)
            if problem:
                self.screen.error(f"{problem}; still using "
                                  f"{self.model or 'the default model'}")
                return
        if argument:
            self.model = None if argument == "default" else argument
        self.screen.say(self.model or "default (the daemon's default model)")

    def choose_tools(self, argument: str) -> None:
        if argument == "all":
            tools = self.available_tools()
            if tools is None:
                self.screen.error("this daemon cannot list its tools")
            for tool in tools or ():
                self.screen.say(f"{tool['name']}  {tool['description'].splitlines()[0]}"
                                if tool["description"] else tool["name"])
            return
        if argument == "off":
            self.tools = []
        elif argument:
            names = tool_names(argument)
            unknown = self.unknown_tools(names)
            if unknown:
                self.screen.error(f"no tool named {', '.join(unknown)} (/tools all lists "
                                  "them); tools unchanged")
                return
            self.tools = names
        self.screen.say(", ".join(self.tools) or "no tools")

    def history(self, _argument: str) -> None:
        conversation = self._stored_conversation()
        if conversation is None:
            self.screen.say("(no messages yet)")
            return
        for message in conversation["messages"]:
            self.screen.say(history_line(message))

    def export(self, argument: str) -> None:
        fmt = argument or "markdown"
        if fmt not in ("markdown", "json"):
            self.screen.error("export as markdown or json, e.g. /export json")
            return
        if self._stored_conversation() is None:
            self.screen.say("(no messages yet: nothing to export)")
            return
        exported = self.client.export_conversation(self.session_id, fmt)
        self.screen.say(f"exported {exported['message_count']} messages to {exported['path']}")

    def _stored_conversation(self) -> dict | None:
        """The session with every message this chat knows of, or None if it has none."""
        if self.session_id is None:
            return None
        deadline = time.monotonic() + STORE_WAIT_S
        while True:
            try:
                conversation = self.client.conversation(self.session_id, limit=10_000)
            except KSINotFoundError:
                conversation = None
            total = conversation["total"] if conversation else 0
            if total >= self.stored or time.monotonic() > deadline:
                return conversation if total else None
            time.sleep(0.05)


COMMANDS = {"help": Chat.show_help, "new": Chat.new_session, "session": Chat.session,
            "model": Chat.choose_model, "tools": Chat.choose_tools, "history": Chat.history,
            "export": Chat.export}


def stored_messages(tool_calls: list[dict]) -> int:
    """How many messages a turn stores: the question, one assistant message per round of tool
    calls, one tool message per call, and the answer."""
    return 2 + len({call.get("step") for call in tool_calls}) + len(tool_calls)


def tool_call_line(call: dict) -> str:
    return f"[tool] {call['name']} {_compact(call.get('arguments'))}"


def tool_result_line(record: dict) -> str:
    took = f" ({record['duration_ms']:.1f} ms)" if record.get("duration_ms") is not None else ""
    if record.get("ok"):
        return f"[tool] {record['name']} -> {_compact(record.get('result'))}{took}"
    error = record.get("error") or {}
    return (f"[tool] {record['name']} failed ({error.get('code')}): "
            f"{_clip(str(error.get('message')))}{took}")


def history_line(message: dict) -> str:
    speaker = "you" if message["role"] == "user" else message["role"]
    if message.get("tool_calls"):
        asked = "; ".join(f"{call['function']['name']} {call['function']['arguments']}"
                          for call in message["tool_calls"])
        return f"{speaker}: [calls {asked}]" + (f" {message['content']}"
                                                if message.get("content") else "")
    return f"{speaker}: {message['content']}"


def _compact(value) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return _clip(text)


def _clip(text: str) -> str:
    return text if len(text) <= SHOWN_RESULT_CHARS else text[:SHOWN_RESULT_CHARS - 1] + "…"


def converse(chat: Chat, screen: Screen) -> None:
    while True:
        try:
            line = screen.read_line()
        except KeyboardInterrupt:
            print()
            return
        if line is None:
            return
        line = line.strip()
        if not line:
            continue
        try:
            if line.startswith("/") and not line.startswith(TOOL_LINE):
                if not chat.command(line):
                    return
            else:
                chat.ask(line)
        except KSIConnectionError:
            raise
        except KSIError as exc:
            screen.error(f"error ({exc.code}): {exc.message}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    one_shot = " ".join(args.prompt).strip()
    screen = Screen(interactive=not one_shot and sys.stdin.isatty() and sys.stdout.isatty())
    if screen.interactive:
        try:
            import readline  # noqa: F401 - line editing and history for input()
        except ImportError:
            pass
    client = SyncClient(args.socket)
    try:
        client.connect()
        chat = Chat(client, screen)
        chat.start(args)
        if one_shot:
            chat.ask(one_shot)
        else:
            converse(chat, screen)
        return EXIT_OK
    except KSIConnectionError as exc:
        screen.error(connection_problem(exc, client))
        return EXIT_FAILED
    except UnusableOption as exc:
        screen.error(str(exc))
        return EXIT_USAGE
    except KSIError as exc:
        screen.error(f"error ({exc.code}): {exc.message}")
        return EXIT_FAILED
    except BrokenPipeError:
        # Whoever read our output went away (e.g. `| head -1`): nothing left to say, and
        # nothing to flush at exit either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        client.close()


def connection_problem(exc: KSIConnectionError, client: SyncClient) -> str:
    if "was lost" in exc.message:
        return f"lost the connection to the daemon: {exc.message}"
    if "no KSI daemon is listening" in exc.message:
        return f"{NO_DAEMON} (looked for its socket at {client.socket_path})"
    return f"cannot reach the daemon: {exc.message}"


if __name__ == "__main__":
    sys.exit(main())
