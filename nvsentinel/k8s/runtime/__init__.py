"""The controller runtime: informers, work queue, leader election, events, metrics, the Manager,
and the one HealthEvent status writer every stage uses (`status`).

Built on `nvsentinel.k8s` (the official `kubernetes` client's transport) and anyio.
"""
from nvsentinel.k8s.runtime.controller import ControllerContext, Reconciler, Result  # noqa: F401
from nvsentinel.k8s.runtime.informer import Informer  # noqa: F401
from nvsentinel.k8s.runtime.leader import LeaderElectionConfig, LeaderElector  # noqa: F401
from nvsentinel.k8s.runtime.manager import Manager  # noqa: F401
from nvsentinel.k8s.runtime.workqueue import ShutDown, WorkQueue  # noqa: F401
