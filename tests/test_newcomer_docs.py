"""What a newcomer copies out of the README works as it is."""
from __future__ import annotations

import re

import pytest

from conftest import ROOT, run_python_blocks

PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
# A request piped into nc: without -N (or -q) Debian's netcat-openbsd never exits.
PIPED_INTO_NC = re.compile(r"\|\s*nc\s+(?P<options>(?:-\S+\s+)*)")


def readme_python_blocks() -> list[str]:
    return PYTHON_BLOCK.findall((ROOT / "README.md").read_text(encoding="utf-8"))


# Each block runs as its own script over the real socket; the daemon runs in this process.
@pytest.mark.daemon("inprocess")
def test_every_python_block_of_the_readme_runs_as_a_script_against_a_daemon(daemon, tmp_path):
    blocks = readme_python_blocks()
    assert len(blocks) >= 3
    run_python_blocks(blocks, daemon.socket_path, tmp_path, "README")


def docs_and_the_start_banner() -> dict[str, str]:
    texts = {str(path.relative_to(ROOT)): path.read_text(encoding="utf-8")
             for path in [ROOT / "README.md", ROOT / "interfaces" / "README.md",
                          *sorted((ROOT / "docs").glob("*.md"))]}
    banner = ROOT / "ksi_daemon" / "control" / "start.py"
    texts[str(banner.relative_to(ROOT))] = banner.read_text(encoding="utf-8")
    return texts


def test_every_request_piped_into_nc_lets_nc_exit_after_the_reply():
    seen = 0
    for name, text in docs_and_the_start_banner().items():
        for match in PIPED_INTO_NC.finditer(text):
            options = match["options"].split()
            seen += 1
            assert "-U" in options, f"{name}: {match[0]!r}"
            assert "-N" in options or "-q" in options, f"{name}: {match[0]!r} needs -N"
    assert seen > 10


def test_the_readme_says_where_nc_comes_from():
    assert "netcat-openbsd" in (ROOT / "README.md").read_text(encoding="utf-8")
