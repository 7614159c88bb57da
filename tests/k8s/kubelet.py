"""The fake kubelet lives in the package (`nvsentinel.devtools.devcluster.kubelet`, also used by the demo)."""
from nvsentinel.devtools.devcluster.kubelet import (  # noqa: F401 - re-exported for the tests
    delete_nodes, finish_deletions, finish_job, make_node, make_nodes, run_pod,
)
