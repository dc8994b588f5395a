#!/usr/bin/env bash
# Set up a workstation: virtual environment, edgekit with its extras, the Fashion-MNIST files.
# Safe to run again: reuses the environment while pyproject.toml is unchanged.
#   EDGEKIT_VENV   where the virtual environment lives (default: .venv in the repository)
#   EDGEKIT_EXTRAS which extras to install (default: train,dev)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EDGEKIT_VENV:-$ROOT/.venv}"
EXTRAS="${EDGEKIT_EXTRAS:-train,dev}"
PYTHON="${PYTHON:-python3}"

say() { printf '[setup] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi

STAMP="$VENV/.edgekit-install-stamp"
WANT="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1) $EXTRAS $ROOT"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    say "installing edgekit[$EXTRAS] into $VENV (first time: several minutes, TensorFlow is large)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[$EXTRAS]"
    echo "$WANT" > "$STAMP"
else
    say "edgekit[$EXTRAS] already installed in $VENV"
fi

# The dataset: already found (any location of the lookup order)? Otherwise Debian's package.
if EDGEKIT_OFFLINE=1 "$VENV/bin/edgekit" data > /dev/null 2>&1; then
    say "Fashion-MNIST found: $(EDGEKIT_OFFLINE=1 "$VENV/bin/edgekit" data --json | "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["source"])')"
else
    SUDO=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo > /dev/null; then SUDO="sudo"; fi
    if command -v apt-get > /dev/null && { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }; then
        say "installing Debian package dataset-fashion-mnist"
        $SUDO apt-get update -qq || true
        $SUDO apt-get install -y -qq dataset-fashion-mnist > /dev/null || say "apt-get could not install it"
    fi
    # Last resort: the lookup itself falls back to Keras' download on machines with internet.
    "$VENV/bin/edgekit" data > /dev/null
    say "Fashion-MNIST ready"
fi
