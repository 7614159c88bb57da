#!/usr/bin/env bash
# Build kube-apiserver and kube-controller-manager v1.20.2 (and, with --kubelet, the kubelet) from
# Debian bookworm's `kubernetes` source package, once, into a cache outside the repository.
#
# Why from source: no Docker and no release downloads on these machines; Debian's
# source tarball carries the full tree with vendor/, so `go build` runs offline.
# reflect2 1.0.1 (vendored) crashes on Go >= 1.18 at the first custom-resource
# request, so it is replaced with Debian's reflect2 1.0.2 before building.
#
# Usage: tools/build-kube.sh            # prints the bin directory on success
#        tools/build-kube.sh --kubelet  # the same, plus the kubelet and what a real node needs
#                                       # (containerd, runc, CNI plugins; tests/k8s/realnode.sh)
#        Builds only the binaries that are missing or report another version.
# Env:   NVSENTINEL_KUBE_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/nvsentinel-kube)
#        NVSENTINEL_KUBE_NO_APT=1 skips apt-get install (packages must already be there)
set -euo pipefail

VERSION_DEB="1.20.5+really1.20.2-1.1+deb12u1"
WANT="Kubernetes v1.20.2"
WITH_KUBELET=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --kubelet) WITH_KUBELET=1; shift ;;
    *) echo "build-kube: ERROR: unknown argument: $1 (usage: build-kube.sh [--kubelet])" >&2; exit 2 ;;
  esac
done
CACHE="${NVSENTINEL_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nvsentinel-kube}"
BIN="$CACHE/bin"

log() { echo "build-kube: $*" >&2; }
die() { echo "build-kube: ERROR: $*" >&2; exit 1; }

WANTED=(kube-apiserver kube-controller-manager)
[[ $WITH_KUBELET == 1 ]] && WANTED+=(kubelet)

have_binary() { [[ -x "$BIN/$1" && "$("$BIN/$1" --version 2>&1)" == "$WANT" ]]; }

missing_binaries() {
  local b
  for b in "${WANTED[@]}"; do have_binary "$b" || echo "$b"; done
}

install_packages() {
  local need=()
  command -v go >/dev/null || need+=(golang-go)
  command -v etcd >/dev/null || need+=(etcd-server)
  command -v rsync >/dev/null || need+=(rsync)
  command -v dpkg-source >/dev/null || need+=(dpkg-dev)
  command -v openssl >/dev/null || need+=(openssl)
  command -v curl >/dev/null || need+=(curl)
  if [[ $WITH_KUBELET == 1 ]]; then
    command -v containerd >/dev/null || need+=(containerd)
    command -v runc >/dev/null || need+=(runc)
    [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] ||
      need+=(containernetworking-plugins)
  fi
  [[ ${#need[@]} -eq 0 ]] && return 0
  [[ "${NVSENTINEL_KUBE_NO_APT:-}" == 1 ]] && die "missing packages: ${need[*]} (NVSENTINEL_KUBE_NO_APT=1)"
  log "installing ${need[*]}"
  local sudo=""; [[ $(id -u) -ne 0 ]] && sudo=sudo
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >&2
}

install_packages
mapfile -t MISSING < <(missing_binaries)
if [[ ${#MISSING[@]} -eq 0 ]]; then
  echo "$BIN"; exit 0
fi

command -v go >/dev/null || die "go not found"
mkdir -p "$CACHE"
WORK="$(mktemp -d "$CACHE/build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
log "building ${MISSING[*]} in $WORK (about 3-5 minutes each on 2 cores)"

# A private apt state so the system's apt configuration stays untouched.
APT="$WORK/apt"
mkdir -p "$APT/lists/partial" "$APT/sources"
cat > "$APT/sources/src.list" <<SRC
deb-src http://deb.debian.org/debian bookworm main
deb-src http://deb.debian.org/debian bookworm-updates main
deb-src http://deb.debian.org/debian-security bookworm-security main
deb http://deb.debian.org/debian bookworm main
SRC
APTOPTS=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$APT/sources"
         -o "Dir::State::Lists=$APT/lists" -o Debug::NoLocking=1)
apt-get "${APTOPTS[@]}" update -qq >&2
cd "$WORK"
apt-get "${APTOPTS[@]}" source --download-only "kubernetes=$VERSION_DEB" >&2
apt-get "${APTOPTS[@]}" download golang-github-modern-go-reflect2-dev >&2

tarball="$(ls kubernetes_*.orig.tar.gz | head -1)"
[[ -n "$tarball" ]] || die "kubernetes orig tarball not downloaded"
tar xzf "$tarball"
SRC_DIR="$WORK/kubernetes-1.20.2"
[[ -d "$SRC_DIR" ]] || die "unexpected tarball layout: $(ls "$WORK")"

dpkg -x golang-github-modern-go-reflect2-dev_*.deb "$WORK/reflect2"
R2="$WORK/reflect2/usr/share/gocode/src/github.com/modern-go/reflect2"
[[ -d "$R2" ]] || die "reflect2 sources not found in the .deb"
rm -rf "$SRC_DIR/vendor/github.com/modern-go/reflect2"
cp -r "$R2" "$SRC_DIR/vendor/github.com/modern-go/reflect2"
rm -f "$SRC_DIR/vendor/github.com/modern-go/reflect2/go.mod"

cd "$SRC_DIR"
export GOPROXY=off GOFLAGS=-mod=vendor GOCACHE="$WORK/gocache" GOPATH="$WORK/gopath"
for what in "${MISSING[@]}"; do
  log "make WHAT=cmd/$what"
  make WHAT="cmd/$what" >&2
done
mkdir -p "$BIN"
for what in "${MISSING[@]}"; do  # one rename per binary: a reader never sees a half-written file
  cp "_output/bin/$what" "$BIN/.$what.new"
  mv -f "$BIN/.$what.new" "$BIN/$what"
done
mapfile -t MISSING < <(missing_binaries)
[[ ${#MISSING[@]} -eq 0 ]] || die "built binaries do not report '$WANT': ${MISSING[*]}"
log "done: $("$BIN/kube-apiserver" --version)"
echo "$BIN"
