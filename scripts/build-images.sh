#!/usr/bin/env bash
# Builds both images of the Dockerfile: PREFIX/residency-runtime:TAG and PREFIX/residency-operator:TAG.
#   scripts/build-images.sh [--tag TAG] [--prefix PREFIX] [--cpu]
# TAG defaults to the project's version (pyproject.toml), PREFIX to ghcr.io/residency-dev.
# --cpu: the runtime with the CPU builds of torch and onnxruntime (~1.4 GB instead of ~5.4 GB; no GPU use):
#   torch from $TORCH_WHEELS (a folder holding a torch-<version>+cpu wheel, mounted into a podman build) when
#   set, else from PyTorch's CPU index. CI builds this way (the CUDA wheels alone are ~3 GB to download).
# Engine: $ENGINE (docker or podman), else docker when its daemon answers, else podman, which needs no daemon
#   (chroot isolation, host network: what works on machines without a container runtime of their own).
# Env: PYTHON_IMAGE (the base, default the Dockerfile's python:3.11-slim-bookworm), EXTRA_BUILD_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
tag=$version prefix=ghcr.io/residency-dev cpu=0
while [ $# -gt 0 ]; do
  case $1 in
    --tag) tag=$2; shift 2 ;;
    --prefix) prefix=$2; shift 2 ;;
    --cpu) cpu=1; shift ;;
    *) echo "build-images.sh: unknown argument $1 (see the header of this script)" >&2; exit 2 ;;
  esac
done

engine=${ENGINE:-}
if [ -z "$engine" ]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then engine=docker; else engine=podman; fi
fi
common=(--build-arg "VERSION=$version")
[ -n "${PYTHON_IMAGE:-}" ] && common+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
[ "$engine" = podman ] && common+=(--isolation chroot --network host)
# shellcheck disable=SC2206  # EXTRA_BUILD_ARGS is a list of words on purpose
common+=(${EXTRA_BUILD_ARGS:-})

runtime=()
if [ "$cpu" = 1 ]; then
  runtime+=(--build-arg ONNXRUNTIME=onnxruntime)
  if [ -n "${TORCH_WHEELS:-}" ]; then
    [ "$engine" = podman ] || { echo "TORCH_WHEELS needs podman (a build-time volume)" >&2; exit 2; }
    runtime+=(-v "$TORCH_WHEELS:/torch-wheels:ro" --build-arg TORCH_FIND_LINKS=/torch-wheels
              --build-arg TORCH_INDEX_URL=https://pypi.org/simple)
  else
    runtime+=(--build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu)
  fi
fi

for target in operator runtime; do
  start=$(date +%s)
  extra=()
  [ "$target" = runtime ] && extra=("${runtime[@]}")
  "$engine" build "${common[@]}" "${extra[@]}" --target "$target" -t "$prefix/residency-$target:$tag" .
  echo "built $prefix/residency-$target:$tag with $engine in $(( $(date +%s) - start )) s" >&2
done
