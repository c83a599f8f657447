#!/usr/bin/env bash
# Install the Debian data packages kdkit reads: `dataset-fashion-mnist` (the full Fashion-MNIST as idx files in
# /usr/share/datasets/fashion-mnist, read by the `fashion_mnist` dataset). Idempotent and quiet: does nothing when
# the files are there. It never fails the caller: without root or without the Debian registry it prints one line and
# exits 0, and the Fashion-MNIST tests are then skipped with that reason. (CI runs as root with the registry.)
set -u
if [ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_debian: no apt-get here; the fashion_mnist dataset is unavailable (its tests are skipped)" >&2
  exit 0
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    echo "install_debian: not root (and no passwordless sudo); run: sudo apt-get install dataset-fashion-mnist" >&2
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
if "${SUDO[@]}" apt-get install -y -qq --no-install-recommends dataset-fashion-mnist >/dev/null 2>&1 \
    || { "${SUDO[@]}" apt-get update -qq >/dev/null 2>&1 \
         && "${SUDO[@]}" apt-get install -y -qq --no-install-recommends dataset-fashion-mnist >/dev/null 2>&1; }; then
  echo "install_debian: installed dataset-fashion-mnist" >&2
else
  echo "install_debian: apt-get install dataset-fashion-mnist failed; the fashion_mnist dataset is unavailable" >&2
fi
exit 0
