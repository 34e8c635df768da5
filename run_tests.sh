#!/usr/bin/env bash
# Runs the whole test suite. Sets up .venv (with the pinned dependencies) on first use.
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x .venv/bin/python ]; then
  echo "setting up .venv (first run only)..."
  python3 -m venv .venv
fi
# Reinstall when pyproject.toml changed since the last install.
if [ ! -f .venv/.ksi-installed ] || [ pyproject.toml -nt .venv/.ksi-installed ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[test]"
  touch .venv/.ksi-installed
fi

# The Node tools the tests use (the MCP Inspector's CLI, pinned in package-lock.json): installed
# when missing or when the lock changed. Without npm the tests that need them skip.
if command -v npm >/dev/null 2>&1; then
  if [ ! -f node_modules/.ksi-installed ] || [ package-lock.json -nt node_modules/.ksi-installed ]; then
    npm ci --no-audit --no-fund --loglevel=error
    touch node_modules/.ksi-installed
  fi
fi

export LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_MODE=PRODUCTION HF_HUB_OFFLINE=1
# Two pytest-xdist workers (KSI_TEST_WORKERS=1 runs in one process): much of a daemon test is
# waiting (for a process, a socket, a grace period), which the other worker fills. A file's
# tests stay on one worker, so a module's shared daemon starts once.
workers=${KSI_TEST_WORKERS:-2}
parallel=()
if [ "$workers" -gt 1 ]; then
  parallel=(-n "$workers" --dist loadfile)
fi
exec .venv/bin/python -m pytest ${parallel[@]+"${parallel[@]}"} "$@"
