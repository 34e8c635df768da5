"""interfaces/chat.py as people use it: in a terminal (a real pseudo-terminal), one-shot, piped.

Every chat runs as its own process against a real daemon; answers come from the built-in offline
model (which names the turn and what was said first) or, for a slow stream, from
tests/fake_openai_server.py.
"""
from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from conftest import ROOT, TEST_ENV
from fake_openai_server import FakeOpenAIServer

CHAT = ROOT / "interfaces" / "chat.py"
# Bound for a chat to answer, reached only when broken: the first answer in a test process
# waits for litellm's import (seconds; tens of seconds on a loaded machine).
WAIT_S = 60
CONTROL_SEQUENCE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PROMPT = "you> "

# Each chat is a process over the daemon's real socket; the daemon runs in this process
# (tests/inprocess.py), so litellm is imported once, not by each test's daemon. A daemon that
# is killed needs a process.
pytestmark = pytest.mark.daemon("inprocess")


def chat_env(daemon) -> dict:
    env = {**os.environ, **TEST_ENV, "KSI_SOCKET_PATH": str(daemon.socket_path)}
    env.pop("NO_COLOR", None)
    return env


def run_chat(daemon, *args: str, stdin: str = "", env: dict | None = None, cwd: Path = ROOT):
    return subprocess.run([sys.executable, str(CHAT), *args], input=stdin, text=True,
                          capture_output=True, env=env or chat_env(daemon), cwd=cwd,
                          timeout=WAIT_S)


def _controlling_terminal() -> None:
    # In the child: its own session with the pty as controlling terminal, so Ctrl-C typed
    # into the terminal becomes SIGINT, as in a real one.
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """chat.py running in a pseudo-terminal; what it shows is read as plain text."""

    def __init__(self, daemon, *args: str):
        master, slave = os.openpty()
        self.proc = subprocess.Popen([sys.executable, str(CHAT), *args], stdin=slave,
                                     stdout=slave, stderr=slave, env=chat_env(daemon), cwd=ROOT,
                                     preexec_fn=_controlling_terminal, close_fds=True)
        os.close(slave)
        self.master = master
        self.raw = ""
        self.read_upto = 0  # what was already handed out by read_until

    @property
    def screen(self) -> str:
        return CONTROL_SEQUENCE.sub("", self.raw).replace("\r", "")

    def _read_more(self, deadline: float) -> None:
        ready, _, _ = select.select([self.master], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the chat closed the terminal
                data = b""
            if not data:
                raise EOFError(f"the chat ended; it showed:\n{self.screen}")
            self.raw += data.decode(errors="replace")

    def read_until(self, text: str) -> str:
        """Everything shown after the previous read, up to and including `text`."""
        deadline = time.monotonic() + WAIT_S
        while text not in self.screen[self.read_upto:]:
            assert time.monotonic() < deadline, f"never showed {text!r}; showed:\n{self.screen}"
            self._read_more(deadline)
        end = self.screen.index(text, self.read_upto) + len(text)
        shown, self.read_upto = self.screen[self.read_upto:end], end
        return shown

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def say(self, line: str) -> str:
        """Type a line and return what is shown until the next prompt."""
        self.type(line + "\n")
        return self.read_until(PROMPT)[:-len(PROMPT)]

    def finish(self) -> int:
        """Wait for the chat to exit (reading what it still shows) and return its code."""
        deadline = time.monotonic() + WAIT_S
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, "the chat did not exit"
            try:
                self._read_more(min(deadline, time.monotonic() + 0.1))
            except EOFError:
                break
        code = self.proc.wait(WAIT_S)
        # What it wrote just before exiting may still wait in the terminal: read it to the end.
        drained = time.monotonic() + 5
        try:
            while time.monotonic() < drained:
                self._read_more(min(drained, time.monotonic() + 0.2))
        except EOFError:
            pass
        self.kill()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.master is not None:
            os.close(self.master)
            self.master = None


@pytest.fixture
def terminals():
    opened: list[Terminal] = []

    def open_terminal(daemon, *args: str) -> Terminal:
        terminal = Terminal(daemon, *args)
        opened.append(terminal)
        return terminal

    yield open_terminal
    for terminal in opened:
        terminal.kill()


def answer_line(shown: str) -> str:
    """The answer in what a turn showed: the lines after the echoed input, joined."""
    return " ".join(line.strip() for line in shown.splitlines()[1:] if line.strip())


# ---- in a terminal --------------------------------------------------------------------------

def test_three_turns_in_a_terminal_then_resumed_by_a_new_process(daemon, terminals):
    first = terminals(daemon)
    assert "new session" in first.read_until(PROMPT)
    turns = ["Tell me about lighthouses", "How bright are their lamps?",
             "Who keeps them running today?"]
    answers = [answer_line(first.say(turn)) for turn in turns]
    assert "lighthouses" in answers[0] and "turn" not in answers[0]
    assert "This is turn 2 of our conversation" in answers[1]
    assert 'you first said "Tell me about lighthouses"' in answers[2]
    assert "This is turn 3" in answers[2]
    session_id = answer_line(first.say("/session"))
    assert re.fullmatch(r"\S+", session_id), session_id
    first.type("/quit\n")
    assert first.finish() == 0
    assert "\x1b[" in first.raw  # a terminal gets colour ...

    second = terminals(daemon)
    banner = second.read_until(PROMPT)
    assert f"resuming {session_id} (6 messages)" in banner
    history = second.say("/history").splitlines()[1:]
    assert history == [line for turn, answer in zip(turns, answers)
                       for line in (f"you: {turn}", f"assistant: {answer}")]
    fourth = answer_line(second.say("And what did I ask first?"))
    assert "This is turn 4 of our conversation" in fourth
    assert 'you first said "Tell me about lighthouses"' in fourth
    assert "lighthouses" in fourth
    exported = second.say("/export markdown")
    path = Path(re.search(r"exported 8 messages to (\S+)", exported)[1])
    assert "Tell me about lighthouses" in path.read_text() and "turn 4" in path.read_text()
    assert "/new" in second.say("/help")
    second.type("\x04")  # Ctrl-D at the prompt leaves too
    assert second.finish() == 0


def test_new_session_model_and_session_switching_in_a_terminal(daemon, terminals):
    chat = terminals(daemon)
    chat.read_until(PROMPT)
    chat.say("Tell me about glaciers")
    first_id = answer_line(chat.say("/session"))
    assert "new session" in chat.say("/new")
    fresh = answer_line(chat.say("Tell me about deserts"))
    assert "turn" not in fresh and "glaciers" not in fresh
    second_id = answer_line(chat.say("/session"))
    assert second_id != first_id
    assert f"session {first_id} (2 messages)" in chat.say(f"/session {first_id}")
    assert "This is turn 2" in answer_line(chat.say("And their speed?"))
    assert answer_line(chat.say("/model")).startswith("default")
    refused = chat.say("/model no-such-model")  # checked when chosen, not at the next message
    assert "unknown model 'no-such-model'" in refused and "still using the default" in refused
    assert answer_line(chat.say("/model")).startswith("default")
    assert "unknown command /frobnicate" in chat.say("/frobnicate")
    chat.say("/model default")
    assert "This is turn 3" in answer_line(chat.say("Still there?"))
    chat.type("/quit\n")
    assert chat.finish() == 0
    assert "Traceback" not in chat.screen


def test_answers_stream_into_the_terminal_and_ctrl_c_stops_one(daemon_factory, terminals):
    with FakeOpenAIServer() as api:
        config = {"plugins": {"completion": {"aliases": {"slow": {
            "model": "openai/slow", "api_base": api.api_base, "api_key": "sk-test"}}}}}
        daemon = daemon_factory(config=config)
        chat = terminals(daemon, "--model", "slow")
        chat.read_until(PROMPT)
        chat.type("count for me\n")
        # The slow model writes a word every 0.2 s: the first words are on the screen
        # while the last one is still to come.
        chat.read_until("word1 ")
        assert "word39" not in chat.screen
        chat.type("\x03")
        assert "[answer stopped]" in chat.read_until(PROMPT)
        assert "word39" not in chat.screen
        deadline = time.monotonic() + WAIT_S
        while api.disconnects < 1 and time.monotonic() < deadline:
            time.sleep(0.05)  # the daemon cancels the call upstream
        assert api.disconnects >= 1, \
            f"the stopped answer kept streaming upstream; the daemon said:\n" \
            f"{daemon.read_output()[-6000:]}"
        chat.type("/quit\n")
        assert chat.finish() == 0


# ---- one-shot and piped ---------------------------------------------------------------------

def test_one_shot_prints_the_answer_and_continues_the_last_session(daemon):
    first = run_chat(daemon, "Tell", "me", "about", "volcanoes")
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("\n") == 1 and "volcanoes" in first.stdout
    assert "\x1b" not in first.stdout
    second = run_chat(daemon, "Are they dangerous?")
    assert "This is turn 2" in second.stdout and "volcanoes" in second.stdout
    assert "resuming" in second.stderr  # remarks go to stderr, the answer alone to stdout
    fresh = run_chat(daemon, "--new", "Tell me about rivers")
    assert "turn" not in fresh.stdout
    named = run_chat(daemon, "--session", "named-one", "Tell me about caves")
    again = run_chat(daemon, "--session", "named-one", "How deep?")
    assert "caves" in named.stdout and "This is turn 2" in again.stdout
    assert "caves" in again.stdout
    # Found through KSI_VAR_DIR alone, from another directory.
    env = {key: value for key, value in chat_env(daemon).items() if key != "KSI_SOCKET_PATH"}
    env["KSI_VAR_DIR"] = str(daemon.var_dir)
    local = run_chat(daemon, "And the bats?", env=env, cwd="/")
    assert local.returncode == 0, local.stderr
    assert "This is turn 3" in local.stdout and "caves" in local.stdout


def test_piped_lines_get_one_answer_line_each(daemon):
    result = run_chat(daemon, "--new", stdin="Tell me about bees\n\nHow do they fly?\n"
                                              "/history\nWhat about honey?\n")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "\x1b" not in result.stdout and PROMPT not in result.stdout
    assert "bees" in lines[0]
    assert "This is turn 2" in lines[1]
    assert lines[2:6] == ["you: Tell me about bees", f"assistant: {lines[0]}",
                          "you: How do they fly?", f"assistant: {lines[1]}"]
    assert "This is turn 3" in lines[6] and len(lines) == 7


def test_readable_errors_without_tracebacks(daemon, tmp_path):
    missing = run_chat(daemon, "--socket", str(tmp_path / "none.sock"), "hello")
    assert missing.returncode == 1
    assert "no daemon running: start it with ./daemon_control.py start" in missing.stderr
    assert missing.stdout == ""
    env = {**chat_env(daemon)}
    env.pop("KSI_SOCKET_PATH")
    env["KSI_VAR_DIR"] = str(tmp_path)
    assert "no daemon running" in run_chat(daemon, "hi", env=env).stderr

    # A model the daemon would refuse is a usage error before any turn (see test_newcomer_chat).
    piped = run_chat(daemon, "--model", "no-such-model", stdin="hello\n")
    assert piped.returncode == 2
    assert "--model: unknown model 'no-such-model'" in piped.stderr
    assert piped.stdout == ""
    for result in (missing, piped):
        assert "Traceback" not in result.stderr

    usage = run_chat(daemon, "--new", "--session", "x")
    assert usage.returncode == 2 and "not allowed with" in usage.stderr


@pytest.mark.daemon("process")
def test_a_daemon_that_goes_away_mid_chat_is_reported(daemon, terminals):
    chat = terminals(daemon)
    chat.read_until(PROMPT)
    chat.say("Tell me about tides")
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait()
    chat.type("And the moon?\n")
    assert chat.finish() == 1
    assert "lost the connection to the daemon" in chat.screen
    assert "Traceback" not in chat.screen
