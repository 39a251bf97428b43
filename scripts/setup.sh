#!/usr/bin/env bash
# Creates .venv and installs Residency with every extra; idempotent, safe to run again.
# --browser also installs Debian's chromium for the status-page tests (needs root or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
browser=0
for arg in "$@"; do
  case "$arg" in
    --browser) browser=1 ;;
    *) echo "setup.sh: unknown option $arg (known: --browser)" >&2; exit 2 ;;
  esac
done

[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
# torch first, pinned: anything that asks for an unpinned torch would otherwise pull a CUDA build (GBs).
pip install "torch==2.13.0"
pip install -c constraints.txt -e ".[runtime,operator,dev]"

if [ "$browser" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq chromium >/dev/null
fi
echo "setup.sh: ready (.venv)"
