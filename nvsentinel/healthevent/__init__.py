"""The HealthEvent custom resource: typed model, CRD manifest, names (SPEC §6)."""
from nvsentinel.healthevent.model import *  # noqa: F401,F403
from nvsentinel.healthevent.model import __all__  # noqa: F401
