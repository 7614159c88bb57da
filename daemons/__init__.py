"""Daemons: thin wrappers (flags, wiring, signal handling) around the library.

Installed as `nvsentinel.daemons`. No logic lives here: whatever a daemon decides belongs in the
library, where it can be unit- and property-tested. Daemons do not import each other.
"""
