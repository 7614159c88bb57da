"""Daemons: one module per daemon, flags → library objects → run.

Installed as `nvsentinel.daemons`; each module is both `nvsentinel <name>` (the CLI calls its
`register`) and `python -m nvsentinel.daemons.<module>`. No logic lives here: whatever a daemon
decides belongs in the library, where it can be unit- and property-tested. Daemons never import
each other (an import-linter contract), and only their explicit `--fake-nvml` wiring reaches into
`nvsentinel.devtools`.
"""
