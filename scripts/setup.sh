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
TORCH=${TORCH_VERSION:-2.13.0}
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
# torch first, pinned: anything that asks for an unpinned torch would otherwise pull a CUDA build (GBs).
# Without an NVIDIA GPU, the CPU build: if the configured indexes (a local mirror, say) already resolve
# torch to a `+cpu` wheel they are used as they are; otherwise PyTorch's CPU index is added, for torch only
# (its `+cpu` version sorts above PyPI's CUDA build of the same release).
torch_from=()
if ! { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }; then
  resolved=$(pip install --dry-run --no-deps --report - "torch==$TORCH" 2>/dev/null \
    | .venv/bin/python -c 'import json, sys; print(*(i["metadata"]["version"] for i in json.load(sys.stdin)["install"]))' \
    || true)
  case "$resolved" in
    "" | *+cpu) ;;  # already installed, or the CPU build is what the indexes give
    *) torch_from=(--extra-index-url "$TORCH_CPU_INDEX") ;;
  esac
fi
pip install "${torch_from[@]}" "torch==$TORCH"
pip install -c constraints.txt -e ".[runtime,operator,dev]"

if [ "$browser" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq chromium >/dev/null
fi
echo "setup.sh: ready (.venv)"
