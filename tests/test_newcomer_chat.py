"""chat.py checks what a newcomer picks when it is picked: a model, a session."""
from __future__ import annotations

import pytest

from test_chat import run_chat

# The chat is a process over the daemon's real socket; the daemon runs in this process
# (tests/inprocess.py), so litellm is imported once, not by each test's daemon.
pytestmark = pytest.mark.daemon("inprocess")


def test_an_unknown_model_on_the_command_line_is_a_usage_error_naming_the_aliases(daemon):
    result = run_chat(daemon, "--model", "sonnet", "hello")
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    message = result.stderr.strip()
    assert message.startswith("--model: unknown model 'sonnet'")
    # The default model is the default, not an alias: there are none in this daemon.
    assert "configured alias (none are configured)" in message
    assert "the default model is ksi-offline/default" in message


def test_an_unknown_model_chosen_in_the_chat_is_refused_at_once_and_the_model_kept(daemon):
    result = run_chat(daemon, "--new", stdin="/model nonexistent/foo\n/model\nhello\n")
    assert result.returncode == 0, result.stderr
    assert "unknown model 'nonexistent/foo'" in result.stderr
    assert "still using the default model" in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("default")  # /model: nothing changed
    assert "hello" in lines[1] and "error" not in result.stderr.split("still using")[1]


def test_a_known_model_is_taken(daemon):
    result = run_chat(daemon, "--new", stdin="/model ksi-offline/other\n/model\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["ksi-offline/other", "ksi-offline/other"]


def test_switching_to_a_session_that_does_not_exist_keeps_the_current_one(daemon):
    first = run_chat(daemon, "--new", stdin="Tell me about owls\n/session\n"
                                            "/session deadbeef\n/session\nAnd their eyes?\n")
    assert first.returncode == 0, first.stderr
    answer, session_id, still, follow_up = first.stdout.splitlines()
    assert "owls" in answer and still == session_id
    assert f"no session deadbeef exists; staying in session {session_id}" in first.stderr
    assert "This is turn 2" in follow_up


def test_models_check_says_whether_a_name_would_be_accepted(daemon):
    with daemon.client(timeout=120) as client:  # the first check waits for litellm's import
        for name, usable in (("ksi-offline/default", True), ("sonnet", False),
                             ("claude-cli/sonnet", True), ("nonexistent/foo", False),
                             ("openai/gpt-4o", True)):
            check = client.request("completion:models", {"check": name})["data"]["check"]
            assert check["usable"] is usable, check
            assert ("routes_to" in check) is usable and ("reason" in check) is not usable
