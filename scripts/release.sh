#!/usr/bin/env bash
# Releases Residency VERSION: both images built and tagged PREFIX/residency-{runtime,operator}:VERSION, the
# chart packaged as residency-VERSION.tgz (appVersion VERSION, so its default image tags are these images),
# and with --push all three pushed. Run from a clean checkout of the commit to release (tagged vVERSION).
#   scripts/release.sh VERSION [--push | --check]      (--check: only verify the version is written everywhere)
# Before: bump VERSION everywhere it is written (this script refuses to release while one place differs):
#   pyproject.toml `version`, runtime/ and operator/ `__version__`, charts/residency/Chart.yaml `version`
#   and `appVersion`, operator/tts_operator/settings.py RUNTIME_IMAGE and AGENT_IMAGE, the Dockerfile's
#   `ARG VERSION`.
# Env: PREFIX (default ghcr.io/residency-dev: where the chart's default images live), ENGINE (docker or
#   podman, see scripts/build-images.sh), ALLOW_DIRTY=1 (release a tree with uncommitted changes: tests only).
# Pushing needs `docker login`/`podman login` and `helm registry login` to the registry of PREFIX; the chart
# goes to oci://PREFIX/charts (install: helm install residency oci://PREFIX/charts/residency --version VERSION).
# .github/workflows/release.yml runs this on a pushed tag v*.
set -euo pipefail
cd "$(dirname "$0")/.."

version=${1:?usage: scripts/release.sh VERSION [--push | --check]}
push=${2:-}
prefix=${PREFIX:-ghcr.io/residency-dev}
[[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]+)?$ ]] \
  || { echo "release.sh: $version is not a semantic version (X.Y.Z)" >&2; exit 2; }
case $push in ""|--push|--check) ;; *) echo "release.sh: unknown argument $push" >&2; exit 2 ;; esac

if [ "$push" != --check ] && [ "${ALLOW_DIRTY:-}" != 1 ] && [ -n "$(git status --porcelain)" ]; then
  echo "release.sh: the working tree has uncommitted changes; release a clean commit" >&2
  exit 1
fi

# One version everywhere: the images' tags, the chart, and the images the operator and chart default to.
wrong=()
check() {  # check FILE PATTERN: FILE must contain PATTERN (a fixed string)
  grep -qF -- "$2" "$1" || wrong+=("$1: expected $2")
}
check pyproject.toml "version = \"$version\""
check runtime/tts_runtime/__init__.py "__version__ = \"$version\""
check operator/tts_operator/__init__.py "__version__ = \"$version\""
check charts/residency/Chart.yaml "version: $version"
check charts/residency/Chart.yaml "appVersion: \"$version\""
check operator/tts_operator/settings.py "residency-runtime:$version\""
check operator/tts_operator/settings.py "residency-operator:$version\""
check Dockerfile "ARG VERSION=$version"
if [ ${#wrong[@]} -gt 0 ]; then
  printf 'release.sh: version %s is not written everywhere yet:\n' "$version" >&2
  printf '  %s\n' "${wrong[@]}" >&2
  exit 1
fi
[ "$push" = --check ] && { echo "version $version is written everywhere"; exit 0; }

bash scripts/build-images.sh --tag "$version" --prefix "$prefix"

mkdir -p dist
helm lint charts/residency
helm package charts/residency --version "$version" --app-version "$version" --destination dist
chart="dist/residency-$version.tgz"

if [ "$push" = --push ]; then
  engine=${ENGINE:-$(command -v docker >/dev/null && docker info >/dev/null 2>&1 && echo docker || echo podman)}
  for image in runtime operator; do
    "$engine" push "$prefix/residency-$image:$version"
  done
  helm push "$chart" "oci://$prefix/charts"
fi

echo "released $version:"
echo "  $prefix/residency-runtime:$version"
echo "  $prefix/residency-operator:$version"
echo "  $chart${push:+ (pushed to oci://$prefix/charts)}"
