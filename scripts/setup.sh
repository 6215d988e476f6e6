#!/usr/bin/env bash
# Set up everything fedge needs on a fresh Debian machine with Python 3.11:
# the Fashion-MNIST Debian package, a virtual environment in .venv, torch (CPU, pinned,
# installed first so nothing pulls CUDA wheels), then fedge with its extras.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
EXTRAS=${FEDGE_EXTRAS:-dev,plots,grpc,ray,caching,tensorboard,mlflow,secure,he,privacy,sumo}

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ -z "${FEDGE_DATA:-}" ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing the Debian package dataset-fashion-mnist"
  $SUDO apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

# The browser is only for the tests' check of the report pages (scripts/test.sh asks for it).
if [ "${FEDGE_SETUP_BROWSER:-0}" = "1" ] && ! command -v chromium >/dev/null 2>&1 \
  && ! command -v chromium-browser >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing the Debian package chromium (the report pages' browser check)"
  $SUDO apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null || \
    echo "setup: chromium could not be installed; the browser check will be skipped"
fi

stamp=.venv/.fedge-setup
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1) $EXTRAS"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setup: creating .venv and installing torch==2.13.0 and fedge[$EXTRAS]"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[$EXTRAS]"
echo "$want" > "$stamp"
