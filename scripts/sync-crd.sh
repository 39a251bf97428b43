#!/usr/bin/env bash
# Copies crds/ttsservices.yaml (the source of truth) into the Helm chart; --check only compares them.
# Run it after every change to the CRD: tests/charts/test_crd_sync.py fails while the copies differ.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
src="$root/crds/ttsservices.yaml"
dst="$root/charts/residency/files/ttsservices.yaml"

check=0
for arg in "$@"; do
  case "$arg" in
    --check) check=1 ;;
    -h|--help) echo "usage: scripts/sync-crd.sh [--check]"; exit 0 ;;
    *) echo "sync-crd.sh: unknown option $arg (known: --check)" >&2; exit 2 ;;
  esac
done

if [ ! -f "$src" ]; then
  echo "sync-crd.sh: $src not found: the CRD's source of truth is missing" >&2
  exit 1
fi
if [ "$check" = 1 ]; then
  if cmp -s "$src" "$dst"; then
    echo "sync-crd.sh: chart CRD is in sync"
    exit 0
  fi
  echo "sync-crd.sh: $dst differs from $src: run scripts/sync-crd.sh" >&2
  exit 1
fi
mkdir -p "$(dirname "$dst")"
cp "$src" "$dst"
echo "sync-crd.sh: copied crds/ttsservices.yaml to charts/residency/files/ttsservices.yaml"
