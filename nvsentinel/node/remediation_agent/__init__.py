"""The remediation agent: the node-side half of remediation (docs/remediation-agent.md).

It watches this node's HealthEvents and GPUs and (1) asks the NVML provider, through the GPU's
`ResetRequested` condition, to reset a GPU the remediation controller chose `gpu-reset` for, then
withdraws the request once answered; (2) after any remediation, creates the healthy HealthEvent
that proves a GPU came back. It never touches another condition type, never patches or deletes a
HealthEvent, and never resets anything itself. `logic` decides (pure, time passed in); `agent`
does the I/O; `config` holds the settings.
"""
