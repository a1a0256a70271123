#!/usr/bin/env bash
# Create or reuse ./.venv with tftrain and its pinned dependencies, and install the Fashion-MNIST dataset from
# Debian when it is missing. Sourced by scripts/run.sh and scripts/test.sh; safe to run again (it skips what is done).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.tftrain-installed"

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $($PYTHON --version 2>&1)"
  if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
    echo "setup: '$PYTHON -m venv' failed; on Debian/Ubuntu: apt-get install python3-venv" >&2
    exit 1
  fi
fi

# Reinstall only when the dependency list changed since the last install.
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing tftrain and its dependencies into $VENV (a minute or two the first time)"
  # (sed drops pip's warnings about find-links folders that some machines' pip config names but lack)
  "$VENV/bin/python" -m pip install --quiet --upgrade pip 2>&1 | sed "/^WARNING: Location '/d"
  "$VENV/bin/python" -m pip install --quiet -e ".[test]" 2>&1 | sed "/^WARNING: Location '/d"
  echo "$want" > "$STAMP"
fi

# Debian packages by name, when missing: as root, with sudo, or else say what to install.
apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing Debian's $*"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then
    echo "setup: installing Debian's $* (sudo)"
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "setup: cannot install Debian's $* here (no apt-get, or not root and no sudo)"
    return 1
  fi
}

# The real Fashion-MNIST, offline: Debian's dataset-fashion-mnist package.
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  apt_install dataset-fashion-mnist || echo "setup: tftrain will try the Keras download instead"
fi
