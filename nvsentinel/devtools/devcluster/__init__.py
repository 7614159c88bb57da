"""A real, local Kubernetes control plane for tests and `nvsentinel demo` (not for production).

`ControlPlane`: etcd + kube-apiserver + kube-controller-manager v1.20.2 on loopback, built once from
Debian's source package into a cache (`build-kube.sh`, shipped with the package). `kubelet`: the
fake kubelet (Nodes, running pods, finished deletions and Jobs), since no kubelet runs here.
"""
from nvsentinel.devtools.devcluster.controlplane import ControlPlane, free_port, kube_bin_dir, kube_cache_dir

__all__ = ["ControlPlane", "free_port", "kube_bin_dir", "kube_cache_dir"]
