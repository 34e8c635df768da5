"""Run the marked examples of a doc as scripts against a daemon and compare what they print.

A doc marks an example with `<!-- example: NAME -->` right before a ```python block; the ```text
block that follows it is what the script printed. `run_doc_example` runs the script over the
daemon's real Unix socket (KSI_SOCKET_PATH, as ksi_client reads it) and returns (printed, shown).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import ROOT, TEST_ENV

EXAMPLE = re.compile(r"<!-- example: (?P<name>\S+) -->\n```python\n(?P<code>.*?)```\n+"
                     r"```text\n(?P<printed>.*?)```", re.S)


def doc_example(doc: str, name: str) -> tuple[str, str]:
    text = (ROOT / "docs" / doc).read_text(encoding="utf-8")
    found = {m["name"]: (m["code"], m["printed"]) for m in EXAMPLE.finditer(text)}
    assert name in found, f"docs/{doc} has no example {name!r}"
    return found[name]


def run_doc_example(doc: str, name: str, socket_path, workdir) -> tuple[str, str]:
    code, shown = doc_example(doc, name)
    script = workdir / f"{name}_example.py"
    script.write_text(code, encoding="utf-8")
    env = {**os.environ, **TEST_ENV, "KSI_SOCKET_PATH": str(socket_path),
           "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(script)], cwd=workdir, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"docs/{doc} example {name}:\n{result.stderr}"
    return result.stdout, shown
