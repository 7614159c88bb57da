"""The tests' control plane: `nvsentinel.devtools.devcluster` (shipped with the package for `nvsentinel demo`).

By hand (from the repository root):

    .venv/bin/python tests/k8s/cluster.py up          # prints KUBECONFIG=...; Ctrl-C stops it
"""
from __future__ import annotations

import signal
import sys

from nvsentinel.devtools.devcluster.controlplane import (  # noqa: F401 - re-exported for the tests
    BUILD_SCRIPT, WANT_VERSION, ControlPlane, free_port, kube_bin_dir, kube_cache_dir,
)


def main(argv: list[str]) -> int:
    if argv[:1] != ["up"]:
        print("usage: python tests/k8s/cluster.py up", file=sys.stderr)
        return 2
    with ControlPlane() as cp:
        print(f"KUBECONFIG={cp.kubeconfig}\nserver {cp.url}; Ctrl-C to stop", flush=True)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
