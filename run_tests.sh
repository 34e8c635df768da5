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

# System tools the tests use: Debian's `prometheus` (a real server scrapes the daemon),
# `netcat-openbsd` (`nc -U`, as the deployment guide uses it) and `openssl` (certificates for the
# cluster's TLS test). Installed with apt-get when
# missing, if apt-get and root (or password-less sudo) are at hand; else those tests skip.
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi; }
can_install() {
  command -v apt-get >/dev/null 2>&1 &&
    { [ "$(id -u)" -eq 0 ] || { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; }; }
}
apt_install() {
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
    >/dev/null 2>&1 ||
    { as_root apt-get update -qq >/dev/null 2>&1 &&
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "$@" >/dev/null 2>&1; }
}
missing=()
command -v prometheus >/dev/null 2>&1 || [ -x /usr/bin/prometheus ] || missing+=(prometheus)
{ command -v nc >/dev/null 2>&1 && nc -h 2>&1 | grep -q -- '-U'; } || missing+=(netcat-openbsd)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  if can_install; then
    echo "installing ${missing[*]} (apt-get)..."
    apt_install "${missing[@]}" || echo "warning: apt-get could not install ${missing[*]}; the tests that need them skip"
  else
    echo "note: ${missing[*]} missing and apt-get or root unavailable; the tests that need them skip"
  fi
fi

export LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_MODE=PRODUCTION HF_HUB_OFFLINE=1
# Three pytest-xdist workers on the 2-core machine (KSI_TEST_WORKERS=1 runs in one process):
# much of a daemon test is waiting (for a process, a socket, a lease to expire), which the other
# workers fill. A file's tests stay on one worker, so a module's shared daemon starts once.
workers=${KSI_TEST_WORKERS:-3}
parallel=()
if [ "$workers" -gt 1 ]; then
  parallel=(-n "$workers" --dist loadfile)
fi
exec .venv/bin/python -m pytest ${parallel[@]+"${parallel[@]}"} "$@"
