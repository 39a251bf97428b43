#!/usr/bin/env bash
# One run that checks the GPU path and writes one summary (docs/PERFORMANCE.md, "GPU check").
#
#   bash bench/gpu_check.sh [OUT_DIR]        # default bench/results/gpu-check-<UTC time>
#
# With a GPU (torch sees CUDA), under 10 minutes on one GPU: `pytest -m gpu`, then bench/gpu_check.py on
# a 2 GiB model of one tensor and one of 4096 tensors in both cpuModes, then hibari on the CUDA provider.
# Without one, the same steps on CPU stand-ins (tiny sizes, a few seconds each), so CI proves the script.
# Knobs: GPU_CHECK_SIZE_GIB, GPU_CHECK_TENSORS, GPU_CHECK_MODES, GPU_CHECK_REPEATS, PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/results/gpu-check-$(date -u +%Y%m%dT%H%M%SZ)}
PY=${PYTHON:-python}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/runtime${PYTHONPATH:+:$PYTHONPATH}"

if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    DEVICE=cuda SIZE=${GPU_CHECK_SIZE_GIB:-2} TENSORS=${GPU_CHECK_TENSORS:-4096} PYTEST_LIMIT=300
    MODES=${GPU_CHECK_MODES:-keep-worker,exit-worker} REPEATS=${GPU_CHECK_REPEATS:-3}
else
    # CPU stand-ins prove the path, not figures: one cpuMode, small models (~30 s on an idle 2-core host).
    DEVICE=cpu SIZE=${GPU_CHECK_SIZE_GIB:-0.004} TENSORS=${GPU_CHECK_TENSORS:-512} PYTEST_LIMIT=120
    MODES=${GPU_CHECK_MODES:-keep-worker} REPEATS=${GPU_CHECK_REPEATS:-2}
fi
echo "[gpu-check] device=$DEVICE size=${SIZE}GiB tensors=$TENSORS out=$OUT"

# 1. The GPU tests (on CPU they collect and skip: the invocation itself is what is checked).
set +e
timeout "$PYTEST_LIMIT" "$PY" -m pytest -m gpu -q -p no:cacheprovider \
    tests/tts_runtime/test_gpu_backend.py tests/tts_runtime/test_gpu_engine.py \
    tests/tts_runtime/test_gpu_path.py tests/tts_runtime/test_server_gpu.py >"$OUT/pytest-gpu.txt" 2>&1
rc=$?
set -e
PYTEST_LINE="$(tail -n 1 "$OUT/pytest-gpu.txt") (exit $rc)"
echo "[gpu-check] pytest -m gpu: $PYTEST_LINE"
case $rc in 0 | 5) ;; *) [ "$DEVICE" = cpu ] && { echo "pytest -m gpu failed on CPU" >&2; exit 1; } ;; esac

# 2. Measurements, one summary.
timeout 420 "$PY" bench/gpu_check.py --device "$DEVICE" --size-gib "$SIZE" --tensors "$TENSORS" \
    --modes "$MODES" --repeats "$REPEATS" \
    --pytest "$PYTEST_LINE" --out "$OUT"
echo "[gpu-check] summary: $OUT/SUMMARY.md"
