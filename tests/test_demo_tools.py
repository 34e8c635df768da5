"""docs/DEMO.md, "An agent that uses tools": the script runs as written and prints what is shown."""
from __future__ import annotations

import pytest

from doc_examples import run_doc_example

pytestmark = pytest.mark.daemon("inprocess")


def test_the_demo_agent_keeps_notes_with_its_tools_as_shown(daemon, tmp_path):
    printed, shown = run_doc_example("DEMO.md", "agent-tools", daemon.socket_path, tmp_path)
    assert printed == shown
    # Run again: the demo clears its namespace first, so a second run prints the same.
    again, _ = run_doc_example("DEMO.md", "agent-tools", daemon.socket_path, tmp_path)
    assert again == shown
