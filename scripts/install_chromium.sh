#!/usr/bin/env bash
# Install Debian's `chromium` package for the report's browser test (tests/integration/test_report.py renders the
# HTML report headless). Idempotent and quiet: does nothing when chromium is already there. It never fails the
# caller: without root or without the Debian registry it prints one line and exits 0, and the browser test is then
# skipped with that reason. (CI runs as root with the registry, so there it installs.)
set -u
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_chromium: no apt-get here; the report's browser test will be skipped" >&2
  exit 0
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    echo "install_chromium: not root (and no passwordless sudo); the report's browser test will be skipped" >&2
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
if "${SUDO[@]}" apt-get update -qq >/dev/null 2>&1 \
    && "${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; then
  echo "install_chromium: installed $(chromium --version 2>/dev/null || echo chromium)" >&2
else
  echo "install_chromium: apt-get install chromium failed; the report's browser test will be skipped" >&2
fi
exit 0
