"""chat.py given tools: each call and its result is shown as it happens, the answer quotes it.

The offline model calls a tool when a line of the message reads `/tool NAME {json}`
(docs/TOOLS_LOOP.md); the chat is a process over the daemon's real socket.
"""
from __future__ import annotations

import pytest

from test_chat import PROMPT, answer_line, run_chat, terminals  # noqa: F401 - a fixture

pytestmark = pytest.mark.daemon("inprocess")

LOOK_UP = '/tool state:get {"namespace": "tools", "key": "answer"}'


def _store_the_answer(daemon, value) -> None:
    with daemon.client(timeout=60) as client:
        client.request("state:set", {"namespace": "tools", "key": "answer", "value": value})


def test_piped_tool_calls_are_shown_on_stderr_as_they_happen_and_quoted_in_the_answer(daemon):
    _store_the_answer(daemon, 7731)
    result = run_chat(daemon, "--new", "--tools", "state:get,state:set",
                      stdin=f"{LOOK_UP}\n/history\n")
    assert result.returncode == 0, result.stderr
    notices = result.stderr.splitlines()
    call = next(line for line in notices if line.startswith("[tool] state:get {"))
    assert '"key":"answer"' in call
    done = next(line for line in notices if line.startswith("[tool] state:get -> "))
    assert '"value":7731' in done and done.endswith(" ms)")
    assert notices.index(call) < notices.index(done)
    answer, *history = result.stdout.splitlines()  # stdout: one answer line, then /history
    assert "7731" in answer and answer.startswith("I used my tools.")
    assert history[0] == f"you: {LOOK_UP}"
    assert history[1].startswith("assistant: [calls state_get ")
    assert history[2].startswith("tool: ") and "7731" in history[2]
    assert history[3] == f"assistant: {answer}" and len(history) == 4


def test_a_tool_not_offered_is_refused_and_the_refusal_shown(daemon):
    result = run_chat(daemon, "--new", "--tools", "state:get",
                      'Change it.\n/tool state:set {"namespace": "tools", "key": "k", '
                      '"value": 1}')
    assert result.returncode == 0, result.stderr
    assert "[tool] state:set failed (not_found)" in result.stderr
    assert "not_found" in result.stdout  # the model read the refusal and quotes it
    with daemon.client(timeout=60) as client:
        found = client.request("state:get", {"namespace": "tools", "key": "k"})["data"]
    assert found["found"] is False  # not run


def test_unknown_tools_on_the_command_line_are_a_usage_error(daemon):
    result = run_chat(daemon, "--tools", "state:get,no:such", "hello")
    assert result.returncode == 2
    assert result.stderr.startswith("--tools: no tool named no:such")
    assert result.stdout == ""


def test_tools_chosen_in_a_terminal_show_each_call_before_the_answer(daemon, terminals):
    _store_the_answer(daemon, 4242)
    chat = terminals(daemon, "--new")
    chat.read_until(PROMPT)
    assert answer_line(chat.say("/tools")) == "no tools"
    assert "no tool named nope" in chat.say("/tools nope")
    assert answer_line(chat.say("/tools state:get")) == "state:get"
    listed = chat.say("/tools all")
    assert "state:get" in listed and "state:set" in listed
    shown = chat.say(LOOK_UP)
    lines = [line.strip() for line in shown.splitlines()[1:] if line.strip()]
    assert lines[0].startswith("[tool] state:get {")
    assert lines[1].startswith("[tool] state:get -> ") and "4242" in lines[1]
    assert "4242" in lines[2] and lines[2].startswith("I used my tools.")
    assert answer_line(chat.say("/tools off")) == "no tools"
    plain = answer_line(chat.say(LOOK_UP))  # no tools offered: the model only talks
    assert "[tool]" not in plain and "I used my tools" not in plain
    chat.type("/quit\n")
    assert chat.finish() == 0
