"""The `drain` stage (SPEC §7): evicts a quarantined node's pods through the Eviction API, honouring PDBs."""
from nvsentinel.cluster.drain.config import DrainConfig
from nvsentinel.cluster.drain.controller import DrainController

__all__ = ["DrainConfig", "DrainController"]
