#!/usr/bin/env bash
# Set up a workstation: virtual environment, edgekit with its extras, the Fashion-MNIST files,
# and Debian's chromium for the browser test of `edgekit serve`.
# Safe to run again: reuses the environment while pyproject.toml is unchanged.
#   EDGEKIT_VENV   where the virtual environment lives (default: .venv in the repository)
#   EDGEKIT_EXTRAS which extras to install (default: train,dev,serve,micro)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EDGEKIT_VENV:-$ROOT/.venv}"
EXTRAS="${EDGEKIT_EXTRAS:-train,dev,serve,micro}"
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

# Debian packages: as root, or through sudo; returns 1 where neither (or apt-get) is there.
SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo > /dev/null; then SUDO="sudo"; fi
APT_UPDATED=""
apt_install() {
    if ! command -v apt-get > /dev/null || { [ "$(id -u)" -ne 0 ] && [ -z "$SUDO" ]; }; then
        return 1
    fi
    say "installing Debian package $1"
    if [ -z "$APT_UPDATED" ]; then $SUDO apt-get update -qq || true; APT_UPDATED=1; fi
    $SUDO apt-get install -y -qq "$1" > /dev/null || say "apt-get could not install $1"
}

# The dataset: already found (any location of the lookup order)? Otherwise Debian's package.
if EDGEKIT_OFFLINE=1 "$VENV/bin/edgekit" data > /dev/null 2>&1; then
    say "Fashion-MNIST found: $(EDGEKIT_OFFLINE=1 "$VENV/bin/edgekit" data --json | "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["source"])')"
else
    apt_install dataset-fashion-mnist || true
    # Last resort: the lookup itself falls back to Keras' download on machines with internet.
    "$VENV/bin/edgekit" data > /dev/null
    say "Fashion-MNIST ready"
fi

# The browser test of `edgekit serve` drives Debian's chromium (Playwright's own browser
# download is not used): install it once where it is missing.
if [ -x /usr/bin/chromium ]; then
    say "chromium found: /usr/bin/chromium"
elif ! apt_install chromium; then
    say "no /usr/bin/chromium and no apt-get: tests/test_serve_browser.py will be skipped"
fi
