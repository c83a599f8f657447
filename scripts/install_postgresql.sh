#!/usr/bin/env bash
# Install Debian's `postgresql` package for the slow test that runs two `kdkit tune` workers against a real PostgreSQL
# server (tests/integration/test_tune_postgres.py starts its own throwaway server in a temporary directory, on a local
# socket). Idempotent and quiet: does nothing when the server binaries are already there. It never fails the caller:
# without root or without the Debian registry it prints one line and exits 0, and the test is then skipped with that
# reason. (CI runs as root with the registry, so there it installs.)
set -u
if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_postgresql: no apt-get here; the PostgreSQL workers test will be skipped" >&2
  exit 0
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    echo "install_postgresql: not root (and no passwordless sudo); the PostgreSQL workers test will be skipped" >&2
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
# The test creates its own cluster with initdb; the package's default cluster is not used.
if "${SUDO[@]}" apt-get update -qq >/dev/null 2>&1 \
    && "${SUDO[@]}" apt-get install -y -qq --no-install-recommends postgresql >/dev/null 2>&1; then
  echo "install_postgresql: installed $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tail -1)" >&2
else
  echo "install_postgresql: apt-get install postgresql failed; the PostgreSQL workers test will be skipped" >&2
fi
exit 0
