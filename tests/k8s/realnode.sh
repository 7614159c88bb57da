#!/usr/bin/env bash
# One real Kubernetes node for tests: containerd + runc + kubelet v1.20.2, in a private mount namespace.
#
# Usage (root): realnode.sh DIR NODE KUBECONFIG SANDBOX_IMAGE ARCHIVE [KUBELET_FLAG...]
#   DIR            this node's state (containerd root, kubelet root-dir, logs); the caller removes it
#   NODE           the Node's name
#   KUBECONFIG     the kubelet's credentials (the test cluster's admin kubeconfig)
#   SANDBOX_IMAGE  the pod sandbox ("pause") image; it must be in ARCHIVE: nothing is ever pulled
#   ARCHIVE        a docker or OCI archive imported into containerd before the kubelet starts
# Env: KUBELET (default ~/.cache/nvsentinel-kube/bin/kubelet, from `tools/build-kube.sh --kubelet`)
#
# Prints one line once containerd runs and the kubelet answers its healthz:
#   READY node=... ip=... kubelet-port=... device-plugins=DIR pod-resources=SOCKET
# SIGTERM or SIGINT stops everything: the kubelet, every container (SIGTERM to the kubelet leaves them
# running), containerd and its shims; then it removes the node's cgroups and CNI bridge, restores the
# sysctls the kubelet sets, and prints STOPPED on stderr.
#
# What it touches on the host, and why:
# - /var/lib and /var/log get overlays private to the namespace (upper dirs under DIR): kubelet 1.20
#   hardcodes /var/lib/kubelet/device-plugins and /var/log/pods. They vanish with the namespace.
#   The device-plugins dir is a bind of DIR/device-plugins, so plugins outside the namespace reach it.
# - cgroups under /<NODE>-root in every cgroup v1 hierarchy (--cgroup-root; cgroupfs driver).
# - a CNI bridge nvs<hash> for pods without hostNetwork (containerd reports the network not ready
#   without a CNI config, and the Node would never be Ready).
# - the kubelet sets vm.overcommit_memory=1 kernel.panic=10 kernel.panic_on_oops=1 at start; their
#   values from before go to DIR/sysctl.before and are written back at stop (the Python side writes them
#   back as soon as the Node is Ready, too).
# - the kubelet serves on the host's first non-loopback address (the API server reaches it by InternalIP).
set -euo pipefail

[[ $# -ge 5 ]] || { sed -n '4,10p' "$0" >&2; exit 2; }
DIR=$1; NODE=$2; KCFG=$3; SANDBOX=$4; ARCHIVE=$5; shift 5
if [[ -z "${REALNODE_IN_NAMESPACE:-}" ]]; then
  export REALNODE_IN_NAMESPACE=1
  exec unshare --mount --propagation private -- bash "$0" "$DIR" "$NODE" "$KCFG" "$SANDBOX" "$ARCHIVE" "$@"
fi

KUBELET=${KUBELET:-${NVSENTINEL_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nvsentinel-kube}/bin/kubelet}
SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops)
log() { echo "realnode[$NODE]: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
[[ -x "$KUBELET" ]] || die "no kubelet at $KUBELET: run tools/build-kube.sh --kubelet"
for tool in containerd ctr runc ip; do command -v "$tool" >/dev/null || die "$tool not found (tools/build-kube.sh --kubelet)"; done
# children get SIGTERM when this script dies, even by SIGKILL
PDEATH=(); command -v setpriv >/dev/null && PDEATH=(setpriv --pdeathsig TERM --)

mkdir -p "$DIR"/{containerd/root,containerd/state,containerd/opt,cni/net.d,cni/ipam,kubelet-root,volume-plugins,certs}
mkdir -p "$DIR/device-plugins" "$DIR/ovl"/{varlib,varlog}/{up,work}
for s in "${SYSCTLS[@]}"; do echo "$s=$(sysctl -n "$s")"; done >"$DIR/sysctl.before"

CGROOT="/$NODE-root"
HASH=$(printf %s "$NODE" | md5sum | cut -c1-8)
BR="nvs${HASH:0:8}"
SUBNET="10.244.$(( 16#${HASH:0:2} )).0/24"
SOCK="$DIR/containerd/containerd.sock"
KPID=""; CPID=""

restore_sysctls() {
  local line
  while IFS= read -r line; do sysctl -q -w "$line" >/dev/null || log "cannot restore $line"; done <"$DIR/sysctl.before"
}

# every process left in this mount namespace (the shims, and the containers they run), by pid
namespace_pids() {
  local me p pid
  me=$(readlink /proc/$$/ns/mnt)
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
    [[ "$(readlink "$p/ns/mnt" 2>/dev/null)" == "$me" ]] && echo "$pid"
  done
  return 0
}

# poll until CHECK (a command) succeeds, at most N tenths of a second
until_ok() { local n=$1; shift; for _ in $(seq "$n"); do "$@" && return 0; sleep 0.1; done; return 1; }
no_tasks() { [[ -z "$(ctr -a "$SOCK" -n k8s.io tasks ls -q 2>/dev/null)" ]]; }
no_pids() { [[ -z "$(namespace_pids)" ]]; }
no_cgroups() {
  local h
  for h in /sys/fs/cgroup/*/; do
    [[ -d "$h$CGROOT" ]] && find "$h$CGROOT" -depth -type d -exec rmdir {} + 2>/dev/null
    [[ -d "$h$CGROOT" ]] && return 1
  done
  return 0
}

cleanup() {
  trap - TERM INT EXIT
  if [[ -n "$KPID" ]]; then kill -TERM "$KPID" 2>/dev/null; wait "$KPID" 2>/dev/null || true; fi
  if [[ -S "$SOCK" ]]; then
    local t
    for t in $(ctr -a "$SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr -a "$SOCK" -n k8s.io tasks kill -s KILL "$t" >/dev/null 2>&1 || true
    done
    clean_tasks() {
      for t in $(ctr -a "$SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
        ctr -a "$SOCK" -n k8s.io tasks rm -f "$t" >/dev/null 2>&1 || true
      done
      no_tasks
    }
    until_ok 100 clean_tasks || log "tasks left: $(ctr -a "$SOCK" -n k8s.io tasks ls -q 2>/dev/null | tr '\n' ' ')"
  fi
  if [[ -n "$CPID" ]]; then kill -TERM "$CPID" 2>/dev/null; wait "$CPID" 2>/dev/null || true; fi
  # what is left in the namespace would keep its mounts (and the container rootfs) alive
  local pid
  for pid in $(namespace_pids); do kill -KILL "$pid" 2>/dev/null || true; done
  until_ok 100 no_pids || log "processes left in the namespace: $(namespace_pids | tr '\n' ' ')"
  ip link del "$BR" 2>/dev/null || true
  until_ok 100 no_cgroups || log "cgroups left under $CGROOT"
  restore_sysctls
  log "STOPPED"
}
trap cleanup EXIT
trap 'exit 0' TERM INT

mount -t overlay overlay -o "lowerdir=/var/lib,upperdir=$DIR/ovl/varlib/up,workdir=$DIR/ovl/varlib/work" /var/lib
mount -t overlay overlay -o "lowerdir=/var/log,upperdir=$DIR/ovl/varlog/up,workdir=$DIR/ovl/varlog/work" /var/log
mkdir -p /var/lib/kubelet/device-plugins
mount --bind "$DIR/device-plugins" /var/lib/kubelet/device-plugins

for h in /sys/fs/cgroup/*/; do
  [[ -d "$h" && ! -L "${h%/}" ]] || continue
  mkdir -p "$h$CGROOT"
  if [[ -f "${h}cpuset.cpus" ]]; then  # a v1 cpuset cgroup starts empty: no task could join it
    cat "${h}cpuset.cpus" >"$h$CGROOT/cpuset.cpus"
    cat "${h}cpuset.mems" >"$h$CGROOT/cpuset.mems"
  fi
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("",0)); print(s.getsockname()[1])'; }
PORT=$(free_port); HPORT=$(free_port)
IP=$(ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p')
[[ -n "$IP" ]] || die "no non-loopback IPv4 address (ip route get 1.1.1.1)"

cat >"$DIR/containerd/config.toml" <<TOML
version = 2
root = "$DIR/containerd/root"
state = "$DIR/containerd/state"
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$DIR/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$SANDBOX"
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$DIR/cni/net.d"
TOML
cat >"$DIR/cni/net.d/10-node.conflist" <<JSON
{"cniVersion": "0.4.0", "name": "node", "plugins": [
  {"type": "bridge", "bridge": "$BR", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$SUBNET"}]], "dataDir": "$DIR/cni/ipam"}},
  {"type": "loopback"}]}
JSON

"${PDEATH[@]}" containerd --config "$DIR/containerd/config.toml" >"$DIR/containerd.log" 2>&1 &
CPID=$!
containerd_up() { kill -0 "$CPID" 2>/dev/null || die "containerd exited: $(tail -5 "$DIR/containerd.log")"; ctr -a "$SOCK" version >/dev/null 2>&1; }
until_ok 300 containerd_up || die "containerd did not answer in 30 s"
ctr -a "$SOCK" -n k8s.io images import "$ARCHIVE" >"$DIR/import.log" 2>&1 || die "import failed: $(tail -3 "$DIR/import.log")"
[[ -n "$(ctr -a "$SOCK" -n k8s.io images ls -q "name==$SANDBOX")" ]] || die "$SANDBOX is not in $ARCHIVE"

# eviction and image GC off in practice: the host's disk is shared, and a collected image cannot come back
"${PDEATH[@]}" "$KUBELET" \
  --kubeconfig "$KCFG" \
  --container-runtime=remote --container-runtime-endpoint="unix://$SOCK" --runtime-request-timeout=2m \
  --pod-infra-container-image "$SANDBOX" \
  --root-dir "$DIR/kubelet-root" --cert-dir "$DIR/certs" --volume-plugin-dir "$DIR/volume-plugins" \
  --hostname-override "$NODE" --node-ip "$IP" --address "$IP" --port "$PORT" --healthz-port "$HPORT" \
  --read-only-port 0 --anonymous-auth=true --authorization-mode=AlwaysAllow \
  --fail-swap-on=false --cgroup-driver=cgroupfs --cgroup-root "$CGROOT" \
  --eviction-hard='memory.available<1Mi,nodefs.available<1%,imagefs.available<1%' \
  --image-gc-high-threshold=100 --image-gc-low-threshold=99 \
  --max-open-files 20000 --node-status-update-frequency=2s --v=2 "$@" >"$DIR/kubelet.log" 2>&1 &
KPID=$!
kubelet_up() {
  kill -0 "$KPID" 2>/dev/null || die "the kubelet exited: $(tail -5 "$DIR/kubelet.log")"
  python3 -c "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:$HPORT/healthz', timeout=1).status != 200)" 2>/dev/null
}
until_ok 600 kubelet_up || die "the kubelet's healthz did not answer in 60 s"
echo "READY node=$NODE ip=$IP kubelet-port=$PORT device-plugins=$DIR/device-plugins" \
     "pod-resources=$DIR/kubelet-root/pod-resources/kubelet.sock"
wait "$KPID" || true
log "the kubelet exited: $(tail -3 "$DIR/kubelet.log")"
exit 1
