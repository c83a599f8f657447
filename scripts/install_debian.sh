#!/usr/bin/env bash
# Install the Debian packages some of kdkit's tests and datasets use (`make test` and `make test-all` call this):
#   dataset-fashion-mnist  the full Fashion-MNIST as idx files in /usr/share/datasets/fashion-mnist, read by the
#                          `fashion_mnist` dataset (its tests are skipped without it);
#   chromium               renders the HTML report headless in tests/integration/test_report.py;
#   postgresql             server binaries for the slow test that runs two `kdkit tune` workers against a throwaway
#                          server (tests/integration/test_tune_postgres.py; the package's default cluster is unused).
# Usage: bash scripts/install_debian.sh [PACKAGE ...]   (default: all three).
# Idempotent and quiet: a package whose files are already there is skipped. It never fails the caller: without
# apt-get, root (or passwordless sudo) or the Debian registry it prints one line per missing package naming what is
# then skipped, and exits 0. CI runs as root with the registry, so there everything installs, with one
# `apt-get update` for all of them.
set -u

present() {  # is PACKAGE's payload already installed?
  case "$1" in
    dataset-fashion-mnist) [ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] ;;
    chromium) command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] ;;
    postgresql) command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 ;;
    *) dpkg -s "$1" >/dev/null 2>&1 ;;
  esac
}

without() {  # what a user loses without PACKAGE
  case "$1" in
    dataset-fashion-mnist) echo "the fashion_mnist dataset is unavailable (its tests are skipped)" ;;
    chromium) echo "the report's browser test will be skipped" ;;
    postgresql) echo "the PostgreSQL workers test will be skipped" ;;
    *) echo "what needs it will be skipped" ;;
  esac
}

[ "$#" -gt 0 ] || set -- dataset-fashion-mnist chromium postgresql
missing=()
for pkg in "$@"; do
  present "$pkg" || missing+=("$pkg")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  for pkg in "${missing[@]}"; do echo "install_debian: no apt-get here; $pkg: $(without "$pkg")" >&2; done
  exit 0
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    for pkg in "${missing[@]}"; do
      echo "install_debian: not root (and no passwordless sudo); run: sudo apt-get install $pkg -- otherwise" \
           "$(without "$pkg")" >&2
    done
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
apt() { "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1; }
# One try from the current package lists; if that fails, refresh them once and install the packages one by one, so
# one unavailable package does not cost the others.
if ! apt "${missing[@]}"; then
  "${SUDO[@]}" apt-get update -qq >/dev/null 2>&1
  for pkg in "${missing[@]}"; do
    apt "$pkg" || echo "install_debian: apt-get install $pkg failed; $(without "$pkg")" >&2
  done
fi
for pkg in "${missing[@]}"; do
  present "$pkg" && echo "install_debian: installed $pkg" >&2
done
exit 0
