"""The quarantine controller (SPEC §7): fatal HealthEvent → cordon + taint the Node, within a circuit breaker.

`logic` and `breaker` are pure decisions (no I/O, no clock reads: time is passed in); `controller`
does the reading and writing against the API server; `config` holds the settings.
"""
