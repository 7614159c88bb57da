"""The controller runtime: informers, work queue, leader election, events, metrics, the Manager.

Built on `nvsentinel.k8s` (the official `kubernetes` client's transport) and anyio.
"""
from nvsentinel.controllers.runtime.controller import ControllerContext, Reconciler, Result  # noqa: F401
from nvsentinel.controllers.runtime.informer import Informer  # noqa: F401
from nvsentinel.controllers.runtime.leader import LeaderElectionConfig, LeaderElector  # noqa: F401
from nvsentinel.controllers.runtime.manager import Manager  # noqa: F401
from nvsentinel.controllers.runtime.workqueue import ShutDown, WorkQueue  # noqa: F401
