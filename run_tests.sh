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

export LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_MODE=PRODUCTION HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
