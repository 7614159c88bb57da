#!/usr/bin/env bash
# Build the nvsentinel image from the Dockerfile with podman: rootful, daemonless, no registry needed.
#
# The Dockerfile's base is a build argument (PYTHON_IMAGE, python:3.11-slim-bookworm by default). With
# no registry to pull from, this script makes a stand-in base from Debian packages instead: a minimal
# bookworm with python3 and pip (mmdebstrap), imported into podman's storage. The base is cached as a
# tarball outside the repository, keyed by its recipe, so later runs skip it; podman's layer cache
# then makes a rebuild of unchanged sources take seconds.
#
# Usage: tools/build-image.sh [--base IMAGE] [--tag TAG] [--refresh-base]
#          --base IMAGE     build FROM this image instead of the local Debian base (python:3.11-slim-bookworm
#                           where a registry is reachable); env NVSENTINEL_IMAGE_BASE
#          --tag TAG        the image to build (default localhost/nvsentinel:<version>); env NVSENTINEL_IMAGE
#          --refresh-base   rebuild the local base even when cached (security updates)
#        Prints the image reference on stdout on success; progress goes to stderr.
# Env:   NVSENTINEL_IMAGE_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/nvsentinel-image)
#        NVSENTINEL_IMAGE_NO_APT=1 skips apt-get install (podman, buildah, runc, mmdebstrap must be there)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${NVSENTINEL_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nvsentinel-image}"
# runc and rlimits this host can grant (see the file); a user's own podman config is not replaced elsewhere
export CONTAINERS_CONF="${CONTAINERS_CONF:-$ROOT/tools/containers.conf}"
START=$SECONDS

log() { echo "build-image: [$((SECONDS - START))s] $*" >&2; }
die() { echo "build-image: ERROR: $*" >&2; exit 1; }

BASE="${NVSENTINEL_IMAGE_BASE:-}"
TAG="${NVSENTINEL_IMAGE:-}"
REFRESH=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --base) [[ $# -ge 2 ]] || die "--base needs an image"; BASE="$2"; shift 2 ;;
    --tag) [[ $# -ge 2 ]] || die "--tag needs an image reference"; TAG="$2"; shift 2 ;;
    --refresh-base) REFRESH=1; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/pyproject.toml" | head -1)"
[[ -n "$VERSION" ]] || die "no version in pyproject.toml"
TAG="${TAG:-localhost/nvsentinel:$VERSION}"

install_packages() {
  local need=()
  command -v podman >/dev/null || need+=(podman)
  command -v buildah >/dev/null || need+=(buildah)
  command -v runc >/dev/null || need+=(runc)
  [[ -n "$BASE" ]] || command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
  [[ ${#need[@]} -eq 0 ]] && return 0
  [[ "${NVSENTINEL_IMAGE_NO_APT:-}" == 1 ]] && die "missing packages: ${need[*]} (NVSENTINEL_IMAGE_NO_APT=1)"
  [[ $(id -u) -eq 0 ]] || die "missing packages: ${need[*]}; install them as root (rootful podman builds here)"
  log "installing ${need[*]} (apt-get)"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
}

# The stand-in for python:3.11-slim-bookworm: Debian's minbase (what debian:bookworm-slim is) plus python3
# and pip, trimmed as the slim images are. The PEP 668 marker goes: in the python images, pip installs
# into the image's Python, and the Dockerfile relies on that.
MIRROR="http://deb.debian.org/debian"
BASE_RECIPE=(--variant=minbase --include=python3,python3-pip,ca-certificates
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr  # a merged /usr made directly: no usrmerge, so no perl
  --aptopt='APT::Install-Recommends "false"' --aptopt='Acquire::Languages "none"'
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED'
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*'
  bookworm)
BASE_SOURCES=("deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main"
  "deb http://deb.debian.org/debian-security bookworm-security main")

local_base() {
  local key; key="$(printf '%s\n' "${BASE_RECIPE[@]}" "${BASE_SOURCES[@]}" | sha256sum | cut -c1-12)"
  local name="localhost/nvsentinel-base:bookworm-$key" tarball="$CACHE/base-bookworm-$key.tar"
  if [[ $REFRESH == 1 ]]; then
    rm -f "$tarball"; podman rmi -f "$name" >/dev/null 2>&1 || true
  fi
  if podman image exists "$name"; then
    log "base $name: in podman's storage"
  else
    if [[ ! -s "$tarball" ]]; then
      command -v mmdebstrap >/dev/null || die "mmdebstrap not found"
      mkdir -p "$CACHE"
      log "base: mmdebstrap bookworm + python3 into $tarball (about 30 s; once, then cached)"
      rm -rf "$tarball.tmp"
      mmdebstrap --quiet --format=tar "${BASE_RECIPE[@]}" "$tarball.tmp" "${BASE_SOURCES[@]}" >&2 \
        || die "mmdebstrap failed (see above)"
      mv "$tarball.tmp" "$tarball"
      find "$CACHE" -maxdepth 1 -name 'base-bookworm-*.tar' ! -name "${tarball##*/}" -delete  # older recipes
    fi
    log "base: importing $tarball as $name"
    podman import --quiet --change 'CMD ["python3"]' "$tarball" "$name" >/dev/null || die "podman import failed"
  fi
  podman run --rm --pull=never --network=none "$name" python3 -c 'import sys; assert sys.version_info >= (3, 11)' \
    || die "the base image $name does not run python3 >= 3.11"
  BASE="$name"
}

# pip in the build stage reaches PyPI. Where this host trusts a TLS proxy through its pip config (these
# machines do), that config and the CA file it names are mounted into each RUN step for the build only:
# they never land in a layer.
build_mounts() {
  MOUNTS=()
  [[ -f /etc/pip.conf ]] || return 0
  MOUNTS+=(-v /etc/pip.conf:/etc/pip.conf:ro)
  local cert; cert="$(sed -n 's/^[[:space:]]*cert[[:space:]]*=[[:space:]]*//p' /etc/pip.conf | head -1)"
  [[ -n "$cert" && -f "$cert" ]] && MOUNTS+=(-v "$cert:$cert:ro")
  return 0
}

install_packages
PULL=missing  # a --base from a registry is pulled once
[[ -n "$BASE" ]] || { local_base; PULL=never; }
build_mounts
REVISION="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
log "building $TAG from $ROOT/Dockerfile on $BASE (revision ${REVISION:0:12}; cached layers are reused)"
podman build --pull="$PULL" --layers --file "$ROOT/Dockerfile" --tag "$TAG" \
  --build-arg "PYTHON_IMAGE=$BASE" --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" \
  "${MOUNTS[@]}" "$ROOT" >&2 || die "podman build failed (see above)"
# Intermediate images older than a day (the build stage of earlier sources): the layer cache of the
# current sources stays, and repeated CI runs do not fill the disk.
podman image prune --force --filter until=24h >/dev/null || log "warning: podman image prune failed"
size="$(podman image inspect --format '{{.Size}}' "$TAG")"
layers="$(podman image inspect --format '{{len .RootFS.Layers}}' "$TAG")"
log "done: $TAG, $((size / 1000000)) MB in $layers layers"
echo "$TAG"
