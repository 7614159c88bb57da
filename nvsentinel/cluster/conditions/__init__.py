"""The conditions controller: GPU health as a Node condition, for the cluster's other tools.

A node holding an open fatal HealthEvent past New gets `NVSentinelGPUHealthy=False` (reason and message name the
XID or recovery action and the events); optionally the mirror `AcceleratedHardwareReady=False` in the form EKS node
auto repair and Karpenter's node repair read (docs/integrations.md). Only our own condition types are written, as a
strategic merge patch of nodes/status, and a mirror another writer owns is left alone.

`logic` is pure (no I/O, time passed in); `controller` reads the informers and writes; `config` holds the settings.
"""
