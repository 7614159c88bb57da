"""What runs on a GPU node (the DaemonSet): the Device API server, the NVML provider, the kernel-log
monitor, the publisher and the remediation agent.

They talk to each other only through the Device API: the modules at this level (client, informer,
endpoints, identity, nvml_settings) are what they share; no component imports another, and nothing
here imports `nvsentinel.cluster` (docs/architecture.md)."""
